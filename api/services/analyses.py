"""Analyses: submission, lookup, listing, cancel, feedback. All SQL for the route lives here."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import TenantId, TenantRef
from api.capacity import Capacity
from api.deps import UNCOMMITTED_IMAGES, in_session
from api.multipart import CleanImage
from api.pagination import newest_first
from api.problems import BadRequest, BatchSealed, Conflict, NotReady
from api.services import uploads, webhook_endpoints
from api.services.owned import get_owned
from shared import lifecycle
from shared.clock import utcnow
from shared.context import AppContext
from shared.db import after_commit
from shared.jobs import enqueue_analysis
from shared.schemas import AnalysisInputs, FeedbackIn
from shared.storage import IMAGES, image_key
from shared.tables import (
    ACTIVE_STATUSES,
    Analysis,
    AnalysisStatus,
    Batch,
    Feedback,
    Report,
    WebhookEndpoint,
)
from shared.tracing import current_traceparent


@dataclass(frozen=True)
class RequestWebhook:
    """A per-request webhook: ``url`` already passed the SSRF check (``checked_url``)."""

    url: str
    events: tuple[str, ...] = ()

    def fingerprint_fields(self) -> dict[str, Any]:
        return {"webhook_url": self.url, "webhook_events_filter": sorted(set(self.events))}


@dataclass
class Submitted:
    analysis: Analysis
    replayed: bool
    webhook: WebhookEndpoint | None = None


def fingerprint(image: CleanImage, inputs: AnalysisInputs, webhook: RequestWebhook | None = None) -> str:
    # Without a webhook the text is what it always was, so keys stored before still replay.
    canonical = json.dumps(
        {"image": image.original_sha256, **inputs.fingerprint_fields(),
         **(webhook.fingerprint_fields() if webhook else {})},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _with_webhook(
    context: AppContext, session: Session, tenant: TenantRef, submitted: Submitted, webhook: RequestWebhook | None
) -> Submitted:
    """A new submission gets its webhook endpoint; a replay finds the one it made (never a second)."""
    if submitted.replayed:
        submitted.webhook = webhook_endpoints.for_analysis(session, submitted.analysis.id)
    elif webhook is not None:
        submitted.webhook = webhook_endpoints.create_for_analysis(
            context, session, tenant, submitted.analysis.id, webhook.url, list(webhook.events)
        )
    return submitted


def _find_by_idempotency_key(session: Session, tenant: TenantRef, key: str) -> Analysis | None:
    return session.execute(
        select(Analysis).where(Analysis.tenant_id == tenant.id, Analysis.idempotency_key == key)
    ).scalar_one_or_none()


def _replay_or_conflict(existing: Analysis, request_fingerprint: str) -> Submitted:
    if existing.request_fingerprint != request_fingerprint:
        raise Conflict(
            "this Idempotency-Key was already used with a different request; use a new key for a new image"
        )
    return Submitted(existing, replayed=True)


def _check_batch(session: Session, tenant: TenantRef, batch_id: uuid.UUID | None) -> Batch | None:
    if batch_id is None:
        return None
    batch = session.execute(
        select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant.id)
    ).scalar_one_or_none()
    if batch is None:
        raise BadRequest(f"no batch with id {batch_id}")
    if batch.sealed_at is not None:
        raise BatchSealed(f"batch {batch_id} is sealed and takes no new items; create a new batch")
    return batch


def deadline_for(now: datetime, cancel_after: float | None, batch: Batch | None) -> datetime | None:
    """The job's own deadline (``Cancel-After``) or its batch's, whichever comes first."""
    deadlines = [now + timedelta(seconds=cancel_after)] if cancel_after is not None else []
    if batch is not None and batch.deadline_at is not None:
        deadlines.append(batch.deadline_at)
    return min(deadlines) if deadlines else None


def _idempotent_replay(
    session: Session, tenant: TenantRef, key: str | None, request_fingerprint: str, now: datetime
) -> Submitted | None:
    if not key:
        return None
    existing = _find_by_idempotency_key(session, tenant, key)
    if existing is None:
        return None
    if existing.idempotency_expires_at and existing.idempotency_expires_at < now:
        existing.idempotency_key = None
        session.flush()
        return None
    return _replay_or_conflict(existing, request_fingerprint)


def _new_analysis(
    context: AppContext,
    tenant: TenantRef,
    inputs: AnalysisInputs,
    analysis_id: uuid.UUID,
    priority: str,
    idempotency_key: str | None,
    request_fingerprint: str,
    now: datetime,
    deadline_at: datetime | None,
    **image_fields: Any,
) -> Analysis:
    """A new ``queued`` row from the request's inputs; ``image_fields`` say where its image is."""
    return Analysis(
        id=analysis_id,
        tenant_id=tenant.id,
        batch_id=inputs.batch_id,
        external_id=inputs.external_id,
        priority=priority,
        status="queued",
        attempt=0,
        age=inputs.age,
        sex=inputs.sex,
        site=inputs.site,
        pixel_spacing_mm=inputs.pixel_spacing_mm,
        patient_reference=inputs.patient_reference,
        encounter_reference=inputs.encounter_reference,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
        idempotency_expires_at=now + timedelta(hours=context.settings.idempotency_ttl_hours)
        if idempotency_key
        else None,
        created_at=now,
        updated_at=now,
        deadline_at=deadline_at,
        traceparent=current_traceparent(),  # the request's trace, continued by workers and deliveries (issue 25)
        **image_fields,
    )


