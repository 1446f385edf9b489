"""The audit trail (issue 22; docs/AUDIT.md): who read which patient's record and who changed
what, kept append-only and hash-chained per tenant.

Every row carries its tenant's next ``seq`` and ``hash = sha256(prev_hash + canonical row)``,
so an edited row no longer matches its hash and a deleted one leaves a gap in ``seq``:
``verify`` reports both. Rows are appended one short transaction at a time, under a
transaction-scoped advisory lock per tenant (the chain has one head). The database refuses
UPDATE and TRUNCATE on the trail, and DELETE of rows no signed checkpoint covers (migration
0011), whatever role the application runs as.

No PHI is ever written here: ids (of the key, the analysis, the request), the client's address
and user agent, the action and its outcome. External ids, ages, sites and images never are.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import utcnow
from shared.db import session_scope
from shared.tables import SYSTEM_CHAIN, AuditCheckpoint, AuditEvent

GENESIS = "0" * 64

# Outcomes, from the HTTP status the action ended with (or the operator command's result).
SUCCESS = "success"
DENIED = "denied"  # 401/403: the key may not do this
NOT_FOUND = "not_found"  # 404/410: nothing of this tenant's by that id
INVALID = "invalid"  # any other 4xx: the request was refused as it stood
ERROR = "error"  # 5xx: the service failed


def outcome_of(status_code: int) -> str:
    if status_code < 400:
        return SUCCESS
    if status_code in (401, 403):
        return DENIED
    if status_code in (404, 410):
        return NOT_FOUND
    if status_code < 500:
        return INVALID
    return ERROR


@dataclass(frozen=True)
class AuditEntry:
    """What happened, before the chain gives it a place. ``tenant_id`` None is the system
    chain (actions that belong to no tenant)."""

    tenant_id: uuid.UUID | None
    actor: str  # "key:<api key id>", "operator:<os user>" or "system"; never a key itself
    action: str  # "<resource>.<verb>", e.g. "analysis.read", "analysis.submit", "key.create"
    resource_type: str
    resource_id: str | None = None
    outcome: str = SUCCESS
    status_code: int | None = None
    request_id: str | None = None
    client_address: str | None = None
    user_agent: str | None = None
    detail: dict[str, Any] | None = field(default=None)


def operator_actor() -> str:
    """The actor of an operator's command (``dermasentinel tenants …``): the OS user running it."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"operator:{user}"


def canonical(row: AuditEvent | dict[str, Any]) -> bytes:
    """The bytes a row's hash covers: every recorded field and the previous hash."""
    get: Callable[[str], Any] = row.get if isinstance(row, dict) else (lambda name: getattr(row, name))
    occurred_at: datetime = get("occurred_at")
    body = {
        "tenant_id": str(get("tenant_id")),
        "seq": int(get("seq")),
        "occurred_at": occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": get("actor"),
        "action": get("action"),
        "resource_type": get("resource_type"),
        "resource_id": get("resource_id"),
        "outcome": get("outcome"),
        "status_code": get("status_code"),
        "request_id": get("request_id"),
        "client_address": get("client_address"),
        "user_agent": get("user_agent"),
        "detail": get("detail"),
        "prev_hash": get("prev_hash"),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def row_hash(row: AuditEvent | dict[str, Any]) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


def chain_of(tenant_id: uuid.UUID | None) -> uuid.UUID:
    return SYSTEM_CHAIN if tenant_id is None else tenant_id


def lock_chain(session: Session, chain: uuid.UUID) -> None:
    """Hold the chain's head until this transaction ends (appends and pruning take it)."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"audit:{chain}"})


def append(session: Session, entry: AuditEntry) -> AuditEvent:
    """Append ``entry`` to its chain in this session's transaction; commit soon (the chain's
    lock is held until then)."""
    chain = chain_of(entry.tenant_id)
    lock_chain(session, chain)
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).where(AuditEvent.tenant_id == chain)
        .order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    if head is None:
        # The chain may go on after a pruned stretch.
        checkpoint = session.execute(
            select(AuditCheckpoint.through_seq, AuditCheckpoint.through_hash)
            .where(AuditCheckpoint.tenant_id == chain).order_by(AuditCheckpoint.through_seq.desc()).limit(1)
        ).first()
        seq, prev_hash = (checkpoint[0] + 1, checkpoint[1]) if checkpoint else (1, GENESIS)
    else:
        seq, prev_hash = head[0] + 1, head[1]
    row = AuditEvent(
        tenant_id=chain,
        seq=seq,
        occurred_at=utcnow(),
        actor=entry.actor[:200],
        action=entry.action,
        resource_type=entry.resource_type,
        resource_id=entry.resource_id,
        outcome=entry.outcome,
        status_code=entry.status_code,
        request_id=entry.request_id,
        client_address=entry.client_address,
        user_agent=(entry.user_agent or None) and entry.user_agent[:300],
        detail=entry.detail,
        prev_hash=prev_hash,
    )
    row.hash = row_hash(row)
    session.add(row)
    session.flush()
    return row


def record(session_factory: sessionmaker[Session], entry: AuditEntry) -> None:
    """Append ``entry`` in a short transaction of its own."""
    with session_scope(session_factory) as session:
        append(session, entry)


def count(session: Session, tenant_id: uuid.UUID | None) -> int:
    return int(session.execute(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.tenant_id == chain_of(tenant_id))
    ).scalar_one())
