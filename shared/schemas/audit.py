"""The audit trail as the API and the export show it (issue 22; docs/AUDIT.md)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import Field

from shared.schemas.common import ResponseModel, Timestamp

# The values of shared.audit's outcomes (tests/shared/test_audit.py checks they agree).
AuditOutcome = Literal["success", "denied", "not_found", "invalid", "error"]


class AuditEventOut(ResponseModel):
    """One row of a tenant's audit trail: who did what to which resource, and how it ended.
    Never PHI: ids, the action, the outcome, the request's id, address and user agent."""

    tenant_id: uuid.UUID
    seq: int = Field(description="The row's place in the tenant's hash chain (1, 2, …; no gaps)")
    occurred_at: Timestamp
    actor: str = Field(description="`key:<API key id>`, `operator:<OS user>` or `system`; never a key itself")
    action: str = Field(description="`<resource>.<verb>`, e.g. `analysis.read`, `audit.read`")
    resource_type: str
    resource_id: str | None
    outcome: AuditOutcome
    status_code: int | None = Field(description="The HTTP status the operation ended with, when it was a request")
    request_id: str | None
    client_address: str | None
    user_agent: str | None
    detail: dict[str, Any] | None = Field(description="PHI-free detail: counts, names of artifacts, filters")
    prev_hash: str = Field(description="The previous row's `hash` (64 zeros for the first row of a chain)")
    hash: str = Field(description="sha256 over this row's fields and `prev_hash` (docs/AUDIT.md)")


class AuditEventPage(ResponseModel):
    data: list[AuditEventOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last")
