"""Batch progress (counts per status and disposition) and the single ``batch.completed`` transition.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import cast

from celery import Celery
from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from shared import clinical
from shared.clinical import disposition
from shared.clock import utcnow
from shared.config import Settings
from shared.events import record_event
from shared.lifecycle.states import ACTIVE
from shared.lifecycle.views import api_base, shown_disposition
from shared.schemas.batches import BatchState, DispositionCounts, FinalBatchState, StatusCounts
from shared.schemas.events import BatchCompletedData, BatchEventLinks
from shared.tables import Analysis, AnalysisStatus, ArchiveState, Batch, BatchArchive


@dataclass(frozen=True)
class BatchTally:
    """A batch's items counted in one pass: per status, and its succeeded results per
    disposition (as each result shows it) and per weights status."""

    counts: dict[str, int]
    dispositions: DispositionCounts
    weights: dict[str | None, int]


def batch_tally(session: Session, batch_id: uuid.UUID) -> BatchTally:
    """Counts per status, shown disposition and weights status in one grouped query over the
    batch's rows, from the (batch_id, status, shown_disposition, weights_status) index alone:
    Postgres keeps both in generated columns, so no stored JSON is read. Only succeeded rows'
    dispositions and weights are counted."""
    rows = session.execute(
        select(Analysis.status, shown_disposition(), Analysis.weights_status, func.count())
        .where(Analysis.batch_id == batch_id)
        .group_by(Analysis.status, shown_disposition(), Analysis.weights_status)
    ).all()
    counts = {s.value: 0 for s in AnalysisStatus}
    dispositions = dict.fromkeys(disposition.DISPOSITIONS, 0)
    per_weights: dict[str | None, int] = {}
    for status, shown_as, weights_status, n in rows:
        counts[status] = counts.get(status, 0) + n
        if status != AnalysisStatus.succeeded.value:
            continue
        per_weights[weights_status] = per_weights.get(weights_status, 0) + n
        if shown_as in dispositions:
            dispositions[shown_as] += n
    return BatchTally(counts, DispositionCounts(**dispositions), per_weights)


def batch_state(batch: Batch, canceled_items: int) -> BatchState:
    """What the API and the ``batch.completed`` event call the batch (issue 25): open, sealed,
    or how it ended. ``canceled`` after ``POST …/cancel``; ``expired`` when it completed at or
    after its deadline with canceled items (the deadline canceled what was unfinished); else
    ``completed``."""
    if batch.completed_at is None:
        return "sealed" if batch.sealed_at is not None else "open"
    if batch.canceled_at is not None and batch.canceled_at <= batch.completed_at:  # a later cancel changed nothing
        return "canceled"
    if batch.deadline_at is not None and batch.completed_at >= batch.deadline_at and canceled_items:
        return "expired"
    return "completed"


def complete_batch_if_done(
    session: Session, celery: Celery | None, settings: Settings, batch_id: uuid.UUID
) -> bool:
    """Emit ``batch.completed`` exactly once: when the batch is sealed, nothing is active and
    no archive of it is still being unpacked."""
    batch = session.execute(
        select(Batch).where(Batch.id == batch_id).with_for_update()
    ).scalar_one_or_none()
    if batch is None or batch.sealed_at is None or batch.completed_at is not None:
        return False
    # A batch whose archive is still being unpacked has items to come (issue 25).
    if session.execute(select(exists().where(
        BatchArchive.batch_id == batch_id, BatchArchive.state == ArchiveState.unpacking.value
    ))).scalar_one():
        return False
    still_active = session.execute(
        select(func.count())
        .select_from(Analysis)
        .where(Analysis.batch_id == batch_id, Analysis.status.in_(ACTIVE))
    ).scalar_one()
    if still_active:
        return False
    batch.completed_at = utcnow()
    # Counts per status, and the succeeded results per disposition and per weights status: the
    # payload says when they are not meaningful.
    tally = batch_tally(session, batch_id)
    base = f"{api_base(settings)}/v1/batches/{batch.id}"
    record_event(
        session,
        celery,
        tenant_id=batch.tenant_id,
        type="batch.completed",
        data=BatchCompletedData(
            id=batch.id,
            name=batch.name,
            external_id=batch.external_id,
            state=cast(FinalBatchState, batch_state(batch, tally.counts.get(AnalysisStatus.canceled.value, 0))),
            counts=StatusCounts(**tally.counts),
            **clinical.weights_summary(tally.weights),
            dispositions=tally.dispositions,
            links=BatchEventLinks(self=base, results=f"{base}/results?order=risk"),
        ),
        dedupe_key=f"batch.completed:{batch.id}",
    )
    return True


def stop_unpacking(session: Session, batch_id: uuid.UUID) -> None:
    """The batch was canceled: its archive's rows not read yet never become items."""
    session.execute(
        update(BatchArchive)
        .where(BatchArchive.batch_id == batch_id,
               BatchArchive.state.in_((ArchiveState.awaiting.value, ArchiveState.unpacking.value)))
        .values(state=ArchiveState.stopped.value, ingest_requested_at=None, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def unfinished_sealed_batches(session: Session, limit: int = 100) -> list[uuid.UUID]:
    return list(
        session.execute(
            select(Batch.id).where(Batch.sealed_at.is_not(None), Batch.completed_at.is_(None)).limit(limit)
        ).scalars()
    )
