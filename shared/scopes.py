"""What an API key may do (issue 22): each key carries a list of scopes, and each operation
names the one it needs. A key made by ``dermasentinel tenants create`` holds them all (the
tenant's admin key); ``keys create --scope`` and ``POST /v1/api-keys`` make narrower ones."""

from __future__ import annotations

import enum


class Scope(enum.StrEnum):
    analyses_write = "analyses:write"  # submit, upload, cancel, erase analyses
    analyses_read = "analyses:read"  # results, reports, FHIR, artifacts, triage, exports, questions
    batches_write = "batches:write"  # create batches and submit into them
    feedback_write = "feedback:write"  # record a clinician's ground truth
    webhooks_manage = "webhooks:manage"  # webhook endpoints and their secrets
    keys_manage = "keys:manage"  # create, list and revoke API keys
    audit_read = "audit:read"  # the tenant's audit trail
    models_read = "models:read"  # the model registry and model cards


ALL_SCOPES: tuple[Scope, ...] = tuple(Scope)
# Written into a migration's server default too (keys made before scopes existed hold them all).
ALL_SCOPES_SQL = "ARRAY[" + ", ".join(f"'{scope.value}'" for scope in ALL_SCOPES) + "]::text[]"


def parse_scopes(values: list[str] | tuple[str, ...]) -> list[Scope]:
    """Scopes from user input, in the canonical order, each once; a ValueError names any
    unknown one."""
    unknown = [value for value in values if value not in {scope.value for scope in Scope}]
    if unknown:
        raise ValueError(
            f"unknown scope {unknown[0]!r}; the scopes are: {', '.join(scope.value for scope in ALL_SCOPES)}"
        )
    wanted = set(values)
    return [scope for scope in ALL_SCOPES if scope.value in wanted]
