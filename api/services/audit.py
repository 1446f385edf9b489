"""The tenant's own audit trail (issue 22): one page of its chain, newest first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.pagination import decode_seq_cursor, encode_seq_cursor
from shared.tables import AuditEvent


@dataclass(frozen=True)
class AuditFilters:
    since: datetime | None = None
    until: datetime | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    actor: str | None = None
    outcome: str | None = None


def list_page(
    session: Session, tenant: TenantRef, filters: AuditFilters, *, limit: int, cursor: str | None
) -> tuple[list[AuditEvent], str | None]:
    """One page of ``tenant``'s chain (never another's) and the cursor of the next page."""
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant.id)
    if filters.since is not None:
        query = query.where(AuditEvent.occurred_at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEvent.occurred_at < filters.until)
    for column, value in (
        (AuditEvent.action, filters.action),
        (AuditEvent.resource_type, filters.resource_type),
        (AuditEvent.resource_id, filters.resource_id),
        (AuditEvent.actor, filters.actor),
        (AuditEvent.outcome, filters.outcome),
    ):
        if value is not None:
            query = query.where(column == value)
    if cursor:
        query = query.where(AuditEvent.seq < decode_seq_cursor(cursor))
    rows = list(session.execute(query.order_by(AuditEvent.seq.desc()).limit(limit + 1)).scalars())
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_seq_cursor(rows[limit - 1].seq)
