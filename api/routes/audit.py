"""/v1/audit-events: the tenant's own audit trail (issue 22; docs/AUDIT.md), for keys that
hold the ``audit:read`` scope. Reading it is itself recorded (``audit.read``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BeforeValidator

from api.auth import AuthenticatedTenant
from api.deps import SessionDep, audit_note, authorized
from api.problems import problems
from api.services import audit as service
from shared.audit import event_out
from shared.schemas import AuditEventPage, AuditOutcome
from shared.scopes import Scope

router = APIRouter(prefix="/v1/audit-events", tags=["audit"])

Id = Annotated[str | None, Query(max_length=200)]
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_only(value: object) -> object:
    """Only ISO 8601 text: pydantic would also take a number of seconds since 1970 ("0.5")."""
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("expected an ISO 8601 timestamp, e.g. 2026-12-06T09:30:00Z")
    return value


IsoTimestamp = Annotated[datetime, BeforeValidator(_iso_only)]


def _utc(moment: datetime | None) -> datetime | None:
    """A timestamp without an offset is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@router.get(
    "",
    summary="The tenant's audit trail, newest first",
    description="Who read or changed what, in this tenant's hash-chained audit trail (never PHI: key ids, "
    "actions, resource ids, outcomes, request ids, client addresses and user agents), newest first by `seq`, in "
    "pages of `limit`; pass `next_cursor` back as `cursor` for the next page. Filters: `since` (inclusive) and "
    "`until` (exclusive) as ISO 8601 timestamps (UTC when no offset is given), `action`, `resource_type`, "
    "`resource_id`, `actor` (`key:<id>`, `operator:<user>`, `system`) and `outcome`. Needs the `audit:read` "
    "scope; each read of the trail is itself recorded (`audit.read`).",
    response_model=AuditEventPage,
    responses=problems((400, "The cursor is not one this API issued"), (403, "The key lacks the `audit:read` scope")),
)
def list_audit_events(
    request: Request,
    tenant: Annotated[AuthenticatedTenant, authorized(Scope.audit_read, "audit.read", "audit_event")],
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    since: IsoTimestamp | None = None,
    until: IsoTimestamp | None = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    resource_type: Annotated[str | None, Query(max_length=64)] = None,
    resource_id: Id = None,
    actor: Id = None,
    outcome: AuditOutcome | None = None,
) -> AuditEventPage:
    filters = service.AuditFilters(
        since=_utc(since), until=_utc(until), action=action, resource_type=resource_type,
        resource_id=resource_id, actor=actor, outcome=outcome,
    )
    rows, next_cursor = service.list_page(session, tenant, filters, limit=limit, cursor=cursor)
    note = audit_note(request)
    note.detail["rows"] = len(rows)
    used = {name: value for name, value in (
        ("since", since and since.isoformat()), ("until", until and until.isoformat()), ("action", action),
        ("resource_type", resource_type), ("resource_id", resource_id), ("actor", actor), ("outcome", outcome),
    ) if value is not None}
    if used:
        note.detail["filters"] = used
    return AuditEventPage(data=[event_out(row) for row in rows], next_cursor=next_cursor)
