"""The OpenAPI document is a contract integrators can generate clients from: every operation
has a typed response, a description, its errors as problem+json, and security where a key is
needed; the webhook events are documented; and the response models declare every key the API
actually sends (a key added to a view without its model fails here)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from api.main import create_app
from api.problems import BatchSealed, Conflict
from api.routes import analyses as analysis_routes
from api.routes import batches as batch_routes
from shared import lifecycle
from shared.config import Settings
from shared.events import EVENT_TYPES
from shared.schemas import (
    AnalysisEventData,
    AnalysisOut,
    AnalysisSummary,
    BatchOut,
    ProblemDetails,
)
from shared.schemas.batches import DispositionCounts
from shared.scopes import Scope
from shared.tables import Analysis, Batch
from tests.factories import UNTRAINED_MODEL, model, result

PUBLIC = {("get", "/healthz"), ("get", "/readyz"),
          # issue 23: a FHIR server's CapabilityStatement and SubscriptionTopics are public
          ("get", "/fhir/metadata"), ("get", "/fhir/SubscriptionTopic"), ("get", "/fhir/SubscriptionTopic/{topic_id}")}
PROBLEM_REF = "#/components/schemas/ProblemDetails"
OPERATION_OUTCOME_REF = "#/components/schemas/OperationOutcome"
# Answers that are not JSON by design: a redirect, the PDF, the FHIR bundle, an empty 204.
NON_JSON_OK = {"307", "204"}


@pytest.fixture(scope="module")
def spec() -> dict:
    return create_app(Settings(_env_file=None)).openapi()


def _operations(spec: dict):
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            yield method, path, operation


def test_every_operation_has_a_summary_a_description_and_a_typed_success(spec):
    operations = list(_operations(spec))
    assert len(operations) >= 23
    missing = []
    for method, path, op in operations:
        where = f"{method.upper()} {path}"
        if not op.get("summary"):
            missing.append(f"{where}: no summary")
        if len(op.get("description", "")) < 20:
            missing.append(f"{where}: no description")
        successes = {code: r for code, r in op["responses"].items() if code[0] in "23"}
        if not successes:
            missing.append(f"{where}: no success response")
        for code, response in successes.items():
            if code in NON_JSON_OK:
                continue
            content = response.get("content") or {}
            if not content:
                missing.append(f"{where} {code}: no content declared")
            for media_type, body in content.items():
                if not body.get("schema"):
                    missing.append(f"{where} {code} {media_type}: no (or an empty) schema")
    assert missing == []


def test_every_error_is_problem_json(spec):
    for method, path, op in _operations(spec):
        errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
        assert "503" in errors, f"{method.upper()} {path}: 503 (busy, dependency down) not declared"
        for code, response in errors.items():
            if path.startswith("/fhir/"):  # issue 23: the same problem, as a FHIR OperationOutcome
                assert response.get("content") == {"application/fhir+json": {"schema": {"$ref": OPERATION_OUTCOME_REF}}}
                continue
            problem = response.get("content", {}).get("application/problem+json")
            assert problem and problem["schema"] == {"$ref": PROBLEM_REF}, f"{method.upper()} {path} {code}"
            assert "HTTPValidationError" not in str(response), f"{method.upper()} {path}: FastAPI's 422 shape"
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in errors, f"{method.upper()} {path}: 422 not declared"
        if any(p["in"] == "path" for p in op.get("parameters", [])):
            assert "404" in errors, f"{method.upper()} {path}: has an id but no 404"
    problem = spec["components"]["schemas"]["ProblemDetails"]
    assert {"type", "title", "status", "detail", "instance"} <= set(problem["required"])
    outcome = spec["components"]["schemas"]["OperationOutcome"]
    assert {"resourceType", "issue"} <= set(outcome["required"])


def test_security_on_every_authenticated_operation_and_not_on_probes(spec):
    scheme = spec["components"]["securitySchemes"]["ApiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for method, path, op in _operations(spec):
        if (method, path) in PUBLIC:
            assert "security" not in op and "401" not in op["responses"], path
        else:
            assert path.startswith(("/v1/", "/fhir/"))
            security = op.get("security")
            assert security and list(security[0]) == ["ApiKey"], f"{method.upper()} {path}: no security"
            (scopes,) = security[0].values()
            assert len(scopes) == 1 and scopes[0] in {s.value for s in Scope}, \
                f"{method.upper()} {path}: names no scope (issue 22)"
            assert {"401", "403", "429"} <= set(op["responses"]), f"{method.upper()} {path}: 401/403/429 not declared"
    assert "/docs" not in spec["paths"] and "/redoc" not in spec["paths"]


def test_webhook_events_are_documented_with_their_payloads(spec):
    webhooks = spec["webhooks"]
    assert set(EVENT_TYPES) <= set(webhooks)
    for event in EVENT_TYPES:
        operation = webhooks[event]["post"]
        assert "webhook-signature" in operation["description"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        name = body["$ref"].rsplit("/", 1)[-1]
        payload = spec["components"]["schemas"][name]
        assert {"type", "timestamp", "data"} <= set(payload["required"])
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= headers


def test_every_reference_resolves(spec):
    """A dangling $ref breaks ReDoc and client generators outright."""
    schemas = spec["components"]["schemas"]
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert refs
    dangling = sorted(ref for ref in refs if ref.rsplit("/", 1)[-1] not in schemas)
    assert dangling == []


def test_documented_event_names_are_the_events_sent():
    from shared.schemas import EventType

    assert set(EventType.__args__) == set(EVENT_TYPES)


def test_sealed_batch_has_its_own_problem_code():
    assert issubclass(BatchSealed, Conflict) and BatchSealed.status == 409
    assert BatchSealed.code == "batch_sealed" != Conflict.code


# ---------------------------------------------------------------- the models match the views


def _undeclared(model: type[BaseModel], data, path: str = "") -> list[str]:
    """Keys in ``data`` that ``model`` (recursively) does not declare."""
    missing = []
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            missing.append(f"{path}{key}")
            continue
        nested = _model_of(field.annotation)
        if nested is not None and isinstance(value, dict):
            missing += _undeclared(nested, value, f"{path}{key}.")
        elif nested is not None and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    missing += _undeclared(nested, item, f"{path}{key}[].")
    return missing


def _model_of(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


NOW = datetime(2026, 11, 28, 3, 12, tzinfo=UTC)
# As the worker stores them (shared.lifecycle reads them back as the typed record).
RESULT = result(scribe_note="S: …").model_dump(mode="json", exclude={"uncertainty_level"})
MODEL = model(**UNTRAINED_MODEL).model_dump(mode="json")


class _Store:
    class settings:
        presign_ttl_seconds = 300

    def presigned_get(self, bucket, key):
        return f"http://s3.local/{bucket}/{key}?sig"


class _Context:
    settings = Settings(_env_file=None)
    store = _Store()


def _succeeded() -> Analysis:
    return Analysis(
        id=uuid.uuid4(), tenant_id=uuid.uuid4(), batch_id=uuid.uuid4(), external_id="case-1", priority="bulk",
        status="succeeded", stage=None, attempt=1, age=54, sex="female", site="torso", pixel_spacing_mm=None,
        created_at=NOW, started_at=NOW, completed_at=NOW, updated_at=NOW, image_key="i", image_sha256="ab" * 32,
        image_content_type="image/jpeg", image_width=400, image_height=300, mask_key="m", overlay_key="o",
        result=RESULT, rejection=None, error=None, model=MODEL, deadline_at=None, cancel_reason=None,
    )


def _sent(view: BaseModel) -> dict:
    """The view's JSON as the API sends it (the set fields; ``response_model_exclude_unset``)."""
    return view.model_dump(mode="json", exclude_unset=True)


