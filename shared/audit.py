"""The audit trail (issue 22; docs/AUDIT.md): who read which patient's record and who changed
what, kept append-only and hash-chained per tenant.

Every row carries its tenant's next ``seq`` and ``hash = sha256(prev_hash + canonical row)``,
so an edited row no longer matches its hash and a deleted one leaves a gap in ``seq``:
``verify`` reports both. Rows are appended one short transaction at a time, under a
transaction-scoped advisory lock per tenant (the chain has one head). The database refuses
UPDATE and TRUNCATE on the trail, and DELETE of rows no signed checkpoint covers (migration
0011), whatever role the application runs as. Pruning (``AUDIT_RETENTION_DAYS``) deletes old
rows only behind a checkpoint signed with a key derived from ``SECRET_KEY``, after which the
chain still verifies; ``export_rows`` streams a tenant's rows for `dermasentinel audit export`.

No PHI is ever written here: ids (of the key, the analysis, the request), the client's address
and user agent, the action and its outcome. External ids, ages, sites and images never are.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import CursorResult, delete, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import iso, utcnow
from shared.config import Settings
from shared.db import session_scope
from shared.schemas.audit import AuditEventOut
from shared.tables import SYSTEM_CHAIN, AuditCheckpoint, AuditEvent

log = logging.getLogger(__name__)

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


def _fields(row: AuditEvent | Mapping[Any, Any]) -> Callable[[str], Any]:
    """A reader of a row's fields by name: an ORM row's attributes or a mapping's keys."""
    if isinstance(row, Mapping):
        return lambda name: row.get(name)
    return lambda name: getattr(row, name)


def canonical(row: AuditEvent | Mapping[Any, Any]) -> bytes:
    """The bytes a row's hash covers: every recorded field and the previous hash."""
    get = _fields(row)
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


def row_hash(row: AuditEvent | Mapping[Any, Any]) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


def chain_of(tenant_id: uuid.UUID | None) -> uuid.UUID:
    return SYSTEM_CHAIN if tenant_id is None else tenant_id


def lock_chain(session: Session, chain: uuid.UUID) -> None:
    """Hold the chain's head until this transaction ends (appends and pruning take it)."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"audit:{chain}"})


def _head(session: Session, chain: uuid.UUID) -> tuple[int, str]:
    """The seq and hash the chain's next row follows (its last row's, else its newest
    checkpoint's: the chain may go on after a pruned stretch, else the genesis)."""
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).where(AuditEvent.tenant_id == chain)
        .order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    if head is not None:
        return head[0], head[1]
    checkpoint = session.execute(
        select(AuditCheckpoint.through_seq, AuditCheckpoint.through_hash)
        .where(AuditCheckpoint.tenant_id == chain).order_by(AuditCheckpoint.through_seq.desc()).limit(1)
    ).first()
    return (checkpoint[0], checkpoint[1]) if checkpoint else (0, GENESIS)


def append_many(session: Session, entries: Sequence[AuditEntry]) -> list[AuditEvent]:
    """Append ``entries`` (in their order within each chain) in this session's transaction;
    commit soon (each chain's lock is held until then). Chains are locked in a fixed order,
    so two processes appending to the same chains never deadlock."""
    by_chain: dict[uuid.UUID, list[AuditEntry]] = {}
    for entry in entries:
        by_chain.setdefault(chain_of(entry.tenant_id), []).append(entry)
    rows: list[AuditEvent] = []
    now = utcnow()
    for chain in sorted(by_chain):
        lock_chain(session, chain)
        seq, prev_hash = _head(session, chain)
        for entry in by_chain[chain]:
            seq += 1
            row = AuditEvent(
                tenant_id=chain,
                seq=seq,
                occurred_at=now,
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
            row.hash = prev_hash = row_hash(row)
            rows.append(row)
    session.add_all(rows)
    session.flush()
    return rows


def append(session: Session, entry: AuditEntry) -> AuditEvent:
    """Append one entry to its chain in this session's transaction (``append_many``)."""
    return append_many(session, [entry])[0]


def record(session_factory: sessionmaker[Session], entry: AuditEntry) -> None:
    """Append ``entry`` in a short transaction of its own."""
    record_many(session_factory, [entry])


def record_many(session_factory: sessionmaker[Session], entries: Sequence[AuditEntry]) -> None:
    """Append ``entries`` in one short transaction of their own (the API's group commit)."""
    with session_scope(session_factory) as session:
        append_many(session, entries)


def count(session: Session, tenant_id: uuid.UUID | None) -> int:
    return int(session.execute(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.tenant_id == chain_of(tenant_id))
    ).scalar_one())


# ---------------------------------------------------------------- the chains


