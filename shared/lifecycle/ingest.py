"""Direct uploads on their way in: asking for an ingest, and recording what it found.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.config import Settings
from shared.db import after_commit
from shared.dicom.reading import DicomInput, PatientContext
from shared.events import record_event
from shared.jobs import enqueue_analysis, send
from shared.lifecycle.batches import complete_batch_if_done
from shared.lifecycle.sweeps import ask_again
from shared.lifecycle.views import event_data
from shared.queues import Queue, TaskName
from shared.tables import Analysis, AnalysisStatus


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
    content_type: str
    """What the client declared for the upload (``image/jpeg``, ``image/png``, ``application/dicom``)."""


def pending_ingest(session: Session, analysis_id: uuid.UUID) -> PendingIngest | None:
    row = session.execute(
        select(
            Analysis.id, Analysis.tenant_id, Analysis.image_key, Analysis.priority, Analysis.image_content_type
        ).where(
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
    dicom: DicomInput | None = None,
) -> bool:
    """The cleaned image is stored: the job becomes claimable and its lane is woken.
    False when someone else got there first (another ingest, a cancel). An image sent as
    DICOM keeps its source's identifiers, and its header fills the inputs the submission left
    out (``dicom_filled``)."""
    now = utcnow()
    values: dict[str, Any] = {}
    if dicom is not None:
        values = {"dicom_source": dicom.source.model_dump(mode="json"), **dicom_filled(dicom.context)}
    analysis = session.execute(
        update(Analysis)
        .where(*_awaiting_ingest(pending.analysis_id))
        .values(
            image_key=image_key, image_sha256=sha256, image_content_type=content_type,
            image_width=width, image_height=height, ingest_requested_at=None,
            enqueued_at=now, updated_at=now, **values,
        )
        .returning(Analysis.id, Analysis.priority)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if analysis is None:
        return False
    if celery is not None:
        after_commit(session, lambda: enqueue_analysis(celery, analysis.id, analysis.priority))
    return True


def dicom_filled(context: PatientContext) -> dict[str, Any]:
    """The inputs a DICOM header gives, as SQL that keeps what the submission gave: the same
    rule as the API's (``PatientContext.fills``: an absent age or spacing, a sex or site of
    ``unknown``), decided in the UPDATE itself."""
    filled: dict[str, Any] = {}
    if context.age is not None:
        filled["age"] = func.coalesce(Analysis.age, context.age)
    if context.sex not in (None, "unknown"):
        filled["sex"] = case((Analysis.sex == "unknown", context.sex), else_=Analysis.sex)
    if context.site is not None:
        filled["site"] = case((Analysis.site == "unknown", context.site), else_=Analysis.site)
    if context.pixel_spacing_mm is not None:
        filled["pixel_spacing_mm"] = func.coalesce(Analysis.pixel_spacing_mm, context.pixel_spacing_mm)
    return filled


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
    return ask_again(session, "ingest_requested_at", requested_before, limit)
