"""Analysis state transitions and views: every status change goes through here.

An attempt counter fences workers: a worker claims a job by moving it to ``processing``
and bumping ``attempt``; it may only record an outcome while the row still has that
attempt and status. A worker that lost its job (swept, canceled, re-claimed) writes nothing.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from celery import Celery
from sqlalchemy import and_, func, literal_column, or_, select, update
from sqlalchemy.orm import Session

from shared import clinical
from shared.config import Settings, get_settings
from shared.db import after_commit
from shared.events import record_event
from shared.jobs import enqueue_analysis, enqueue_report, send, worker_identity
from shared.models import ACTIVE_STATUSES, Analysis, AnalysisStatus, Batch
from shared.queues import Queue, TaskName
from shared.storage import ARTIFACTS, IMAGES, ObjectStore

ACTIVE = [s.value for s in ACTIVE_STATUSES]

# Why a canceled job was canceled (``cancel_reason``, and ``reason`` in analysis.canceled).
CANCEL_REQUESTED = "requested"
CANCEL_BATCH = "batch_canceled"
CANCEL_EXPIRED = "expired"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


# ---------------------------------------------------------------- views


def api_base(settings: Settings) -> str:
    return (settings.public_url or settings.api_url).rstrip("/")


def links(settings: Settings, analysis_id: uuid.UUID) -> dict:
    base = f"{api_base(settings)}/v1/analyses/{analysis_id}"
    return {"self": base, "report": f"{base}/report.pdf", "fhir": f"{base}/fhir"}


def inputs_view(analysis: Analysis) -> dict:
    return {
        "age": analysis.age,
        "sex": analysis.sex,
        "site": analysis.site,
        "pixel_spacing_mm": analysis.pixel_spacing_mm,
    }


def analysis_record(analysis: Analysis) -> dict:
    """The analysis as plain data: what reports, FHIR and exports are built from."""
    return {
        "id": str(analysis.id),
        "external_id": analysis.external_id,
        "batch_id": str(analysis.batch_id) if analysis.batch_id else None,
        "status": analysis.status,
        "stage": analysis.stage,
        "priority": analysis.priority,
        "attempt": analysis.attempt,
        "created_at": iso(analysis.created_at),
        "started_at": iso(analysis.started_at),
        "completed_at": iso(analysis.completed_at),
        "inputs": inputs_view(analysis),
        "image": {
            "content_type": analysis.image_content_type,
            "width": analysis.image_width,
            "height": analysis.image_height,
            "sha256": analysis.image_sha256,
        },
        "result": _result_view(analysis.result),
        "rejection": _with_advice(analysis.rejection, clinical.retake_advice(_code(analysis.rejection))),
        "error": _with_advice(analysis.error, clinical.FAILED_ADVICE),
        "model": _model_view(analysis.model),
        # Beside the result, so that views without the provenance (lists) still say it.
        "weights": clinical.weights_status(analysis.model),
        "deadline_at": iso(analysis.deadline_at),
        "cancel_reason": analysis.cancel_reason,
    }


def _code(outcome: dict | None) -> str | None:
    return (outcome or {}).get("code")


def _with_advice(outcome: dict | None, advice: str) -> dict | None:
    """A rejection or error with ``advice``: what to do about it (shared.clinical's wording)."""
    return {**outcome, "advice": advice} if outcome else outcome


def _result_view(result: dict | None) -> dict | None:
    if not result or "uncertainty" not in result:
        return result
    return {**result, "uncertainty_level": clinical.uncertainty_level(result["uncertainty"])}


def _model_view(model: dict | None) -> dict | None:
    """Provenance plus ``banner``: what to show above output from weights that are not
    trained (None for trained weights)."""
    if not model:
        return model
    return {**model, "banner": clinical.weights_banner(model.get("weights") or clinical.UNKNOWN_WEIGHTS)}


def image_stored(analysis: Analysis) -> bool:
    """False while a direct upload waits for its ingest, and for one that ingest refused:
    the object under ``image_key`` is then the raw upload, never shown to anyone."""
    return bool(analysis.image_sha256)


def artifact_links(store: ObjectStore, analysis: Analysis) -> dict:
    """Presigned links that expire within the configured TTL (at most 15 minutes)."""
    artifacts = {"image": store.presigned_get(IMAGES, analysis.image_key)} if image_stored(analysis) else {}
    if analysis.mask_key:
        artifacts["mask"] = store.presigned_get(ARTIFACTS, analysis.mask_key)
    if analysis.overlay_key:
        artifacts["overlay"] = store.presigned_get(ARTIFACTS, analysis.overlay_key)
    artifacts["expires_at"] = iso(utcnow() + timedelta(seconds=store.settings.presign_ttl_seconds))
    return artifacts


def event_data(settings: Settings, analysis: Analysis) -> dict:
    """Webhook payload: ids, status, the client's reference, a summary and links.
    Never image bytes, never free text about the patient."""
    data = {
        "id": str(analysis.id),
        "status": analysis.status,
        "external_id": analysis.external_id,
        "batch_id": str(analysis.batch_id) if analysis.batch_id else None,
        "links": links(settings, analysis.id),
    }
    if analysis.result:
        data["result"] = {
            "diagnosis": analysis.result["diagnosis"],
            "probability": analysis.result["probability"],
            "uncertainty": analysis.result["uncertainty"],
            "risk_band": analysis.result["risk_band"],
        }
    if analysis.model:
        data["weights"] = analysis.model.get("weights")
    if analysis.rejection:
        code = analysis.rejection["code"]
        data["rejection"] = {"code": code, "advice": clinical.retake_advice(code)}
    if analysis.error:
        data["error"] = {"code": analysis.error["code"]}
    if analysis.cancel_reason:
        data["reason"] = analysis.cancel_reason
    return data


# ---------------------------------------------------------------- claims and outcomes


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
)


