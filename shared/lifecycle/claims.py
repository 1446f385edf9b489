"""Claiming jobs for a GPU pass and recording outcomes, fenced by the attempt counter.

An attempt counter fences workers: a worker claims a job by moving it to ``processing``
and bumping ``attempt``; it may only record an outcome while the row still has that
attempt and status. A worker that lost its job (swept, canceled, re-claimed) writes nothing.
"""

from __future__ import annotations

import contextvars
import json
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    String,
    Text,
    and_,
    bindparam,
    cast,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.config import Settings
from shared.db import RowsParameter, after_commit
from shared.jobs import enqueue_analysis, worker_identity
from shared.lifecycle.cancel import expire_due
from shared.lifecycle.outcomes import on_final_many
from shared.tables import Analysis, AnalysisStatus


@dataclass(frozen=True)
class Claim:
    analysis_id: uuid.UUID
    attempt: int
    tenant_id: uuid.UUID
    image_key: str
    age: int | None
    sex: str
    site: str
    pixel_spacing_mm: float | None
    external_id: str | None
    # Issue 26: the job's lane (a batch records its interactive outcomes first). Issue 25: when
    # it was submitted and its stored trace context (queue-wait and end-to-end histograms,
    # worker spans). Defaults: claims built by hand in tests.
    priority: str = "interactive"
    created_at: datetime | None = None
    started_at: datetime | None = None
    traceparent: str | None = None


CLAIM_COLUMNS = (
    Analysis.id,
    Analysis.attempt,
    Analysis.tenant_id,
    Analysis.image_key,
    Analysis.age,
    Analysis.sex,
    Analysis.site,
    Analysis.pixel_spacing_mm,
    Analysis.external_id,
    Analysis.priority,
    Analysis.created_at,
    Analysis.started_at,
    Analysis.traceparent,
)


def claimable(now: datetime) -> ColumnElement[bool]:
    """Queued, due, ingested, and not past its deadline."""
    return and_(
        Analysis.status == AnalysisStatus.queued.value,
        # Jobs given back after an infrastructure error wait out their backoff.
        or_(Analysis.not_before.is_(None), Analysis.not_before <= now),
        # A direct upload is claimable once ingest has checked and stored its image.
        Analysis.ingest_requested_at.is_(None),
        or_(Analysis.deadline_at.is_(None), Analysis.deadline_at > now),
    )


