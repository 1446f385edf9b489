"""A batch's archive on its way in (issue 25): asking for the unpack, settling its rows in
chunks, and finishing it. Every write of ``batch_archives`` and ``batch_row_errors`` is here.

A chunk of rows is settled in one transaction that also moves the archive's ``next_row`` from
where the unpack found it (compare and set): a retried or concurrent unpack of the same rows
loses that race and writes nothing, so no row's item is made twice, and none is lost (rows
after ``next_row`` are read again). Items are keyed by (batch, row) besides: their id is
derived from the archive and the row, and ``uq_analyses_batch_row`` holds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.archives import RowRefused
from shared.clock import utcnow
from shared.config import Settings
from shared.db import after_commit
from shared.dicom.reading import DicomInput
from shared.jobs import enqueue_analysis, send
from shared.lifecycle.batches import complete_batch_if_done
from shared.lifecycle.ingest import dicom_filled, request_ingest
from shared.lifecycle.uploads import UploadUnusable, claim_upload
from shared.queues import Queue, TaskName
from shared.schemas import AnalysisInputs
from shared.storage import ObjectStore
from shared.tables import Analysis, ArchiveState, Batch, BatchArchive, BatchRowError

# The archive's own problem (it could not be read at all) is listed as this row.
ARCHIVE_ROW = 0
_ITEM_IDS = uuid.UUID("6f1d7c1e-25a1-4c2b-9a55-0b5e7a1c2f25")


def item_id(archive_id: uuid.UUID, row: int) -> uuid.UUID:
    """The analysis id of an archive's row: the same on every try, so a retried unpack writes
    the same image key and can never make a second item for the row."""
    return uuid.uuid5(_ITEM_IDS, f"{archive_id}:{row}")


def enqueue_unpack(celery: Celery, archive_id: uuid.UUID) -> None:
    send(celery, TaskName.ingest_archive, Queue.ingest, str(archive_id))


def archive_of(session: Session, batch_id: uuid.UUID, *, for_update: bool = False) -> BatchArchive | None:
    query = select(BatchArchive).where(BatchArchive.batch_id == batch_id)
    return session.execute(query.with_for_update() if for_update else query).scalar_one_or_none()


def request_unpack(session: Session, celery: Celery | None, archive: BatchArchive) -> None:
    """The batch was sealed with its archive PUT: the ingest lane unpacks it (woken after the
    commit; the sweeper re-sends a lost wake-up). The batch cannot complete until it is done."""
    archive.state = ArchiveState.unpacking.value
    archive.ingest_requested_at = utcnow()
    session.flush()
    if celery is not None:
        archive_id = archive.id
        after_commit(session, lambda: enqueue_unpack(celery, archive_id))


@dataclass(frozen=True)
class ArchiveJob:
    archive_id: uuid.UUID
    batch_id: uuid.UUID
    tenant_id: uuid.UUID
    format: str
    object_key: str
    next_row: int
    deadline_at: datetime | None


def archive_job(session: Session, archive_id: uuid.UUID) -> ArchiveJob | None:
    """The archive, when it is (still) to be unpacked."""
    row = session.execute(
        select(
            BatchArchive.id, BatchArchive.batch_id, BatchArchive.tenant_id, BatchArchive.format,
            BatchArchive.object_key, BatchArchive.next_row, Batch.deadline_at,
        )
        .join(Batch, Batch.id == BatchArchive.batch_id)
        .where(BatchArchive.id == archive_id, BatchArchive.state == ArchiveState.unpacking.value)
    ).one_or_none()
    return ArchiveJob(*row) if row else None


@dataclass(frozen=True)
class StoredImage:
    """A row's image, checked, cleaned and stored under its item's key (``shared.images``)."""

    key: str
    sha256: str
    content_type: str
    width: int
    height: int
    dicom: DicomInput | None = None


@dataclass(frozen=True)
class RowItem:
    """A row that becomes an item: its image stored (zip, tar), or a direct upload to claim (NDJSON)."""

    row: int
    file: str | None
    inputs: AnalysisInputs
    image: StoredImage | None = None
    upload_id: uuid.UUID | None = None


@dataclass(frozen=True)
class RowRefusal:
    row: int
    file: str | None
    problem: RowRefused


def settle_rows(
    session: Session,
    celery: Celery | None,
    settings: Settings,
    store: ObjectStore,
    job: ArchiveJob,
    through_row: int,
    rows: list[RowItem | RowRefusal],
) -> bool:
    """Rows ``job.next_row + 1 .. through_row`` are settled: each item is made (queued for the
    analysis lane, or for ingest when it is a direct upload) and each refusal recorded, and the
    archive's ``next_row`` moves on, all in this transaction. False, with nothing written, when
    another unpack settled them first or the archive was stopped; the caller rolls back."""
    moved = session.execute(
        update(BatchArchive)
        .where(BatchArchive.id == job.archive_id, BatchArchive.state == ArchiveState.unpacking.value,
               BatchArchive.next_row == job.next_row)
        .values(next_row=through_row, ingest_requested_at=utcnow())
        .returning(BatchArchive.id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if moved is None:
        return False
    now = utcnow()
    made = refused = 0
    for entry in rows:
        if isinstance(entry, RowItem):
            try:
                _make_item(session, celery, settings, store, job, entry, now)
            except UploadUnusable as unusable:
                entry = RowRefusal(entry.row, entry.file, RowRefused(unusable.code, unusable.status, unusable.detail))
            else:
                made += 1
                continue
        _record_refusal(session, job.batch_id, job.tenant_id, entry.row, entry.file, entry.problem)
        refused += 1
    session.execute(
        update(BatchArchive)
        .where(BatchArchive.id == job.archive_id)
        .values(items=BatchArchive.items + made, refused=BatchArchive.refused + refused)
        .execution_options(synchronize_session=False)
    )
    return True


def _make_item(
    session: Session, celery: Celery | None, settings: Settings, store: ObjectStore, job: ArchiveJob,
    entry: RowItem, now: datetime,
) -> None:
    inputs = entry.inputs
    analysis_id = item_id(job.archive_id, entry.row)
    image: dict[str, Any]
    if entry.image is not None:
        stored = entry.image
        image = {
            "image_key": stored.key, "image_sha256": stored.sha256, "image_content_type": stored.content_type,
            "image_width": stored.width, "image_height": stored.height, "enqueued_at": now,
            "dicom_source": stored.dicom.source.model_dump(mode="json") if stored.dicom is not None else None,
        }
    else:
        assert entry.upload_id is not None
        upload = claim_upload(session, store, settings, job.tenant_id, entry.upload_id, analysis_id)
        # Until ingest: the raw upload, its declared type, and no size or hash (as submit_upload).
        image = {
            "image_key": upload.object_key, "image_sha256": "", "image_content_type": upload.content_type,
            "image_width": 0, "image_height": 0, "upload_id": upload.id, "ingest_requested_at": now,
        }
    session.add(Analysis(
        id=analysis_id,
        tenant_id=job.tenant_id,
        batch_id=job.batch_id,
        batch_row=entry.row,
        external_id=inputs.external_id,
        priority="bulk",
        status="queued",
        attempt=0,
        age=inputs.age,
        sex=inputs.sex,
        site=inputs.site,
        pixel_spacing_mm=inputs.pixel_spacing_mm,
        patient_reference=inputs.patient_reference,
        encounter_reference=inputs.encounter_reference,
        created_at=now,
        updated_at=now,
        deadline_at=job.deadline_at,
        **image,
    ))
    session.flush()
    if entry.image is not None and entry.image.dicom is not None:
        # A DICOM header fills the inputs the row left out, as for any DICOM upload.
        filled = dicom_filled(entry.image.dicom.context)
        if filled:
            session.execute(update(Analysis).where(Analysis.id == analysis_id).values(**filled)
                            .execution_options(synchronize_session=False))
    if entry.upload_id is not None:
        request_ingest(session, celery, analysis_id)
    elif celery is not None:
        after_commit(session, lambda: enqueue_analysis(celery, analysis_id, "bulk"))


def _record_refusal(
    session: Session, batch_id: uuid.UUID, tenant_id: uuid.UUID, row: int, file: str | None, problem: RowRefused
) -> None:
    session.add(BatchRowError(
        batch_id=batch_id, row=row, tenant_id=tenant_id, file=file[:300] if file else None,
        code=problem.code, status=problem.status, title=problem.title, detail=problem.detail,
        errors=problem.errors,
    ))
    session.flush()


def finish_unpack(
    session: Session,
    celery: Celery | None,
    settings: Settings,
    job: ArchiveJob,
    state: ArchiveState,
    problem: RowRefused | None = None,
) -> bool:
    """Every row was read (``done``), the archive could not be read (``refused``, with its
    problem listed as row 0), or its deadline passed (``stopped``): the batch may complete now.
    False when someone else finished or stopped it first."""
    # The batch first, then its archive: the order a cancel takes them in (no deadlock).
    session.execute(select(Batch.id).where(Batch.id == job.batch_id).with_for_update())
    finished = session.execute(
        update(BatchArchive)
        .where(BatchArchive.id == job.archive_id, BatchArchive.state == ArchiveState.unpacking.value)
        .values(state=state.value, ingest_requested_at=None, finished_at=utcnow())
        .returning(BatchArchive.id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if finished is None:
        return False
    if problem is not None:
        _record_refusal(session, job.batch_id, job.tenant_id, ARCHIVE_ROW, None, problem)
    complete_batch_if_done(session, celery, settings, job.batch_id)
    return True


def missing_unpacks(session: Session, requested_before: datetime, limit: int) -> list[uuid.UUID]:
    """Archives being unpacked whose last wake-up or progress is older than ``requested_before``
    (the wake-up was lost, or the worker died); marks them asked for again now."""
    ids = list(
        session.execute(
            select(BatchArchive.id)
            .where(BatchArchive.ingest_requested_at.is_not(None), BatchArchive.ingest_requested_at < requested_before)
            .order_by(BatchArchive.ingest_requested_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if ids:
        session.execute(
            update(BatchArchive).where(BatchArchive.id.in_(ids)).values(ingest_requested_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return ids
