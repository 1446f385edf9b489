"""Unpacking a batch's archive (issue 25): the ingest lane's twin of ``POST /v1/analyses`` for
every row of a zip or tar of images with ``manifest.csv``, or of an NDJSON file of upload ids.

Each row is checked as that route checks a submission (``shared.archive_rows``: the same
fields, vocabulary and 422s; ``shared.images.clean_image``: the same image checks, and only the
pixels are stored, metadata-free), then becomes an item of the batch or a refused row of its
errors file. Rows are settled in chunks of ``CHUNK_ROWS``, each in one transaction that moves
the archive's ``next_row`` on (``shared.lifecycle.archives``): a crash loses at most the chunk in
hand, which the next try reads again; no row's item is ever made twice.

Bounded in time as in space (``shared.archives``): after ``SLICE_SECONDS`` of work the task
hands the rest to a fresh message, so a long archive never holds an ingest worker past its time
limit, and direct uploads' ingests interleave with it. A zip or tar is copied to local disk per
slice (a zip's directory is at its end); NDJSON is read as it streams.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from sqlalchemy import select

from shared import lifecycle
from shared.archive_rows import csv_inputs, ndjson_inputs
from shared.archives import (
    ArchiveRefused,
    ArchiveTooLarge,
    ImageArchive,
    Limits,
    ManifestRow,
    RowRefused,
    ndjson_rows,
)
from shared.clock import utcnow
from shared.context import AppContext
from shared.db import after_commit, session_scope
from shared.images import ImageRejected, clean_image
from shared.lifecycle import ArchiveJob, RowItem, RowRefusal, StoredImage
from shared.logs import bind
from shared.storage import IMAGES, image_key
from shared.tables import Analysis, ArchiveState

log = logging.getLogger(__name__)

CHUNK_ROWS = 50
SLICE_SECONDS = 60.0
_COPY_CHUNK = 4 * 1024 * 1024


class _Lost(Exception):
    """Another unpack settled these rows first, or the batch was canceled: roll back."""


def ingest_archive(context: AppContext, archive_id: uuid.UUID, *, slice_seconds: float = SLICE_SECONDS) -> str | None:
    """Unpack the archive for a slice of time; returns ``done``, ``refused``, ``stopped``,
    ``continued`` (a fresh message carries on), or None when there was nothing to do."""
    with session_scope(context.session_factory) as session:
        job = lifecycle.archive_job(session, archive_id)
    if job is None:
        return None
    bind(tenant_id=job.tenant_id, batch_id=job.batch_id)
    if job.deadline_at is not None and utcnow() >= job.deadline_at:
        return _expire(context, job)
    settings = context.settings
    limits = Limits(settings.archive_max_bytes, settings.archive_max_items, settings.max_upload_bytes,
                    settings.max_upload_mb)
    try:
        with _opened(context, job, limits) as (rows, archive):
            if job.next_row == 0:
                _count_rows(rows(), limits)
            return _unpack(context, job, rows(), archive, slice_seconds)
    except ArchiveRefused as refused:
        log.info("archive of batch %s refused: %s", job.batch_id, refused.code)
        return _finish(context, job, ArchiveState.refused, RowRefused(refused.code, refused.status, refused.detail))


@contextmanager
def _opened(
    context: AppContext, job: ArchiveJob, limits: Limits
) -> Iterator[tuple[Callable[[], Iterator[ManifestRow]], ImageArchive | None]]:
    """The archive's rows (each call reads them from the start) and, for a zip or tar, the
    archive to read members from."""
    size = context.store.size(IMAGES, job.object_key)
    if size is None:
        raise ArchiveRefused("the archive is gone from the store (deleted before it was unpacked); send it again")
    if size > limits.max_bytes:
        raise ArchiveTooLarge(_too_large(limits))
    if job.format == "ndjson":
        yield (lambda: ndjson_rows(_bounded(context.store.stream(IMAGES, job.object_key), limits))), None
        return
    with tempfile.NamedTemporaryFile(prefix="archive-", suffix=f".{job.format}") as copy:
        for chunk in _bounded(context.store.stream(IMAGES, job.object_key, _COPY_CHUNK), limits):
            copy.write(chunk)
        copy.flush()
        with ImageArchive.open(copy.name, job.format, limits) as archive:
            yield archive.rows, archive


def _bounded(chunks: Iterator[bytes], limits: Limits) -> Iterator[bytes]:
    """The object's bytes, refused past the limit (it may have been replaced after the size check)."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limits.max_bytes:
            raise ArchiveTooLarge(_too_large(limits))
        yield chunk


def _too_large(limits: Limits) -> str:
    return f"the archive is larger than the {limits.max_bytes // (1024 * 1024)} MB limit; split it over several batches"


def _count_rows(rows: Iterator[ManifestRow], limits: Limits) -> None:
    """Before the first item: an archive with more rows than a batch takes is refused whole
    (never cut short at an arbitrary row)."""
    for n, _row in enumerate(rows, start=1):
        if n > limits.max_items:
            raise ArchiveRefused(
                f"the archive has more than {limits.max_items} rows, the most one batch takes; "
                "split it over several batches"
            )


