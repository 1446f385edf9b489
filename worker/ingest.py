"""Ingest of direct uploads: the worker-side twin of what the API does with a multipart image.

The client PUT the raw bytes to a presigned URL; nothing has checked them. Here they get
exactly the API's treatment (``shared.images.clean_image``, the same size and pixel limits;
a DICOM file's pixels alone, its header filling the inputs the submission left out):
an image the API would have refused ends ``rejected`` with the API's answer as the rejection;
an accepted one is stored re-encoded and metadata-free under the analysis's key, the raw
upload is deleted, and the analysis lane is woken. Safe to run twice: the row's
``ingest_requested_at`` fences it, and the cleaned key is the same on every run.
"""

from __future__ import annotations

import logging
import uuid

from shared import lifecycle, tenant_data
from shared.context import AppContext
from shared.db import after_commit, session_scope
from shared.images import ImageRejected, UploadTooLargeError, clean_image
from shared.logs import bind
from shared.metrics import INGESTS
from shared.storage import IMAGES, image_key

log = logging.getLogger(__name__)


def ingest_upload(context: AppContext, analysis_id: uuid.UUID) -> str | None:
    """Check, clean and store one direct upload; returns the outcome (``ingested``,
    ``rejected``), or None when there was nothing to do (done already, canceled)."""
    settings = context.settings
    with session_scope(context.session_factory) as session:
        pending = lifecycle.pending_ingest(session, analysis_id)
        abandoned = lifecycle.abandoned_upload_key(session, analysis_id) if pending is None else None
    if abandoned is not None:
        _forget_upload(context, abandoned)  # canceled or expired before its ingest ran
    if pending is None:
        INGESTS.labels("skipped").inc()
        return None
    bind(tenant_id=pending.tenant_id)

    try:
        size = context.store.size(IMAGES, pending.upload_key)
        if size is not None and size > settings.max_upload_bytes:
            # The presigned PUT cannot cap the size; this is where the cap holds.
            raise UploadTooLargeError(
                f"the image is larger than the {settings.max_upload_mb} MB limit; send a smaller JPEG or PNG"
            )
        raw = context.store.get(IMAGES, pending.upload_key) if size is not None else b""
        if len(raw) > settings.max_upload_bytes:  # replaced by a bigger object since the size check
            raise UploadTooLargeError(
                f"the image is larger than the {settings.max_upload_mb} MB limit; send a smaller JPEG or PNG"
            )
        image = clean_image(raw, settings.max_image_pixels, settings.max_decode_side, pending.content_type)
        del raw
    except ImageRejected as refused:
        with session_scope(context.session_factory) as session:
            done = lifecycle.ingest_rejected(session, context.celery, settings, pending, refused.code, refused.detail)
            if done:
                after_commit(session, lambda: _forget_upload(context, pending.upload_key))
        log.info("direct upload for analysis %s refused: %s", analysis_id, refused.code)
        INGESTS.labels("rejected" if done else "skipped").inc()
        return "rejected" if done else None

    key = image_key(pending.tenant_id, pending.analysis_id, image.extension)
    context.store.put(IMAGES, key, image.data, image.content_type)
    with session_scope(context.session_factory) as session:
        done = lifecycle.ingested(
            session, context.celery, pending, image_key=key, sha256=image.original_sha256,
            content_type=image.content_type, width=image.width, height=image.height, dicom=image.dicom,
        )
        if done:
            after_commit(session, lambda: _forget_upload(context, pending.upload_key))
    if not done:
        # Erased (its tenant deleted) while this ran: the image just stored goes too (issue 22).
        tenant_data.discard_if_erased(context, analysis_id, [(IMAGES, key)])
    INGESTS.labels("accepted" if done else "skipped").inc()
    return "ingested" if done else None


def _forget_upload(context: AppContext, key: str) -> None:
    try:
        context.store.delete(IMAGES, key)
    except Exception as exc:  # the purge deletes it with the upload row later
        log.warning("raw upload not deleted yet (%s); the purge will", type(exc).__name__)
