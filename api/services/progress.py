"""Live progress (issue 25): what the event streams read. All their SQL is here.

An analysis' state changes are rows of ``analysis_transitions``, appended by a trigger in the
transaction that made each change (migration 0018); a stream replays them after the id its
client saw last. A batch's stream shows its progress (``api.services.batches.progress``)
whenever its items or the batch itself changed. ``latest_changes`` is the one cheap query with
which an API process learns which of the analyses and batches its streams follow have changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.services import batches
from api.services.analyses import FINAL_STATUSES
from shared.tables import Analysis, AnalysisTransition, Batch

# Transitions read at once; an analysis has a handful (more only after retries).
PAGE = 100


@dataclass(frozen=True)
class Transition:
    id: int
    status: str
    stage: str | None
    at: datetime


@dataclass(frozen=True)
class AnalysisProgress:
    """The analysis as it is now, and its state changes after the cursor, oldest first."""

    status: str
    stage: str | None
    updated_at: datetime
    transitions: list[Transition]

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def analysis_progress(
    session: Session, tenant: TenantRef, analysis_id: uuid.UUID, after: int
) -> AnalysisProgress | None:
    """None when the tenant has no such analysis (or it was erased). The row is read before its
    transitions: under READ COMMITTED the second statement sees every change the first saw, so
    a final row always comes with its final transition, unless the client already had it."""
    row = session.execute(
        select(Analysis.status, Analysis.stage, Analysis.updated_at).where(
            Analysis.id == analysis_id, Analysis.tenant_id == tenant.id
        )
    ).one_or_none()
    if row is None:
        return None
    rows = session.execute(
        select(AnalysisTransition.id, AnalysisTransition.status, AnalysisTransition.stage, AnalysisTransition.at)
        .where(AnalysisTransition.analysis_id == analysis_id, AnalysisTransition.id > after)
        .order_by(AnalysisTransition.id)
        .limit(PAGE)
    ).all()
    return AnalysisProgress(row.status, row.stage, row.updated_at, [Transition(*r) for r in rows])


def batch_progress(session: Session, tenant: TenantRef, batch_id: uuid.UUID) -> tuple[Batch, batches.Progress] | None:
    """The batch and its progress as ``GET /v1/batches/{id}`` counts them; None when the tenant
    has no such batch."""
    batch = session.execute(
        select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant.id)
    ).scalar_one_or_none()
    if batch is None:
        return None
    return batch, batches.progress(session, batch)


@dataclass(frozen=True)
class Changes:
    """A marker per followed analysis and batch: it differs from the last one seen when the
    thing changed (a new transition; for a batch also sealed, canceled or completed)."""

    analyses: dict[uuid.UUID, object]
    batches: dict[uuid.UUID, object]


def latest_changes(
    session: Session, analysis_ids: Collection[uuid.UUID], batch_ids: Collection[uuid.UUID]
) -> Changes:
    """One statement per kind, whatever the number of streams: the newest transition of each
    (one descent of its index each, never a count of a large batch's rows)."""
    analyses: dict[uuid.UUID, object] = {}
    if analysis_ids:
        newest = (
            select(func.max(AnalysisTransition.id))
            .where(AnalysisTransition.analysis_id == Analysis.id)
            .correlate(Analysis)
            .scalar_subquery()
        )
        for analysis_id, latest in session.execute(
            select(Analysis.id, newest).where(Analysis.id.in_(list(analysis_ids)))
        ):
            analyses[analysis_id] = latest
    found: dict[uuid.UUID, object] = {}
    if batch_ids:
        newest = (
            select(func.max(AnalysisTransition.id))
            .where(AnalysisTransition.batch_id == Batch.id)
            .correlate(Batch)
            .scalar_subquery()
        )
        for batch_id, latest, sealed, canceled, completed in session.execute(
            select(Batch.id, newest, Batch.sealed_at, Batch.canceled_at, Batch.completed_at).where(
                Batch.id.in_(list(batch_ids))
            )
        ):
            found[batch_id] = (latest, sealed, canceled, completed)
    return Changes(analyses, found)