def _unpack(
    context: AppContext, job: ArchiveJob, rows: Iterator[ManifestRow], archive: ImageArchive | None,
    slice_seconds: float,
) -> str | None:
    started = time.monotonic()
    chunk: list[RowItem | RowRefusal] = []
    through = job.next_row
    for row in rows:
        if row.row <= job.next_row:
            continue  # settled by an earlier slice or try
        through = row.row
        if row.problem is None and row.file is None and not any(row.values.values()):
            continue  # a row of empty cells (a spreadsheet's trailing line): not an image
        chunk.append(_prepare(context, job, archive, row))
        if len(chunk) < CHUNK_ROWS:
            continue
        if not _settle(context, job, through, chunk):
            return None
        job, chunk = replace(job, next_row=through), []
        if job.deadline_at is not None and utcnow() >= job.deadline_at:
            return _expire(context, job)
        if time.monotonic() - started > slice_seconds:
            lifecycle.enqueue_unpack(context.celery, job.archive_id)
            return "continued"
    if not _settle(context, job, through, chunk, final=True):
        return None
    _forget_archive(context, job.object_key)
    return ArchiveState.done.value


def _prepare(
    context: AppContext, job: ArchiveJob, archive: ImageArchive | None, row: ManifestRow
) -> RowItem | RowRefusal:
    """The row checked as ``POST /v1/analyses`` would check it; a zip or tar row's image is
    cleaned and stored under its item's key (the same key on every try)."""
    settings = context.settings
    if row.problem is not None:
        return RowRefusal(row.row, row.file, row.problem)
    try:
        if archive is None:
            upload_id, inputs = ndjson_inputs(row, job.batch_id)
            return RowItem(row.row, row.file, inputs, upload_id=upload_id)
        inputs = csv_inputs(row, job.batch_id)
        raw = archive.read(row.file)
        image = clean_image(raw, settings.max_image_pixels, settings.max_decode_side)
        del raw
    except RowRefused as problem:
        return RowRefusal(row.row, row.file, problem)
    except ImageRejected as rejected:
        return RowRefusal(row.row, row.file, RowRefused(rejected.code, rejected.status, rejected.detail))
    key = image_key(job.tenant_id, lifecycle.item_id(job.archive_id, row.row), image.extension)
    context.store.put(IMAGES, key, image.data, image.content_type)
    stored = StoredImage(key, image.original_sha256, image.content_type, image.width, image.height, image.dicom)
    return RowItem(row.row, row.file, inputs, image=stored)


def _settle(
    context: AppContext, job: ArchiveJob, through: int, chunk: list[RowItem | RowRefusal], *, final: bool = False
) -> bool:
    try:
        with session_scope(context.session_factory) as session:
            if not lifecycle.settle_rows(session, context.celery, context.settings, context.store, job, through,
                                         chunk):
                raise _Lost
            if final:
                lifecycle.finish_unpack(session, context.celery, context.settings, replace(job, next_row=through),
                                        ArchiveState.done)
    except _Lost:
        _discard_unused(context, job, chunk)
        log.info("archive of batch %s: rows up to %d were settled elsewhere or the batch was canceled",
                 job.batch_id, through)
        return False
    return True


def _discard_unused(context: AppContext, job: ArchiveJob, chunk: list[RowItem | RowRefusal]) -> None:
    """Images this try stored for rows that no item holds (the batch was canceled meanwhile).
    An item another try made for the same row keeps its image: the key is the same."""
    stored = {lifecycle.item_id(job.archive_id, entry.row): entry.image.key
              for entry in chunk if isinstance(entry, RowItem) and entry.image is not None}
    if not stored:
        return
    with session_scope(context.session_factory) as session:
        kept = set(session.execute(select(Analysis.id).where(Analysis.id.in_(list(stored)))).scalars())
    for analysis_id, key in stored.items():
        if analysis_id not in kept:
            _forget(context, key)


def _expire(context: AppContext, job: ArchiveJob) -> str | None:
    """The batch's deadline passed mid-unpack: the rows not read yet never become items (the
    items made already expire as any other's), and the errors file says so."""
    problem = RowRefused("batch_expired", 409, f"the batch's deadline passed before the rows after row {job.next_row} "
                         "were read; they were not analysed")
    return _finish(context, job, ArchiveState.stopped, problem)


def _finish(context: AppContext, job: ArchiveJob, state: ArchiveState, problem: RowRefused | None = None) -> str | None:
    with session_scope(context.session_factory) as session:
        done = lifecycle.finish_unpack(session, context.celery, context.settings, job, state, problem)
        if done:
            after_commit(session, lambda: _forget_archive(context, job.object_key))
    return state.value if done else None


def _forget_archive(context: AppContext, key: str) -> None:
    """The archive as PUT holds the photos with their metadata: gone once its rows are settled."""
    _forget(context, key)


def _forget(context: AppContext, key: str) -> None:
    try:
        context.store.delete(IMAGES, key)
    except Exception as exc:  # the purge removes it with the tenant's leftovers later
        log.warning("object not deleted yet (%s)", type(exc).__name__)