def claimable(now: datetime):
    """Queued, due, ingested, and not past its deadline."""
    return and_(
        Analysis.status == AnalysisStatus.queued.value,
        # Jobs given back after an infrastructure error wait out their backoff.
        or_(Analysis.not_before.is_(None), Analysis.not_before <= now),
        # A direct upload is claimable once ingest has checked and stored its image.
        Analysis.ingest_requested_at.is_(None),
        or_(Analysis.deadline_at.is_(None), Analysis.deadline_at > now),
    )


def lane_candidates(priority: str, limit: int, now: datetime):
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


def claim_batch(
    session: Session,
    own_id: uuid.UUID,
    limit: int,
    *,
    celery: Celery | None = None,
    settings: Settings | None = None,
) -> list[Claim]:
    """Claim the message's own job (if still queued) plus the most urgent other queued
    jobs, so one GPU pass serves several: interactive before bulk, oldest first. The own
    job, if past its deadline, ends ``canceled`` (``expired``) here instead of running;
    other expired jobs are skipped and left to the sweeper."""
    now = utcnow()
    expire_due(session, celery, settings, now, only=own_id)
    picked = list(
        session.execute(
            select(Analysis.id).where(Analysis.id == own_id, claimable(now)).with_for_update(skip_locked=True)
        ).scalars()
    )
    # One ordered query per lane instead of one sort of every queued row: with 10,000 bulk
    # jobs waiting the single sort took 12 ms per claim and grew with the backlog.
    for priority in ("interactive", "bulk"):
        if len(picked) >= limit:
            break
        picked += session.execute(
            lane_candidates(priority, limit - len(picked), now).where(Analysis.id != own_id)
        ).scalars()
    if not picked:
        return []
    rows = session.execute(
        update(Analysis)
        .where(Analysis.id.in_(picked))
        .values(
            status=AnalysisStatus.processing.value,
            stage="segmentation",
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


def _fenced(claim: Claim):
    return and_(
        Analysis.id == claim.analysis_id,
        Analysis.attempt == claim.attempt,
        Analysis.status == AnalysisStatus.processing.value,
    )


def set_stage(session: Session, claims: list[Claim], stage: str) -> None:
    now = utcnow()
    for claim in claims:
        session.execute(
            update(Analysis)
            .where(_fenced(claim))
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
    now = utcnow()
    analysis = session.execute(
        update(Analysis)
        .where(_fenced(claim))
        .values(
            status=status.value,
            stage=None,
            model=model,
            result=result,
            rejection=rejection,
            error=error,
            probability=result["probability"] if result else None,
            mask_key=mask_key,
            overlay_key=overlay_key,
            completed_at=now,
            heartbeat_at=None,
            updated_at=now,
            # The sweeper asks again for a report that has not appeared by then.
            report_requested_at=now,
        )
        .returning(Analysis)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).scalar_one_or_none()
    if analysis is None:
        return False
    _on_final(session, celery, settings, analysis)
    return True


def _on_final(session: Session, celery: Celery | None, settings: Settings, analysis: Analysis) -> None:
    record_event(
        session,
        celery,
        tenant_id=analysis.tenant_id,
        type=f"analysis.{analysis.status}",
        data=event_data(settings, analysis),
        dedupe_key=f"analysis.{analysis.status}:{analysis.id}",
    )
    if analysis.status != AnalysisStatus.canceled.value and celery is not None:
        after_commit(session, lambda: enqueue_report(celery, analysis.id))
    if analysis.batch_id is not None:
        complete_batch_if_done(session, celery, settings, analysis.batch_id)


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
        _on_final(session, celery, settings, analysis)
    return analysis


def _cancel_where(session: Session, celery: Celery | None, settings: Settings | None, reason: str, *conditions,
                  limit: int | None = None) -> list[Analysis]:
    """Cancel every unfinished job matching ``conditions`` in one statement; one
    ``analysis.canceled`` event each (deduplicated, so a second run emits nothing), and
    each affected batch checked for completion once."""
    now = utcnow()
    picked = select(Analysis.id).where(Analysis.status.in_(ACTIVE), *conditions)
    if limit is not None:
        picked = picked.limit(limit)
    picked = picked.with_for_update(skip_locked=True).cte("picked")
    rows = list(
        session.execute(
            update(Analysis)
            .where(Analysis.id.in_(select(picked.c.id)), Analysis.status.in_(ACTIVE))
            .values(**_canceled_values(now, reason))
            .returning(Analysis)
            .execution_options(synchronize_session=False, populate_existing=True)
        ).scalars()
    )
    if rows and settings is None:
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
    canceled = _cancel_where(session, celery, settings, CANCEL_BATCH, Analysis.batch_id == batch.id)
    if not canceled:
        complete_batch_if_done(session, celery, settings, batch.id)
    return canceled


# ---------------------------------------------------------------- direct uploads: ingest


def enqueue_ingest(celery: Celery, analysis_id: uuid.UUID) -> None:
    send(celery, TaskName.ingest_upload, Queue.ingest, str(analysis_id))


def request_ingest(session: Session, celery: Celery | None, analysis_id: uuid.UUID) -> None:
    if celery is not None:
        after_commit(session, lambda: enqueue_ingest(celery, analysis_id))


@dataclass(frozen=True)
class PendingIngest:
    analysis_id: uuid.UUID
    tenant_id: uuid.UUID
    upload_key: str
    priority: str


def pending_ingest(session: Session, analysis_id: uuid.UUID) -> PendingIngest | None:
    row = session.execute(
        select(Analysis.id, Analysis.tenant_id, Analysis.image_key, Analysis.priority).where(
            Analysis.id == analysis_id,
            Analysis.status == AnalysisStatus.queued.value,
            Analysis.ingest_requested_at.is_not(None),
        )
    ).one_or_none()
    return PendingIngest(*row) if row else None


def abandoned_upload_key(session: Session, analysis_id: uuid.UUID) -> str | None:
    """The raw upload of a job canceled before its ingest ran (its object is not needed)."""
    return session.execute(
        select(Analysis.image_key).where(
            Analysis.id == analysis_id,
            Analysis.status == AnalysisStatus.canceled.value,
            Analysis.upload_id.is_not(None),
            Analysis.image_sha256 == "",
        )
    ).scalar_one_or_none()


def _awaiting_ingest(analysis_id: uuid.UUID) -> tuple:
    """The row is still queued for its ingest: no other ingest or cancel got there first."""
    return (
        Analysis.id == analysis_id,
        Analysis.status == AnalysisStatus.queued.value,
        Analysis.ingest_requested_at.is_not(None),
    )


def ingested(
    session: Session,
    celery: Celery | None,
    pending: PendingIngest,
    *,
    image_key: str,
    sha256: str,
    content_type: str,
    width: int,
    height: int,
) -> bool:
    """The cleaned image is stored: the job becomes claimable and its lane is woken.
    False when someone else got there first (another ingest, a cancel)."""
    now = utcnow()
    analysis = session.execute(
        update(Analysis)
        .where(*_awaiting_ingest(pending.analysis_id))
        .values(
            image_key=image_key, image_sha256=sha256, image_content_type=content_type,
            image_width=width, image_height=height, ingest_requested_at=None,
            enqueued_at=now, updated_at=now,
        )
        .returning(Analysis.id, Analysis.priority)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if analysis is None:
        return False
    if celery is not None:
        after_commit(session, lambda: enqueue_analysis(celery, analysis.id, analysis.priority))
    return True


def ingest_rejected(
    session: Session, celery: Celery | None, settings: Settings, pending: PendingIngest, code: str, detail: str
) -> bool:
    """The upload is not an image the API would have taken: the job ends ``rejected`` with
    the API's answer as the rejection. No report: there is no image to report on."""
    now = utcnow()
    analysis = session.execute(
        update(Analysis)
        .where(*_awaiting_ingest(pending.analysis_id))
        .values(
            status=AnalysisStatus.rejected.value, stage=None, ingest_requested_at=None,
            rejection={"code": code, "detail": detail, "at": "ingest"},
            completed_at=now, updated_at=now,
        )
        .returning(Analysis)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).scalar_one_or_none()
    if analysis is None:
        return False
    record_event(
        session,
        celery,
        tenant_id=analysis.tenant_id,
        type="analysis.rejected",
        data=event_data(settings, analysis),
        dedupe_key=f"analysis.rejected:{analysis.id}",
    )
    if analysis.batch_id is not None:
        complete_batch_if_done(session, celery, settings, analysis.batch_id)
    return True


def missing_ingests(session: Session, requested_before: datetime, limit: int) -> list[uuid.UUID]:
    """Direct uploads whose ingest was asked for before ``requested_before`` and has not
    happened (wake-up lost, worker died); marks them asked for again now."""
    return _ask_again(session, "ingest_requested_at", requested_before, limit)


def _ask_again(session: Session, column: str, requested_before: datetime, limit: int) -> list[uuid.UUID]:
    """Ids of up to ``limit`` rows whose ``column`` (a time something was asked for) is set and
    before ``requested_before``, oldest first, locked (skipping locked rows); sets it to now."""
    requested_at = getattr(Analysis, column)
    ids = list(
        session.execute(
            select(Analysis.id)
            .where(requested_at.is_not(None), requested_at < requested_before)
            .order_by(requested_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if ids:
        session.execute(
            update(Analysis)
            .where(Analysis.id.in_(ids))
            .values({column: utcnow()})
            .execution_options(synchronize_session=False)
        )
    return ids


# ---------------------------------------------------------------- batches


def batch_counts(session: Session, batch_id: uuid.UUID) -> dict[str, int]:
    """Counts per status from the (batch_id, status) index: no scan of the tenant's rows."""
    rows = session.execute(
        select(Analysis.status, func.count())
        .where(Analysis.batch_id == batch_id)
        .group_by(Analysis.status)
    ).all()
    counts = {s.value: 0 for s in AnalysisStatus}
    counts.update({status: n for status, n in rows})
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
    status = Analysis.model["weights"].as_string().label("weights_status")
    weights: dict[str | None, int] = dict(
        session.execute(
            select(status, func.count())
            .where(Analysis.batch_id == batch_id, Analysis.status == AnalysisStatus.succeeded.value)
            .group_by(literal_column(status.name))  # by the output column: one copy of the expression
        ).all()
    )
    record_event(
        session,
        celery,
        tenant_id=batch.tenant_id,
        type="batch.completed",
        data={
            "id": str(batch.id),
            "name": batch.name,
            "external_id": batch.external_id,
            "counts": counts,
            **clinical.weights_summary(weights),
            "links": {
                "self": f"{api_base(settings)}/v1/batches/{batch.id}",
                "results": f"{api_base(settings)}/v1/batches/{batch.id}/results?order=risk",
            },
        },
        dedupe_key=f"batch.completed:{batch.id}",
    )
    return True


# ---------------------------------------------------------------- sweeper


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
) -> str | None:
    """Give a claimed job back after an error. An infrastructure error (``transient``) does
    not spend the job's attempt: the job waits out a backoff and the sweeper wakes it. An
    error the job may have caused re-queues it at once, or fails it once it has used
    ``MAX_ATTEMPTS``. Returns the new status, or None when the claim was fenced off."""
    retries = session.execute(
        select(Analysis.transient_retries).where(_fenced(claim)).with_for_update()
    ).scalar_one_or_none()
    if retries is None:
        return None
    now = utcnow()
    if transient and retries < settings.max_transient_retries:
        session.execute(
            update(Analysis)
            .where(_fenced(claim))
            .values(
                status=AnalysisStatus.queued.value,
                stage=None,
                heartbeat_at=None,
                transient_retries=retries + 1,
                not_before=now + timedelta(seconds=transient_delay(settings, retries + 1)),
                enqueued_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
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


def stale_claims(session: Session, heartbeat_before: datetime, limit: int = 500) -> list[Claim]:
    rows = session.execute(
        select(*CLAIM_COLUMNS)
        .where(Analysis.status == AnalysisStatus.processing.value, Analysis.heartbeat_at < heartbeat_before)
        .limit(limit)
    ).all()
    return [Claim(*row) for row in rows]


def orphaned_claims(
    session: Session, live_workers: list[str], heartbeat_before: datetime, limit: int = 500
) -> list[Claim]:
    """Jobs held by a worker process that no longer reports in (killed, OOM, host gone):
    found in seconds instead of after ``STUCK_AFTER_SECONDS``."""
    rows = session.execute(
        select(*CLAIM_COLUMNS)
        .where(
            Analysis.status == AnalysisStatus.processing.value,
            Analysis.claimed_by.is_not(None),
            Analysis.claimed_by.notin_(live_workers) if live_workers else Analysis.claimed_by.is_not(None),
            Analysis.heartbeat_at < heartbeat_before,
        )
        .limit(limit)
    ).all()
    return [Claim(*row) for row in rows]


def due_retries(session: Session, now: datetime, limit: int) -> list[Analysis]:
    """Jobs whose backoff after an infrastructure error has ended and that nobody woke yet."""
    return list(
        session.execute(
            select(Analysis)
            .where(
                Analysis.status == AnalysisStatus.queued.value,
                Analysis.not_before.is_not(None),
                Analysis.not_before <= now,
                Analysis.enqueued_at < Analysis.not_before,
            )
            .order_by(Analysis.not_before)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )


def missing_reports(session: Session, requested_before: datetime, limit: int) -> list[uuid.UUID]:
    """Final analyses whose report was asked for before ``requested_before`` and has not
    appeared (its wake-up was lost, or its worker died); marks them asked for again now."""
    return _ask_again(session, "report_requested_at", requested_before, limit)


def report_settled(session: Session, analysis_id: uuid.UUID) -> None:
    """The report exists (or is not needed): the sweeper stops asking for it."""
    session.execute(
        update(Analysis)
        .where(Analysis.id == analysis_id, Analysis.report_requested_at.is_not(None))
        .values(report_requested_at=None)
        .execution_options(synchronize_session=False)
    )


def waiting_since(session: Session, priority: str, enqueued_before: datetime, limit: int) -> list[Analysis]:
    now = utcnow()
    return list(
        session.execute(
            select(Analysis)
            .where(
                claimable(now),
                Analysis.priority == priority,
                Analysis.enqueued_at < enqueued_before,
            )
            .order_by(Analysis.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )


def unfinished_sealed_batches(session: Session, limit: int = 100) -> list[uuid.UUID]:
    return list(
        session.execute(
            select(Batch.id).where(Batch.sealed_at.is_not(None), Batch.completed_at.is_(None)).limit(limit)
        ).scalars()
    )