def test_analysis_views_declare_every_key(monkeypatch):
    """The views are the response models themselves; what could still slip past the document
    is an extra key (the models allow extras, so that stored results keep any they have)."""
    analysis = _succeeded()
    monkeypatch.setattr(analysis_routes.service, "report_for", lambda session, ident: None)
    monkeypatch.setattr(analysis_routes.service, "feedback_for", lambda session, ident: [])
    full = analysis_routes.view(_Context(), None, analysis)
    assert isinstance(full, AnalysisOut)
    assert _undeclared(AnalysisOut, _sent(full)) == []
    listed = analysis_routes.summary(analysis)
    assert type(listed) is AnalysisSummary and "model" not in _sent(listed)
    assert _undeclared(AnalysisSummary, _sent(listed)) == []
    event = lifecycle.event_data(_Context.settings, analysis)
    assert isinstance(event, AnalysisEventData)
    assert _undeclared(AnalysisEventData, _sent(event)) == []


def test_batch_view_declares_every_key():
    batch = Batch(id=uuid.uuid4(), tenant_id=uuid.uuid4(), name="clinic", external_id=None, created_at=NOW,
                  sealed_at=None, completed_at=None, deadline_at=None, canceled_at=None)
    counts = {"queued": 1, "processing": 0, "succeeded": 2, "rejected": 0, "failed": 0, "canceled": 0}
    dispositions = DispositionCounts(urgent_referral=0, clinician_review=2, routine=0)
    progress = batch_routes.service.Progress(counts, dispositions, 3, 2, 66.7, 1.5, 40.0, NOW)
    body = batch_routes.view(_Context(), batch, progress)
    assert isinstance(body, BatchOut)
    assert _undeclared(BatchOut, _sent(body)) == []
    assert _sent(body)["dispositions"] == {"urgent_referral": 0, "clinician_review": 2, "routine": 0}