def _race_winner(
    session: Session, tenant: TenantRef, idempotency_key: str | None, request_fingerprint: str
) -> Submitted:
    """After an IntegrityError (rolled back): a concurrent request with the same
    Idempotency-Key won the race; replay its row. Call it inside the ``except`` block: with no
    such row, the bare ``raise`` re-raises the error being handled."""
    existing = _find_by_idempotency_key(session, tenant, idempotency_key or "")
    if existing is None:
        raise
    return _replay_or_conflict(existing, request_fingerprint)


def submit(
    context: AppContext,
    session: Session,
    tenant: TenantRef,
    image: CleanImage,
    inputs: AnalysisInputs,
    idempotency_key: str | None,
    *,
    cancel_after: float | None = None,
    webhook: RequestWebhook | None = None,
) -> Submitted:
    """Store the image, commit the row, and enqueue the job only after the commit."""
    request_fingerprint = fingerprint(image, inputs, webhook)
    now = utcnow()
    replay = _idempotent_replay(session, tenant, idempotency_key, request_fingerprint, now)
    if replay is not None:
        return _with_webhook(context, session, tenant, replay, webhook)
    batch = _check_batch(session, tenant, inputs.batch_id)
    priority = "bulk" if inputs.batch_id is not None else inputs.priority

    analysis_id = uuid.uuid4()
    key = image_key(tenant.id, analysis_id, image.extension)
    analysis = _new_analysis(
        context, tenant, inputs, analysis_id, priority, idempotency_key, request_fingerprint, now,
        deadline_for(now, cancel_after, batch),
        image_key=key,
        image_sha256=image.original_sha256,
        image_content_type=image.content_type,
        image_width=image.width,
        image_height=image.height,
        enqueued_at=now,
        dicom_source=image.dicom.source.model_dump(mode="json") if image.dicom is not None else None,
    )
    context.store.put(IMAGES, key, image.data, image.content_type)
    try:
        session.add(analysis)
        session.flush()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the race.
        session.rollback()
        context.store.delete(IMAGES, key)
        return _with_webhook(
            context, session, tenant, _race_winner(session, tenant, idempotency_key, request_fingerprint), webhook
        )
    except BaseException:
        context.store.delete(IMAGES, key)
        raise
    session.info.setdefault(UNCOMMITTED_IMAGES, []).append(key)
    submitted = _with_webhook(context, session, tenant, Submitted(analysis, replayed=False), webhook)
    after_commit(session, lambda: enqueue_analysis(context.celery, analysis_id, priority))
    return submitted


def submit_upload(
    context: AppContext,
    session: Session,
    tenant: TenantRef,
    upload_id: uuid.UUID,
    inputs: AnalysisInputs,
    idempotency_key: str | None,
    *,
    cancel_after: float | None = None,
    webhook: RequestWebhook | None = None,
    known_sizes: Mapping[str, int | None] | None = None,
) -> Submitted:
    """Take a direct upload in place of the file: the row is ``queued`` but not claimable
    until the ingest worker has checked, cleaned and stored the image exactly as the API
    would have (shared.images); ingest is woken after the commit, and re-sent by the sweeper.
    ``known_sizes``: the store's object sizes when already asked (``uploads.claim_for_analysis``)."""
    canonical = json.dumps(
        {"upload_id": str(upload_id), **inputs.fingerprint_fields(),
         **(webhook.fingerprint_fields() if webhook else {})},
        sort_keys=True,
    )
    request_fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
    now = utcnow()
    replay = _idempotent_replay(session, tenant, idempotency_key, request_fingerprint, now)
    if replay is not None:
        return _with_webhook(context, session, tenant, replay, webhook)
    batch = _check_batch(session, tenant, inputs.batch_id)
    priority = "bulk" if inputs.batch_id is not None else inputs.priority
    analysis_id = uuid.uuid4()
    upload = uploads.claim_for_analysis(context, session, tenant, upload_id, analysis_id, known_sizes)
    analysis = _new_analysis(
        context, tenant, inputs, analysis_id, priority, idempotency_key, request_fingerprint, now,
        deadline_for(now, cancel_after, batch),
        # Until ingest: the raw upload, its declared type, and no size or hash.
        image_key=upload.object_key,
        image_sha256="",
        image_content_type=upload.content_type,
        image_width=0,
        image_height=0,
        upload_id=upload.id,
        ingest_requested_at=now,
    )
    try:
        session.add(analysis)
        session.flush()
    except IntegrityError:
        session.rollback()
        return _with_webhook(
            context, session, tenant, _race_winner(session, tenant, idempotency_key, request_fingerprint), webhook
        )
    submitted = _with_webhook(context, session, tenant, Submitted(analysis, replayed=False), webhook)
    lifecycle.request_ingest(session, context.celery, analysis_id)
    return submitted


