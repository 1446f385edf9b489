"""Cancellation: on request, with a batch, and when a deadline passes (reason ``expired``).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from celery import Celery
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.config import Settings, get_settings
from shared.events import record_event
from shared.lifecycle.batches import complete_batch_if_done, stop_unpacking
from shared.lifecycle.outcomes import on_final
from shared.lifecycle.states import ACTIVE, CANCEL_BATCH, CANCEL_EXPIRED, CANCEL_REQUESTED
from shared.lifecycle.views import event_data
from shared.tables import Analysis, AnalysisStatus, Batch


def _canceled_values(now: datetime, reason: str) -> dict:
    return dict(
        status=AnalysisStatus.canceled.value, stage=None, completed_at=now, updated_at=now,
        cancel_reason=reason, ingest_requested_at=None, heartbeat_at=None,
    )


def cancel(
    session: Session,
    celery: Celery | None,
    settings: Settings,
    analysis_id: uuid.UUID,
    reason: str = CANCEL_REQUESTED,
) -> Analysis | None:
    """Cancel a queued or processing job; None when it was already final."""
    now = utcnow()
    analysis = session.execute(
        update(Analysis)
        .where(Analysis.id == analysis_id, Analysis.status.in_(ACTIVE))
        .values(**_canceled_values(now, reason))
        .returning(Analysis)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).scalar_one_or_none()
    if analysis is not None:
        on_final(session, celery, settings, analysis)
    return analysis


def _cancel_where(session: Session, celery: Celery | None, settings: Settings | None, reason: str,
                  *conditions: ColumnElement[bool], limit: int | None = None) -> list[Analysis]:
    """Cancel every unfinished job matching ``conditions`` in one statement; one
    ``analysis.canceled`` event each (deduplicated, so a second run emits nothing), and
    each affected batch checked for completion once."""
    now = utcnow()
    query = select(Analysis.id).where(Analysis.status.in_(ACTIVE), *conditions)
    if limit is not None:
        query = query.limit(limit)
    picked = query.with_for_update(skip_locked=True).cte("picked")
    rows = list(
        session.execute(
            update(Analysis)
            .where(Analysis.id.in_(select(picked.c.id)), Analysis.status.in_(ACTIVE))
            .values(**_canceled_values(now, reason))
            .returning(Analysis)
            .execution_options(synchronize_session=False, populate_existing=True)
        ).scalars()
    )
    if not rows:
        return rows
    if settings is None:
        settings = get_settings()
    for analysis in rows:
        record_event(
            session,
            celery,
            tenant_id=analysis.tenant_id,
            type="analysis.canceled",
            data=event_data(settings, analysis),
            dedupe_key=f"analysis.canceled:{analysis.id}",
        )
    for batch_id in {a.batch_id for a in rows if a.batch_id is not None}:
        complete_batch_if_done(session, celery, settings, batch_id)
    return rows


def expire_due(
    session: Session,
    celery: Celery | None,
    settings: Settings | None,
    now: datetime,
    *,
    only: uuid.UUID | None = None,
    limit: int = 500,
) -> list[Analysis]:
    """Unfinished jobs past their deadline end ``canceled`` with reason ``expired``."""
    conditions = [Analysis.deadline_at.is_not(None), Analysis.deadline_at <= now]
    if only is not None:
        conditions.append(Analysis.id == only)
    return _cancel_where(session, celery, settings, CANCEL_EXPIRED, *conditions, limit=limit)


def cancel_batch(session: Session, celery: Celery | None, settings: Settings, batch: Batch) -> list[Analysis]:
    """Cancel every unfinished item of a batch and close it for new items. A second call
    finds nothing unfinished: it changes nothing and emits nothing."""
    now = utcnow()
    if batch.canceled_at is None:
        batch.canceled_at = now
    if batch.sealed_at is None:
        batch.sealed_at = now
    session.flush()
    # Before the items: a chunk of its archive being settled now is waited for, then canceled too.
    stop_unpacking(session, batch.id)
    canceled = _cancel_where(session, celery, settings, CANCEL_BATCH, Analysis.batch_id == batch.id)
    if not canceled:
        complete_batch_if_done(session, celery, settings, batch.id)
    return canceled
