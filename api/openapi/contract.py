"""The OpenAPI document: what routes declare, plus what applies to many operations at once.

Routes declare their own ``response_model`` and the problems only they answer
(``api.problems.problems(404, 409)``). This module adds, to every operation it applies to:
the Bearer security requirement with the scope the key must hold (operations that depend on
``api.deps.get_tenant``; the scope is the one ``api.deps.authorized`` checks), 403 where a
scope is checked, and the
problem+json responses the edge can give any of them: 401 and 429 (authenticated); 400, 408
and 413 (requests with a body: unparseable, too slow, too large); 422 (NUL bytes and
validation, wherever there are parameters or a body); 503 (overload, a stalled or unreachable
dependency). The Problem schema is registered once in ``components``; under ``/fhir`` (issue 23)
errors are declared as the FHIR ``OperationOutcome`` they are answered as. Every free-text string
an operation takes (parameters and request bodies) declares that it holds no NUL byte, which
the edge refuses with a 422 (``api.middleware.BodyGuard``).
tests/api/test_openapi.py holds every operation to this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from api.deps import get_tenant
from api.problems import FHIR_JSON, PROBLEM_JSON, STATUS_MEANING, is_fhir_path, problem_content
from shared.schemas import OperationOutcome, ProblemDetails

SECURITY_SCHEME = "ApiKey"
BODY_METHODS = {"post", "put", "patch", "delete"}
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "dsk_…",
    "description": "`Authorization: Bearer dsk_…`: an API key of the tenant "
    "(`dermasentinel tenants create`, or `POST /v1/api-keys`). Only its hash is stored.",
}


def _depends_on(dependant: Dependant, target: Callable[..., Any]) -> bool:
    return any(d.call is target or _depends_on(d, target) for d in dependant.dependencies)


def _scopes(dependant: Dependant) -> list[str]:
    """The scopes ``api.deps.authorized`` checks anywhere in this operation's dependencies."""
    found: list[str] = []
    for dependency in dependant.dependencies:
        scope = getattr(dependency.call, "required_scope", None)
        if scope is not None:
            found.append(str(scope.value))
        found += _scopes(dependency)
    return sorted(set(found))


def authenticated_operations(app: FastAPI) -> dict[tuple[str, str], list[str]]:
    """(method, path) of every operation that requires an API key → the scopes it needs."""
    operations: dict[tuple[str, str], list[str]] = {}
    for context in iter_route_contexts(app.routes):
        route = context if isinstance(context.original_route, APIRoute) else None
        if route is not None and route.include_in_schema and _depends_on(route.dependant, get_tenant):
            scopes = _scopes(route.dependant)
            for method in route.methods or ():
                operations[(method.lower(), str(route.path_format))] = scopes
    return operations


def _problem_components() -> dict[str, Any]:
    components: dict[str, Any] = {}
    for model in (ProblemDetails, OperationOutcome):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return components


# Under /fhir (issue 23) every error is the problem as a FHIR OperationOutcome (api.problems).
OPERATION_OUTCOME_CONTENT = {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}


def _errors_as_operation_outcomes(responses: dict) -> None:
    for code, response in responses.items():
        if code[0] in "45":
            response["content"] = {**OPERATION_OUTCOME_CONTENT}


def _add_problem(responses: dict, status: int) -> None:
    entry = responses.get(str(status))
    if entry is None or "HTTPValidationError" in str(entry):
        entry = responses[str(status)] = {"description": STATUS_MEANING[status]}
    entry.setdefault("content", {}).update(problem_content())


def _errors_as_problems(responses: dict) -> None:
    """Every error answer is problem+json with the one Problem schema. A response declared in
    FastAPI's ``{"model": M, "content": {"application/problem+json": {}}}`` style carries M
    under application/json too: that copy is dropped."""
    for code, response in responses.items():
        if code[0] not in "45":
            continue
        content = response.setdefault("content", {})
        if PROBLEM_JSON in content and not content[PROBLEM_JSON].get("schema"):
            content.pop("application/json", None)
        content.update(problem_content())


# What the edge accepts in a string: anything but NUL (api.middleware refuses it with a 422).
# A model's own pattern is left as it is, so it must exclude NUL itself (tests/api/test_openapi.py).
NO_NUL_PATTERN = r"^[^\x00]*$"
_CONSTRAINED = {"pattern", "enum", "const", "format"}


def _forbid_nul(node: Any, schemas: dict[str, Any], seen: set[str]) -> None:
    """Give every unconstrained string under ``node`` the NUL-free pattern (following $refs
    into ``components.schemas``, each once)."""
    if isinstance(node, list):
        for item in node:
            _forbid_nul(item, schemas, seen)
        return
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name not in seen:
            seen.add(name)
            _forbid_nul(schemas.get(name), schemas, seen)
        return
    if node.get("type") == "string" and not _CONSTRAINED & node.keys():
        node["pattern"] = NO_NUL_PATTERN
    for child in (node.get("properties") or {}).values():
        _forbid_nul(child, schemas, seen)
    for key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
        _forbid_nul(node.get(key), schemas, seen)


def complete(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's generated document, completed as the module docstring says."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(_problem_components())
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = BEARER
    for name in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(name, None)  # errors are problem+json, never FastAPI's shape
    for operations in schema.get("webhooks", {}).values():
        for operation in operations.values():
            # What a receiver answers is the receiver's: only the 2xx acknowledgement is ours to state.
            responses = operation.get("responses", {})
            operation["responses"] = {code: r for code, r in responses.items() if "HTTPValidationError" not in str(r)}
    authenticated = authenticated_operations(app)
    seen: set[str] = set()
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                _forbid_nul(parameter.get("schema"), components["schemas"], seen)
            for content in (operation.get("requestBody") or {}).get("content", {}).values():
                _forbid_nul(content.get("schema"), components["schemas"], seen)
            responses = operation.setdefault("responses", {})
            statuses = [503]
            if operation.get("parameters") or operation.get("requestBody"):
                statuses.append(422)
            if method in BODY_METHODS:
                statuses += [400, 408, 413]
            if (method, path) in authenticated:
                scopes = authenticated[(method, path)]
                operation["security"] = [{SECURITY_SCHEME: scopes}]
                statuses += [401, 429]
                if scopes:
                    statuses.append(403)
            for status in statuses:
                _add_problem(responses, status)
            _errors_as_problems(responses)
            if is_fhir_path(path):
                _errors_as_operation_outcomes(responses)
            operation["responses"] = dict(sorted(responses.items()))
    return schema


def install(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(app, generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