def get(session: Session, tenant: TenantRef, analysis_id: uuid.UUID) -> Analysis:
    return get_owned(session, Analysis, analysis_id, tenant, "analysis")


def list_page(
    session: Session,
    tenant: TenantRef,
    *,
    limit: int,
    cursor: str | None,
    status: str | None,
    batch_id: uuid.UUID | None,
    external_id: str | None,
) -> tuple[list[Analysis], str | None]:
    query = select(Analysis).where(Analysis.tenant_id == tenant.id)
    if status:
        query = query.where(Analysis.status == status)
    if batch_id:
        query = query.where(Analysis.batch_id == batch_id)
    if external_id:
        query = query.where(Analysis.external_id == external_id)
    return newest_first(session, query, Analysis, limit=limit, cursor=cursor)


def cancel(context: AppContext, session: Session, tenant: TenantRef, analysis_id: uuid.UUID) -> Analysis:
    analysis = get(session, tenant, analysis_id)
    canceled = lifecycle.cancel(session, context.celery, context.settings, analysis.id)
    if canceled is None:
        session.refresh(analysis)
        raise Conflict(f"analysis {analysis_id} is already {analysis.status} and cannot be canceled")
    return canceled


def add_feedback(session: Session, tenant: TenantRef, analysis_id: uuid.UUID, body: FeedbackIn) -> Feedback:
    analysis = get(session, tenant, analysis_id)
    if analysis.status != "succeeded":
        raise Conflict(f"feedback is for succeeded analyses; this one is {analysis.status}")
    feedback = Feedback(analysis_id=analysis.id, tenant_id=tenant.id, **body.model_dump())
    session.add(feedback)
    session.flush()
    return feedback


def feedback_for(session: Session, analysis_id: uuid.UUID) -> list[Feedback]:
    return list(
        session.execute(
            select(Feedback).where(Feedback.analysis_id == analysis_id).order_by(Feedback.created_at)
        ).scalars()
    )


def report_for(session: Session, analysis_id: uuid.UUID) -> Report | None:
    return session.get(Report, analysis_id)


def ready_report(session: Session, tenant: TenantRef, analysis_id: uuid.UUID) -> tuple[Analysis, Report]:
    """The analysis and its report; 409 while there is none (with ``Retry-After`` while one
    will come), 404 for an id the tenant does not own. What every report-shaped read waits
    for: the PDF, FHIR, and the DICOM objects."""
    analysis = get(session, tenant, analysis_id)
    report = report_for(session, analysis.id)
    if report is None:
        if analysis.status == "canceled":
            raise NotReady("canceled analyses have no report")
        if analysis.status == "rejected" and not lifecycle.image_stored(analysis):
            raise NotReady("the upload was refused before analysis (see rejection); there is no report")
        raise NotReady(
            f"the report is not ready yet (analysis is {analysis.status}); retry shortly",
            headers={"Retry-After": "2"},
        )
    return analysis, report


# ---------------------------------------------------------------- Prefer: wait=N

FINAL_STATUSES = frozenset(s.value for s in AnalysisStatus) - frozenset(s.value for s in ACTIVE_STATUSES)
FIRST_POLL_S, MAX_POLL_S = 0.1, 1.0


def status_of(session: Session, tenant: TenantRef, analysis_id: uuid.UUID) -> str | None:
    return session.execute(
        select(Analysis.status).where(Analysis.id == analysis_id, Analysis.tenant_id == tenant.id)
    ).scalar_one_or_none()


async def wait_until_final(
    capacity: Capacity,
    context: AppContext,
    tenant_id: uuid.UUID,
    analysis_id: uuid.UUID,
    seconds: float,
    gone: Callable[[], Awaitable[bool]] | None = None,
) -> bool:
    """Whether the analysis became final within ``seconds``. Postgres is the truth, so it is
    asked: one primary-key read per poll, each in its own short session through the tenant's
    fair database slots (no connection, request place or upload slot is held in between),
    polling at 0.1 s, then doubling to at most once a second. Stops early when the client
    has gone (``gone``)."""
    deadline = time.monotonic() + seconds
    delay = FIRST_POLL_S
    tenant = TenantId(tenant_id)
    while True:
        status = await in_session(capacity, context, tenant_id, status_of, tenant, analysis_id)
        if status in FINAL_STATUSES:
            return True
        left = deadline - time.monotonic()
        if left <= 0 or (gone is not None and await gone()):
            return False
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, MAX_POLL_S)