def chains(session: Session) -> list[uuid.UUID]:
    """Every chain that has rows or a checkpoint, the system chain included. The distinct
    tenant ids come from the (tenant_id, seq) index one jump per chain (a loose index scan),
    not from reading every row."""
    rows = session.execute(text(
        """
        WITH RECURSIVE chain AS (
            (SELECT tenant_id FROM audit_events ORDER BY tenant_id LIMIT 1)
            UNION ALL
            SELECT (SELECT e.tenant_id FROM audit_events e WHERE e.tenant_id > chain.tenant_id
                    ORDER BY e.tenant_id LIMIT 1)
            FROM chain WHERE chain.tenant_id IS NOT NULL
        )
        SELECT tenant_id FROM chain WHERE tenant_id IS NOT NULL
        UNION
        SELECT DISTINCT tenant_id FROM audit_checkpoints
        """
    )).scalars()
    return sorted(rows, key=str)


# ---------------------------------------------------------------- checkpoints

CHECKPOINT_CONTEXT = b"dermasentinel audit checkpoint v1"
SIGNATURE_VERSION = "v1="


def _checkpoint_key(secret_key: str) -> bytes:
    """The checkpoint-signing key derived from one SECRET_KEY entry (HKDF-SHA256, its own
    context), so the Fernet key that encrypts webhook secrets is never used as is."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=CHECKPOINT_CONTEXT).derive(secret_key.encode())


def checkpoint_text(
    tenant_id: uuid.UUID, through_seq: int, through_hash: str, pruned_before: datetime, rows_pruned: int
) -> bytes:
    """What a checkpoint's signature covers, one field a line."""
    return "\n".join([
        "dermasentinel-audit-checkpoint-v1",
        str(tenant_id),
        str(int(through_seq)),
        through_hash,
        pruned_before.astimezone(UTC).isoformat(timespec="microseconds"),
        str(int(rows_pruned)),
    ]).encode()


def sign_checkpoint(checkpoint: AuditCheckpoint, secret_key: str) -> str:
    """``v1=`` and the hex HMAC-SHA256 of ``checkpoint_text`` under ``secret_key``'s derived key."""
    message = checkpoint_text(
        checkpoint.tenant_id, checkpoint.through_seq, checkpoint.through_hash, checkpoint.pruned_before,
        checkpoint.rows_pruned,
    )
    return SIGNATURE_VERSION + hmac.new(_checkpoint_key(secret_key), message, hashlib.sha256).hexdigest()


def checkpoint_signed(checkpoint: AuditCheckpoint, secret_keys: Sequence[str]) -> bool:
    """Whether any of ``secret_keys`` (SECRET_KEY, newest first: rotation keeps old
    checkpoints valid while the old key is listed) signed ``checkpoint``."""
    return any(hmac.compare_digest(sign_checkpoint(checkpoint, key), checkpoint.signature) for key in secret_keys)


# ---------------------------------------------------------------- verify

YIELD_PER = 1000


class ProblemKind(enum.StrEnum):
    edited = "edited"  # the row no longer matches its own hash
    broken_link = "broken_link"  # the row's prev_hash is not the previous row's hash
    missing = "missing"  # seq skips: rows were deleted
    bad_checkpoint = "bad_checkpoint"  # no SECRET_KEY signed this checkpoint


@dataclass(frozen=True)
class ChainProblem:
    chain: uuid.UUID
    kind: ProblemKind
    first_seq: int
    last_seq: int

    def describe(self) -> str:
        if self.kind is ProblemKind.edited:
            return f"row {self.first_seq} was edited: its fields no longer match its hash"
        if self.kind is ProblemKind.broken_link:
            return (f"row {self.first_seq} does not follow row {self.first_seq - 1}: its prev_hash is not that "
                    "row's hash (a row was replaced or rewritten with a new hash)")
        if self.kind is ProblemKind.missing:
            span = f"row {self.first_seq}" if self.first_seq == self.last_seq else \
                f"rows {self.first_seq}..{self.last_seq}"
            return f"missing {span}: deleted with no checkpoint covering them"
        return (f"the checkpoint through row {self.first_seq} has a bad signature: no SECRET_KEY signed it "
                "(forged, altered, or signed with a key no longer listed)")


