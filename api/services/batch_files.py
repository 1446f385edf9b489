"""File-based batches (issue 25): a batch's archive in by presigned PUT, its output and errors
files out as presigned NDJSON. All SQL for these routes is here; unpacking is the ingest
lane's (``worker/archive_ingest.py``).

The files are written when asked for (``GET …/output``, ``GET …/errors``) from the rows in
Postgres, streamed into a spooled file (memory up to 8 MB, then disk) and stored under the
batch's prefix. A final batch's file is written once and reused (its rows no longer change;
erasing one of its analyses deletes the files, ``shared.tenant_data``); an unfinished batch's
is written afresh at every request, as far as it has got (``partial``).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO, cast

from sqlalchemy import func, nulls_last, select
from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import TYPE_BASE, BatchSealed, Conflict, PayloadTooLarge
from api.services.owned import get_owned
from api.services.triage import RESULT_WITHOUT_NOTE, TriageRow
from shared import lifecycle
from shared.archives import json_line
from shared.clock import utcnow
from shared.context import AppContext
from shared.db import after_commit
from shared.schemas.batch_files import ARCHIVE_CONTENT_TYPES, BatchArchiveIn
from shared.storage import ARTIFACTS, BATCH_ERRORS, BATCH_OUTPUT, IMAGES, archive_key, batch_file_key
from shared.tables import Analysis, AnalysisStatus, ArchiveState, Batch, BatchArchive, BatchRowError

NDJSON = "application/x-ndjson"
_SPOOL_BYTES = 8 * 1024 * 1024


# ---------------------------------------------------------------- the archive in


def create_archive(
    context: AppContext, session: Session, tenant: TenantRef, batch_id: uuid.UUID, body: BatchArchiveIn
) -> tuple[BatchArchive, str]:
    """The batch's archive and a short-lived URL to PUT it to. One archive per batch: asked
    again while the batch is open, the same archive gets a fresh URL (and the format given)."""
    settings = context.settings
    batch = get_owned(session, Batch, batch_id, tenant, "batch", for_update=True)
    if batch.sealed_at is not None:
        raise BatchSealed(f"batch {batch_id} is sealed and takes no archive; create a new batch for it")
    archive = lifecycle.archive_of(session, batch.id, for_update=True)
    expires = utcnow() + timedelta(seconds=settings.upload_url_ttl_seconds)
    if archive is None:
        archive_id = uuid.uuid4()
        archive = BatchArchive(
            id=archive_id, batch_id=batch.id, tenant_id=tenant.id, format=body.format,
            object_key=archive_key(tenant.id, batch.id, archive_id), url_expires_at=expires,
            state=ArchiveState.awaiting.value,
        )
        session.add(archive)
    else:
        archive.format, archive.url_expires_at = body.format, expires
    session.flush()
    url = context.store.presigned_put(IMAGES, archive.object_key, settings.upload_url_ttl_seconds)
    return archive, url


def archive_headers(archive: BatchArchive) -> dict[str, str]:
    return {"Content-Type": ARCHIVE_CONTENT_TYPES[archive.format]}


def unpack_on_seal(context: AppContext, session: Session, batch: Batch) -> None:
    """Sealing a batch whose archive awaits: it must have been PUT, within the size limit (409,
    413 otherwise: the batch stays open), and the ingest lane unpacks it after the commit."""
    archive = lifecycle.archive_of(session, batch.id, for_update=True)
    if archive is None or archive.state != ArchiveState.awaiting.value:
        return
    size = context.store.size(IMAGES, archive.object_key)
    if size is None:
        raise Conflict(
            f"nothing was uploaded for archive {archive.id} of this batch yet; PUT it to its url first "
            f"(POST /v1/batches/{batch.id}/archive gives a fresh one), then seal"
        )
    if size > context.settings.archive_max_bytes:
        raise PayloadTooLarge(
            f"the archive is larger than the {context.settings.archive_max_mb} MB limit; split it over several "
            "batches"
        )
    lifecycle.request_unpack(session, context.celery, archive)


def forget_stopped_archive(context: AppContext, session: Session, batch: Batch) -> None:
    """After a cancel: the archive as PUT (photos with their metadata) is not needed any more."""
    archive = lifecycle.archive_of(session, batch.id)
    if archive is not None and archive.state == ArchiveState.stopped.value:
        key = archive.object_key
        after_commit(session, lambda: _delete_quietly(context, IMAGES, key))


def _delete_quietly(context: AppContext, purpose: str, key: str) -> None:
    try:
        context.store.delete(purpose, key)
    except Exception:  # the tenant's purge or deletion removes what is left under its prefix
        return


# ---------------------------------------------------------------- the files out


@dataclass(frozen=True)
class BatchFile:
    url: str
    expires_at: datetime
    lines: int
    partial: bool


def output_file(context: AppContext, session: Session, tenant: TenantRef, batch_id: uuid.UUID) -> BatchFile:
    """One line per item of the batch, archive rows first in row order, then items submitted
    one by one in submission order: its row, analysis id, external id, status, disposition,
    probability, weights, model version, rejection or error codes (the triage item's fields)."""
    batch = get_owned(session, Batch, batch_id, tenant, "batch")
    return _batch_file(context, session, batch, BATCH_OUTPUT, lambda: _output_lines(context, batch.id))


def errors_file(context: AppContext, session: Session, tenant: TenantRef, batch_id: uuid.UUID) -> BatchFile:
    """One line per refused archive row (no item was made for it), in row order: its row, file
    (or upload id), and the problem ``POST /v1/analyses`` would have answered. The archive
    itself, when it could not be read, is a line with ``row`` null."""
    batch = get_owned(session, Batch, batch_id, tenant, "batch")
    return _batch_file(context, session, batch, BATCH_ERRORS, lambda: _error_lines(context, batch.id))


def _batch_file(
    context: AppContext, session: Session, batch: Batch, name: str, lines: Callable[[], Iterator[str]]
) -> BatchFile:
    canceled = session.execute(
        select(func.count()).where(Analysis.batch_id == batch.id, Analysis.status == AnalysisStatus.canceled.value)
    ).scalar_one()
    # An archive stopped by the batch's deadline left rows unread, even when nothing was canceled.
    archive = lifecycle.archive_of(session, batch.id)
    stopped = archive is not None and archive.state == ArchiveState.stopped.value
    partial = stopped or lifecycle.batch_state(batch, canceled) != "completed"
    key = batch_file_key(batch.tenant_id, batch.id, name)
    # A final batch's file is written once; an unfinished one's every time.
    version = batch.completed_at.isoformat() if batch.completed_at is not None else ""
    stored = context.store.user_metadata(ARTIFACTS, key) if version else None
    if stored is not None and stored.get("version") == version and stored.get("lines", "").isdigit():
        count = int(stored["lines"])
    else:
        count = _write(context, key, lines(), version)
    expires_at = utcnow() + timedelta(seconds=context.settings.presign_ttl_seconds)
    return BatchFile(context.store.presigned_get(ARTIFACTS, key), expires_at, count, partial)


def _write(context: AppContext, key: str, lines: Iterator[str], version: str) -> int:
    count = 0
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        for line in lines:
            spool.write(line.encode())
            count += 1
        length = spool.tell()
        spool.seek(0)
        metadata = {"version": version, "lines": str(count)}
        context.store.put_stream(ARTIFACTS, key, cast(BinaryIO, spool), length, NDJSON, metadata)
    return count


def _output_lines(context: AppContext, batch_id: uuid.UUID, chunk: int = 1000) -> Iterator[str]:
    query = (
        select(
            Analysis.batch_row, Analysis.id, Analysis.external_id, Analysis.status, RESULT_WITHOUT_NOTE,
            Analysis.model, Analysis.rejection["code"].as_string(), Analysis.rejection["detail"].as_string(),
            Analysis.error["code"].as_string(), Analysis.error["detail"].as_string(), Analysis.age, Analysis.sex,
            Analysis.site, Analysis.completed_at, Analysis.cancel_reason,
        )
        .where(Analysis.batch_id == batch_id)
        .order_by(nulls_last(Analysis.batch_row.asc()), Analysis.created_at, Analysis.id)
        .execution_options(yield_per=chunk)
    )
    # Its own session: the rows stream through a server-side cursor while the file is written.
    with context.session_factory() as session:
        for (row, analysis_id, external_id, status, result, model, rejection_code, rejection_detail, error_code,
             error_detail, age, sex, site, completed_at, cancel_reason) in session.execute(query):
            provenance = lifecycle.read_model(model)
            item = TriageRow(
                analysis_id, external_id, status, lifecycle.read_result(result, provenance), provenance,
                rejection_code, rejection_detail, error_code, error_detail, age, sex, site, completed_at,
            ).as_item(0).model_dump(mode="json", exclude={"rank"})
            line: dict[str, Any] = {"row": row, **item, "cancel_reason": cancel_reason,
                                    "model_version": provenance.version if provenance else None}
            yield json_line(line)


def _error_lines(context: AppContext, batch_id: uuid.UUID) -> Iterator[str]:
    query = select(BatchRowError).where(BatchRowError.batch_id == batch_id).order_by(BatchRowError.row)
    with context.session_factory() as session:
        for refused in session.execute(query.execution_options(yield_per=1000)).scalars():
            line: dict[str, Any] = {
                "row": refused.row if refused.row != lifecycle.ARCHIVE_ROW else None,
                "file": refused.file,
                "type": TYPE_BASE + refused.code,
                "title": refused.title,
                "status": refused.status,
                "detail": refused.detail,
            }
            if refused.errors:
                line["errors"] = refused.errors
            yield json_line(line)