def test_problem_bodies_match_the_declared_schema():
    import json

    from api.problems import problem_response

    answer = problem_response(409, "batch_sealed", "Batch is sealed", "create a new batch", "/v1/analyses")
    body = json.loads(answer.body)
    assert ProblemDetails.model_validate(body).type.endswith("/batch_sealed")
    assert _undeclared(ProblemDetails, body) == []


def test_problems_under_fhir_are_operation_outcomes():
    """Issue 23: the same problem, as a FHIR client expects it: an R4B OperationOutcome."""
    import json

    from fhir.resources.R4B.operationoutcome import OperationOutcome as R4BOperationOutcome

    from api.problems import problem_response
    from shared.schemas import OperationOutcome

    answer = problem_response(404, "not_found", "Not found", "no Subscription with id 1", "/fhir/Subscription/1")
    assert answer.media_type == "application/fhir+json" and answer.status_code == 404
    body = json.loads(answer.body)
    R4BOperationOutcome.model_validate(body)
    assert OperationOutcome.model_validate(body).issue[0].code == "not-found"
    assert body["issue"][0]["details"]["coding"][0]["code"] == "not_found"
    assert _undeclared(OperationOutcome, body) == []
    assert json.loads(problem_response(404, "not_found", "Not found", "x", "/fhirx").body)["status"] == 404


def test_every_free_text_input_says_it_takes_no_nul_byte(spec):
    """The edge refuses NUL in any JSON string or query value (422); the document says so, so a
    client generated from it (or a fuzzer) never sends a 'valid' request that is refused."""
    import re

    from api.openapi.contract import NO_NUL_PATTERN

    schemas = spec["components"]["schemas"]
    assert schemas["FeedbackIn"]["properties"]["notes"]["anyOf"][0]["pattern"] == NO_NUL_PATTERN
    listed = next(p for p in spec["paths"]["/v1/analyses"]["get"]["parameters"] if p["name"] == "external_id")
    assert listed["schema"]["anyOf"][0]["pattern"] == NO_NUL_PATTERN
    assert re.fullmatch(NO_NUL_PATTERN, "Is it growing? ünïcode ✓") and not re.fullmatch(NO_NUL_PATTERN, "a\x00b")

    strings: list[tuple[str, dict]] = []

    def walk(node, where: str, seen: set[str]) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, where, seen)
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if ref and ref not in seen:
                seen.add(ref)
                walk(schemas[ref.rsplit("/", 1)[-1]], ref, seen)
            if node.get("type") == "string":
                strings.append((where, node))
            for key, child in node.items():
                if key in ("properties", "items", "anyOf", "oneOf", "allOf", "additionalProperties"):
                    walk(list(child.values()) if key == "properties" else child, where, seen)

    for method, path, op in _operations(spec):
        inputs = [p.get("schema") for p in op.get("parameters", [])]
        inputs += [c.get("schema") for c in (op.get("requestBody") or {}).get("content", {}).values()]
        walk(inputs, f"{method.upper()} {path}", set())
    assert len(strings) > 20
    open_ended = [
        where for where, node in strings
        if not ({"enum", "const", "format"} & node.keys())
        and ("pattern" not in node or re.search(node["pattern"], "ok\x00ok") is not None)
    ]
    assert open_ended == []
    question = schemas["QuestionIn"]["properties"]["question"]["pattern"]
    assert re.search(question, "Is it growing?") and not re.search(question, "   ")
