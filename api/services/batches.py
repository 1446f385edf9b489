"""Batches: create, list, progress, seal, cancel. All SQL for the route lives here but the
triage list's (``api.services.triage``).

Progress: counts per status and per disposition come from one grouped query over the batch's
rows, found by the (batch_id, status) index (the disposition is read from each succeeded row's
stored result), and throughput from the (batch_id, completed_at) index.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.pagination import newest_first
from api.problems import Unprocessable
from api.services import batch_files
from api.services.owned import get_owned
from shared import lifecycle
from shared.clock import utcnow
from shared.context import AppContext
from shared.schemas import BatchIn
from shared.schemas.batches import DispositionCounts
from shared.tables import Analysis, AnalysisStatus, Batch

THROUGHPUT_WINDOW = timedelta(minutes=5)
# A rate measured over a few seconds swings wildly; never divide by less than this.
MIN_RATE_SPAN = timedelta(seconds=15)

FINAL = frozenset(
    s.value for s in (AnalysisStatus.succeeded, AnalysisStatus.rejected, AnalysisStatus.failed, AnalysisStatus.canceled)
)


# ---------------------------------------------------------------- batches


def create(session: Session, tenant: TenantRef, body: BatchIn, max_cancel_after_seconds: int | None = None) -> Batch:
    now = utcnow()
    if body.cancel_after is not None and max_cancel_after_seconds and body.cancel_after > max_cancel_after_seconds:
        raise Unprocessable(
            f"cancel_after: must be at most {max_cancel_after_seconds} seconds",
            errors=[{"field": "cancel_after", "message": f"must be at most {max_cancel_after_seconds} seconds"}],
        )
    batch = Batch(
        tenant_id=tenant.id,
        name=body.name,
        external_id=body.external_id,
        created_at=now,
        deadline_at=now + timedelta(seconds=body.cancel_after) if body.cancel_after is not None else None,
    )
    session.add(batch)
    session.flush()
    return batch


def get(session: Session, tenant: TenantRef, batch_id: uuid.UUID, *, for_update: bool = False) -> Batch:
    return get_owned(session, Batch, batch_id, tenant, "batch", for_update=for_update)


def list_page(
    session: Session, tenant: TenantRef, *, limit: int, cursor: str | None, name: str | None
) -> tuple[list[Batch], str | None]:
    query = select(Batch).where(Batch.tenant_id == tenant.id)
    if name is not None:
        query = query.where(Batch.name == name)
    return newest_first(session, query, Batch, limit=limit, cursor=cursor)


def counts_for(session: Session, batch_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, int]]:
    """Counts per status for a page of batches in one query on the (batch_id, status) index."""
    empty = {s.value: 0 for s in AnalysisStatus}
    counts = {batch_id: dict(empty) for batch_id in batch_ids}
    if batch_ids:
        rows = session.execute(
            select(Analysis.batch_id, Analysis.status, func.count())
            .where(Analysis.batch_id.in_(batch_ids))
            .group_by(Analysis.batch_id, Analysis.status)
        ).all()
        for batch_id, status, n in rows:
            assert batch_id is not None  # IN (...) never matches a NULL batch_id
            counts[batch_id][status] = n
    return counts


def seal(context: AppContext, session: Session, tenant: TenantRef, batch_id: uuid.UUID) -> Batch:
    """Close the batch for new items (idempotent). A batch whose items are all final
    completes right here and emits ``batch.completed`` (once: the lifecycle guards it). A batch
    with an archive has it unpacked first (``batch_files.unpack_on_seal``; issue 25)."""
    batch = get(session, tenant, batch_id, for_update=True)
    if batch.sealed_at is None:
        batch_files.unpack_on_seal(context, session, batch)
        batch.sealed_at = utcnow()
        session.flush()
    lifecycle.complete_batch_if_done(session, context.celery, context.settings, batch.id)
    return batch


def cancel(context: AppContext, session: Session, tenant: TenantRef, batch_id: uuid.UUID) -> tuple[Batch, int]:
    """Cancel every unfinished item once and close the batch; returns the batch and how many
    items this call canceled (0 on a repeat: nothing changes, nothing is emitted)."""
    batch = get(session, tenant, batch_id, for_update=True)
    canceled = lifecycle.cancel_batch(session, context.celery, context.settings, batch)
    batch_files.forget_stopped_archive(context, session, batch)
    return batch, len(canceled)


# ---------------------------------------------------------------- progress


@dataclass(frozen=True)
class Progress:
    counts: dict[str, int]
    dispositions: DispositionCounts
    total: int
    done: int
    percent_done: float
    throughput_per_minute: float | None
    eta_seconds: float | None
    eta_at: datetime | None


def progress(session: Session, batch: Batch) -> Progress:
    tally = lifecycle.batch_tally(session, batch.id)
    counts = tally.counts
    total = sum(counts.values())
    done = sum(n for status, n in counts.items() if status in FINAL)
    remaining = total - done
    now = utcnow()
    since = now - THROUGHPUT_WINDOW
    finished_recently = session.execute(
        select(func.count()).where(Analysis.batch_id == batch.id, Analysis.completed_at >= since)
    ).scalar_one()
    rate = None
    if finished_recently:
        # Over the window, or over the batch's life when it is younger than that.
        span = max(now - max(since, batch.created_at), MIN_RATE_SPAN)
        rate = finished_recently / span.total_seconds() * 60.0
    eta_seconds = None
    if remaining == 0:
        eta_seconds = 0.0 if total else None
    elif rate:
        eta_seconds = remaining / rate * 60.0
    return Progress(
        counts=counts,
        dispositions=tally.dispositions,
        total=total,
        done=done,
        percent_done=round(100.0 * done / total, 1) if total else 0.0,
        throughput_per_minute=round(rate, 2) if rate is not None else None,
        eta_seconds=round(eta_seconds, 1) if eta_seconds is not None else None,
        eta_at=now + timedelta(seconds=eta_seconds) if eta_seconds else None,
    )
