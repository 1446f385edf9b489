"""Batch progress and the single ``batch.completed`` transition.
"""

from __future__ import annotations

import uuid

from celery import Celery
from sqlalchemy import func, literal_column, select
from sqlalchemy.orm import Session

from shared import clinical
from shared.clock import utcnow
from shared.config import Settings
from shared.events import record_event
from shared.lifecycle.states import ACTIVE
from shared.lifecycle.views import api_base
from shared.schemas.batches import StatusCounts
from shared.schemas.events import BatchCompletedData, BatchEventLinks
from shared.tables import Analysis, AnalysisStatus, Batch


def batch_counts(session: Session, batch_id: uuid.UUID) -> dict[str, int]:
    """Counts per status from the (batch_id, status) index: no scan of the tenant's rows."""
    rows = session.execute(
        select(Analysis.status, func.count())
        .where(Analysis.batch_id == batch_id)
        .group_by(Analysis.status)
    ).all()
    counts = {s.value: 0 for s in AnalysisStatus}
    counts.update(dict(rows))
    return counts


def complete_batch_if_done(
    session: Session, celery: Celery | None, settings: Settings, batch_id: uuid.UUID
) -> bool:
    """Emit ``batch.completed`` exactly once: when the batch is sealed and nothing is active."""
    batch = session.execute(
        select(Batch).where(Batch.id == batch_id).with_for_update()
    ).scalar_one_or_none()
    if batch is None or batch.sealed_at is None or batch.completed_at is not None:
        return False
    still_active = session.execute(
        select(func.count())
        .select_from(Analysis)
        .where(Analysis.batch_id == batch_id, Analysis.status.in_(ACTIVE))
    ).scalar_one()
    if still_active:
        return False
    batch.completed_at = utcnow()
    counts = batch_counts(session, batch_id)
    # Succeeded results per weights status: the payload says when they are not meaningful.
    # Grouped in SQL (a batch may hold 100,000 results), so the stored provenance is read by
    # its JSON key here rather than as ModelInfo.
    status = Analysis.model["weights"].as_string().label("weights_status")
    weights: dict[str | None, int] = dict(
        session.execute(
            select(status, func.count())
            .where(Analysis.batch_id == batch_id, Analysis.status == AnalysisStatus.succeeded.value)
            .group_by(literal_column(status.name))  # by the output column: one copy of the expression
        ).all()
    )
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
            counts=StatusCounts(**counts),
            **clinical.weights_summary(weights),
            links=BatchEventLinks(self=base, results=f"{base}/results?order=risk"),
        ),
        dedupe_key=f"batch.completed:{batch.id}",
    )
    return True


def unfinished_sealed_batches(session: Session, limit: int = 100) -> list[uuid.UUID]:
    return list(
        session.execute(
            select(Batch.id).where(Batch.sealed_at.is_not(None), Batch.completed_at.is_(None)).limit(limit)
        ).scalars()
    )