def lane_candidates(priority: str, limit: int, now: datetime) -> Select[uuid.UUID]:
    """The oldest claimable jobs of one lane, rows another worker is claiming skipped: an
    ordered range scan of ``ix_analyses_active`` (status, priority, created_at) that stops
    after ``limit`` rows, however long the backlog (benchmarks/lanes.py prints the plan)."""
    return (
        select(Analysis.id)
        .where(claimable(now), Analysis.priority == priority)
        .order_by(Analysis.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


# The stage a claim moves its jobs to (a pass's first; the worker does not write it again).
FIRST_STAGE = "segmentation"


def claim_batch(
    session: Session,
    own_id: uuid.UUID,
    limit: int,
    *,
    celery: Celery | None = None,
    settings: Settings | None = None,
) -> list[Claim]:
    """Claim the message's own job (if still queued) plus the most urgent other queued
    jobs, so one GPU pass serves several: interactive before bulk, oldest first. A pass that
    holds an interactive job is not filled up with bulk ones (issue 26: a full pass takes
    several times as long as a short one, and the interactive result waits for all of it). The
    own job, if past its deadline, ends ``canceled`` (``expired``) here instead of running;
    other expired jobs are skipped and left to the sweeper."""
    now = utcnow()
    own = session.execute(
        select(Analysis.id, Analysis.priority).where(Analysis.id == own_id, claimable(now))
        .with_for_update(skip_locked=True)
    ).all()
    if not own:
        # Only a job that is not claimable can be past its deadline (``claimable`` excludes
        # those): the expiry statement runs only then (issue 27: one statement less per claim).
        expire_due(session, celery, settings, now, only=own_id)
    picked = [row.id for row in own]
    interactive = any(row.priority == "interactive" for row in own)
    # One ordered query per lane instead of one sort of every queued row: with 10,000 bulk
    # jobs waiting the single sort took 12 ms per claim and grew with the backlog.
    for priority in ("interactive", "bulk"):
        if len(picked) >= limit or (priority == "bulk" and interactive):
            break
        found = list(session.execute(
            lane_candidates(priority, limit - len(picked), now).where(Analysis.id != own_id)
        ).scalars())
        picked += found
        interactive = interactive or (priority == "interactive" and bool(found))
    if not picked:
        return []
    rows = session.execute(
        update(Analysis)
        .where(Analysis.id.in_(picked))
        .values(
            status=AnalysisStatus.processing.value,
            stage=FIRST_STAGE,
            attempt=Analysis.attempt + 1,
            not_before=None,
            claimed_by=worker_identity(),
            started_at=now,
            heartbeat_at=now,
            updated_at=now,
        )
        .returning(*CLAIM_COLUMNS)
        .execution_options(synchronize_session=False)
    ).all()
    return [Claim(*row) for row in rows]


def _fenced(claim: Claim) -> ColumnElement[bool]:
    return and_(
        Analysis.id == claim.analysis_id,
        Analysis.attempt == claim.attempt,
        Analysis.status == AnalysisStatus.processing.value,
    )


def set_stage(session: Session, claims: list[Claim], stage: str) -> None:
    """Move a pass's jobs to ``stage``: one statement for all of them (issue 27), each row
    fenced as ``_fenced`` fences one (its claim's attempt, still ``processing``)."""
    if not claims:
        return
    now = utcnow()
    session.execute(
        update(Analysis)
        .where(
            tuple_(Analysis.id, Analysis.attempt).in_([(c.analysis_id, c.attempt) for c in claims]),
            Analysis.status == AnalysisStatus.processing.value,
        )
        .values(stage=stage, heartbeat_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def finish(
    session: Session,
    celery: Celery | None,
    settings: Settings,
    claim: Claim,
    *,
    status: AnalysisStatus,
    model: dict | None = None,
    result: dict | None = None,
    rejection: dict | None = None,
    error: dict | None = None,
    mask_key: str | None = None,
    overlay_key: str | None = None,
) -> bool:
    """Record a final outcome for a claimed job; False when the claim was fenced off."""
    (done,) = finish_many(session, celery, settings, [FinalOutcome(claim, status, {
        "model": model, "result": result, "rejection": rejection, "error": error,
        "mask_key": mask_key, "overlay_key": overlay_key,
    })])
    return done


@dataclass(frozen=True)
class FinalOutcome:
    """A claimed job's final outcome: ``finish``'s arguments. ``context``: the one its
    follow-ups (its event's trace, its wake-ups' log ids) are made in, when not the caller's."""

    claim: Claim
    status: AnalysisStatus
    columns: Mapping[str, Any]  # model, result, rejection, error, mask_key, overlay_key (None: unset)
    context: contextvars.Context | None = None


# A pass's outcomes, one row each (``finish_many``); JSON columns as text.
_GIVEN = RowsParameter(
    "given", id=UUID(as_uuid=True), attempt=Integer(), status=String(), model=Text(), result=Text(),
    rejection=Text(), error=Text(), mask_key=String(), overlay_key=String(), probability=Float(),
)
_JSON_COLUMNS = ("model", "result", "rejection", "error")
_FINISH = (
    update(Analysis)
    .where(
        Analysis.id == _GIVEN["id"],
        Analysis.attempt == _GIVEN["attempt"],
        Analysis.status == AnalysisStatus.processing.value,
    )
    .values(
        status=_GIVEN["status"],
        stage=None,
        **{name: cast(_GIVEN[name], JSONB) for name in _JSON_COLUMNS},
        mask_key=_GIVEN["mask_key"],
        overlay_key=_GIVEN["overlay_key"],
        probability=_GIVEN["probability"],
        completed_at=bindparam("now"),
        heartbeat_at=None,
        updated_at=bindparam("now"),
        # The sweeper asks again for a report that has not appeared by then.
        report_requested_at=bindparam("now"),
    )
    .returning(Analysis)
    .execution_options(synchronize_session=False, populate_existing=True)
)


def finish_many(
    session: Session, celery: Celery | None, settings: Settings, outcomes: Sequence[FinalOutcome]
) -> list[bool]:
    """Record several claimed jobs' final outcomes, each fenced as ``finish`` fences one, in one
    UPDATE and one INSERT of their events whatever their number (issue 27: a pass's outcomes,
    before one UPDATE, one INSERT and one batch check per job); a batch is checked for
    completion once. Per outcome, True if written, False where its claim was fenced off."""
    if not outcomes:
        return []
    rows = []
    for outcome in outcomes:
        columns = outcome.columns
        result = columns.get("result")
        rows.append({
            "id": outcome.claim.analysis_id, "attempt": outcome.claim.attempt, "status": outcome.status.value,
            **{name: None if columns.get(name) is None else json.dumps(columns[name]) for name in _JSON_COLUMNS},
            "mask_key": columns.get("mask_key"), "overlay_key": columns.get("overlay_key"),
            # ``result`` is the stored JSON form (the worker serialises its typed AnalysisResult);
            # its probability is copied into the indexed column the triage list is ordered by.
            "probability": result["probability"] if result else None,
        })
    written = session.execute(_FINISH, {"now": utcnow(), **_GIVEN.parameters(rows)}).scalars().all()
    by_id = {analysis.id: analysis for analysis in written}
    finals = [(by_id[o.claim.analysis_id], o.context) for o in outcomes if o.claim.analysis_id in by_id]
    on_final_many(session, celery, settings, finals)
    return [outcome.claim.analysis_id in by_id for outcome in outcomes]


def requeue(session: Session, celery: Celery | None, analysis: Analysis) -> None:
    analysis.enqueued_at = utcnow()
    if celery is not None:
        after_commit(session, lambda: enqueue_analysis(celery, analysis.id, analysis.priority))


def transient_delay(settings: Settings, retries: int) -> float:
    """Backoff before the ``retries``-th try after infrastructure errors: doubling from
    ``TRANSIENT_BACKOFF_SECONDS`` up to ``TRANSIENT_BACKOFF_MAX_SECONDS``, +-20% jitter so
    a released batch does not come back as one herd."""
    base = min(settings.transient_backoff_seconds * 2 ** max(retries - 1, 0), settings.transient_backoff_max_seconds)
    return base * random.uniform(0.8, 1.2)


def release_claim(
    session: Session,
    celery: Celery | None,
    settings: Settings,
    claim: Claim,
    *,
    reason: str,
    transient: bool = False,
    backoff: bool = True,
) -> str | None:
    """Give a claimed job back after an error. An infrastructure error (``transient``) does
    not spend the job's attempt: the job waits out a backoff and the sweeper wakes it
    (``backoff=False``: woken at once, for a job whose worker hung, since another worker is
    there to take it). An error the job may have caused re-queues it at once, or fails it
    once it has used ``MAX_ATTEMPTS``. Returns the new status, or None when the claim was
    fenced off."""
    retries = session.execute(
        select(Analysis.transient_retries).where(_fenced(claim)).with_for_update()
    ).scalar_one_or_none()
    if retries is None:
        return None
    now = utcnow()
    if transient and retries < settings.max_transient_retries:
        released = session.execute(
            update(Analysis)
            .where(_fenced(claim))
            .values(
                status=AnalysisStatus.queued.value,
                stage=None,
                heartbeat_at=None,
                transient_retries=retries + 1,
                not_before=now + timedelta(seconds=transient_delay(settings, retries + 1)) if backoff else None,
                enqueued_at=now,
                updated_at=now,
            )
            .returning(Analysis)
            .execution_options(synchronize_session=False, populate_existing=True)
        ).scalar_one()
        if not backoff:
            requeue(session, celery, released)
        return AnalysisStatus.queued.value
    spent = claim.attempt - retries
    if transient or spent >= settings.max_attempts:
        detail = (
            f"gave up after {retries} retries over infrastructure errors; last error: {reason}"
            if transient
            else f"gave up after {spent} attempts; last error: {reason}"
        )
        failed = finish(
            session, celery, settings, claim, status=AnalysisStatus.failed,
            error={"code": "attempts_exhausted", "detail": detail},
        )
        return AnalysisStatus.failed.value if failed else None
    analysis = session.execute(
        update(Analysis)
        .where(_fenced(claim))
        .values(status=AnalysisStatus.queued.value, stage=None, heartbeat_at=None, updated_at=now)
        .returning(Analysis)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).scalar_one_or_none()
    if analysis is None:
        return None
    requeue(session, celery, analysis)
    return AnalysisStatus.queued.value