@dataclass
class ChainReport:
    """One chain's verification: what was walked, where it ends (the head to anchor
    outside the database) and what is wrong."""

    chain: uuid.UUID
    rows: int = 0  # rows walked, after the checkpoint the walk started from
    first_seq: int = 1  # where the walk started
    checkpoint_seq: int | None = None  # through_seq of that checkpoint (None: from the genesis)
    head_seq: int | None = None  # last row's seq; with no row after the checkpoint, the checkpoint's
    head_hash: str = GENESIS  # last row's hash (or the checkpoint's through_hash, or GENESIS)
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    chains: list[ChainReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(chain.ok for chain in self.chains)

    @property
    def problems(self) -> list[ChainProblem]:
        return [problem for chain in self.chains for problem in chain.problems]


def _start_after_checkpoint(session: Session, report: ChainReport, secret_keys: Sequence[str]) -> str:
    """Check every checkpoint of the chain and start the walk after the newest well-signed
    one (a forged checkpoint is reported and skipped: the rows it was made to delete then
    show as missing). Returns the hash the walk's first row must follow."""
    query = (
        select(AuditCheckpoint).where(AuditCheckpoint.tenant_id == report.chain)
        .order_by(AuditCheckpoint.through_seq.desc())
    )
    start: AuditCheckpoint | None = None
    for checkpoint in session.execute(query.execution_options(yield_per=YIELD_PER)).scalars():
        if not checkpoint_signed(checkpoint, secret_keys):
            report.problems.append(
                ChainProblem(report.chain, ProblemKind.bad_checkpoint, checkpoint.through_seq, checkpoint.through_seq)
            )
        elif start is None:
            start = checkpoint
    if start is None:
        return GENESIS
    report.checkpoint_seq = report.head_seq = start.through_seq
    report.first_seq = start.through_seq + 1
    report.head_hash = start.through_hash
    return start.through_hash


def _walk(session: Session, report: ChainReport, prev_hash: str, through_seq: int | None = None) -> None:
    """Walk the chain's rows from ``report.first_seq`` (to ``through_seq``) in seq order,
    streamed, recording problems and the head in ``report``."""
    table = AuditEvent.__table__
    query = select(table).where(table.c.tenant_id == report.chain, table.c.seq >= report.first_seq)
    if through_seq is not None:
        query = query.where(table.c.seq <= through_seq)
    expected, prev = report.first_seq, prev_hash
    result = session.execute(query.order_by(table.c.seq).execution_options(yield_per=YIELD_PER))
    for row in result.mappings():
        seq: int = row["seq"]
        if seq > expected:
            report.problems.append(ChainProblem(report.chain, ProblemKind.missing, expected, seq - 1))
        elif row["prev_hash"] != prev:
            report.problems.append(ChainProblem(report.chain, ProblemKind.broken_link, seq, seq))
        if row_hash(row) != row["hash"]:
            report.problems.append(ChainProblem(report.chain, ProblemKind.edited, seq, seq))
        expected, prev = seq + 1, row["hash"]
        report.rows += 1
        report.head_seq, report.head_hash = seq, row["hash"]


def verify_chain(session: Session, chain: uuid.UUID, *, secret_keys: Sequence[str]) -> ChainReport:
    report = ChainReport(chain)
    prev_hash = _start_after_checkpoint(session, report, secret_keys)
    _walk(session, report, prev_hash)
    return report


def verify(session: Session, tenant_id: uuid.UUID | None = None, *, secret_keys: Sequence[str]) -> VerifyReport:
    """Walk one tenant's chain (``tenant_id``; ``SYSTEM_CHAIN`` for the system's) or, with
    None, every chain, and report each edited row, broken link, gap and badly signed
    checkpoint, and each chain's head. Memory stays bounded (rows are streamed).

    Give it a session that has not begun a transaction at REPEATABLE READ (as
    `dermasentinel audit verify` does) to see one snapshot while appends and pruning go on.
    What it cannot see from the database alone is rows cut off the end of a chain: compare
    the head with one anchored outside it (docs/AUDIT.md)."""
    wanted = chains(session) if tenant_id is None else [tenant_id]
    return VerifyReport([verify_chain(session, chain, secret_keys=secret_keys) for chain in wanted])


# ---------------------------------------------------------------- prune


def prune_cutoff(now: datetime, retention_days: int) -> datetime:
    """Rows that occurred before this are pruned: ``retention_days`` before ``now``, rounded
    down to midnight UTC, so each chain gets at most one checkpoint a day however often the
    maintenance task runs (rows are kept up to a day longer, never shorter)."""
    cutoff = (now - timedelta(days=retention_days)).astimezone(UTC)
    return cutoff.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Pruned:
    chain: uuid.UUID
    through_seq: int
    rows: int


def _prune_chain(
    session: Session, chain: uuid.UUID, cutoff: datetime, secret_keys: Sequence[str]
) -> Pruned | ChainReport | None:
    """In the caller's transaction, under the chain's lock: the signed checkpoint, then the
    deletion, then a ``system`` row recording it. Returns None when nothing is old enough,
    and the walk's report, pruning nothing, when the stretch to prune does not verify (a
    checkpoint must never vouch for rows it could not check)."""
    lock_chain(session, chain)
    # Under the chain's lock each row's occurred_at is stamped in seq order: the newest old
    # row bounds the stretch (found through the (tenant_id, occurred_at) index).
    last = session.execute(
        select(AuditEvent.seq, AuditEvent.hash)
        .where(AuditEvent.tenant_id == chain, AuditEvent.occurred_at < cutoff)
        .order_by(AuditEvent.occurred_at.desc(), AuditEvent.seq.desc()).limit(1)
    ).first()
    if last is None:
        return None
    through_seq, through_hash = int(last[0]), str(last[1])
    report = ChainReport(chain)
    prev_hash = _start_after_checkpoint(session, report, secret_keys)
    if report.checkpoint_seq is not None and through_seq <= report.checkpoint_seq:
        return None  # rows a checkpoint already covers, left behind: nothing new to sign
    _walk(session, report, prev_hash, through_seq)
    if report.problems:
        return report
    checkpoint = AuditCheckpoint(
        tenant_id=chain, through_seq=through_seq, through_hash=through_hash, pruned_before=cutoff,
        rows_pruned=report.rows, signature="",
    )
    checkpoint.signature = sign_checkpoint(checkpoint, secret_keys[0])
    session.add(checkpoint)
    session.flush()
    deleted = cast(CursorResult[Any], session.execute(
        delete(AuditEvent).where(AuditEvent.tenant_id == chain, AuditEvent.seq <= through_seq)
        .execution_options(synchronize_session=False)
    )).rowcount
    append(session, AuditEntry(
        tenant_id=chain, actor="system", action="audit.prune", resource_type="audit_checkpoint",
        resource_id=str(through_seq), detail={"rows": deleted, "pruned_before": iso(cutoff)},
    ))
    return Pruned(chain, through_seq, deleted)


def prune(
    session_factory: sessionmaker[Session], settings: Settings, now: datetime, *, tenant_id: uuid.UUID | None = None
) -> dict[str, Any]:
    """Apply ``AUDIT_RETENTION_DAYS`` (0: keep forever) to every chain, or to ``tenant_id``'s:
    rows that occurred before the cutoff go, one transaction per chain, behind a checkpoint
    signed with the first SECRET_KEY, so the rows after it still verify. A chain whose
    stretch to prune does not verify is left as it is and named in ``skipped``."""
    days = settings.audit_retention_days
    summary: dict[str, Any] = {"chains": 0, "rows": 0, "skipped": []}
    if days <= 0:
        return summary
    cutoff = prune_cutoff(now, days)
    if tenant_id is None:
        with session_factory() as session:
            wanted = chains(session)
    else:
        wanted = [tenant_id]
    for chain in wanted:
        with session_scope(session_factory) as session:
            outcome = _prune_chain(session, chain, cutoff, settings.secret_keys)
        if isinstance(outcome, Pruned):
            summary["chains"] += 1
            summary["rows"] += outcome.rows
        elif isinstance(outcome, ChainReport):
            summary["skipped"].append(str(chain))
            log.warning(
                "audit chain %s not pruned: the stretch to prune does not verify (%s); run `dermasentinel audit "
                "verify`", chain, "; ".join(problem.describe() for problem in outcome.problems[:3]),
            )
    if summary["rows"]:
        log.info("audit trail: pruned %d rows of %d chains before %s", summary["rows"], summary["chains"], iso(cutoff))
    return summary


# ---------------------------------------------------------------- export


def event_out(row: AuditEvent | Mapping[Any, Any]) -> AuditEventOut:
    """A stored row as the API and the export show it (every column but the internal id)."""
    get = _fields(row)
    return AuditEventOut(
        tenant_id=get("tenant_id"),
        seq=get("seq"),
        occurred_at=iso(get("occurred_at").astimezone(UTC)),
        actor=get("actor"),
        action=get("action"),
        resource_type=get("resource_type"),
        resource_id=get("resource_id"),
        outcome=get("outcome"),
        status_code=get("status_code"),
        request_id=get("request_id"),
        client_address=get("client_address"),
        user_agent=get("user_agent"),
        detail=get("detail"),
        prev_hash=get("prev_hash"),
        hash=get("hash"),
    )


def export_rows(
    session: Session, tenant_id: uuid.UUID | None, since: datetime | None = None, until: datetime | None = None
) -> Iterator[AuditEventOut]:
    """``tenant_id``'s rows (None: the system chain's) that occurred at or after ``since``
    and before ``until``, in seq order, streamed."""
    table = AuditEvent.__table__
    query = select(table).where(table.c.tenant_id == chain_of(tenant_id))
    if since is not None:
        query = query.where(table.c.occurred_at >= since)
    if until is not None:
        query = query.where(table.c.occurred_at < until)
    result = session.execute(query.order_by(table.c.seq).execution_options(yield_per=YIELD_PER))
    for row in result.mappings():
        yield event_out(row)
