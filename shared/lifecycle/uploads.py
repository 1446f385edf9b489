"""Claiming a direct upload for the analysis made from it: the one set of checks, for the API
(``POST /v1/analyses {upload_id}``, ``POST /v1/uploads/submit``) and for an NDJSON batch
archive's rows (issue 25)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.clock import iso, utcnow
from shared.config import Settings
from shared.storage import IMAGES, ObjectStore
from shared.tables import Upload


class UploadUnusable(Exception):
    """Why the upload cannot be used: ``code`` and ``status`` are the API's answer."""

    def __init__(self, code: str, status: int, detail: str):
        super().__init__(detail)
        self.code, self.status, self.detail = code, status, detail


def claim_upload(
    session: Session,
    store: ObjectStore,
    settings: Settings,
    tenant_id: uuid.UUID,
    upload_id: uuid.UUID,
    analysis_id: uuid.UUID,
    known_sizes: Mapping[str, int | None] | None = None,
) -> Upload:
    """Mark the upload used by ``analysis_id``: once, by its own tenant, before it expires,
    and only when an image of an acceptable size was PUT. ``known_sizes``: object sizes by key
    already asked of the store (a bulk submission asks for all its items at once); an object
    not in it is asked for here (None: nothing was PUT)."""
    now = utcnow()
    upload = session.execute(
        select(Upload).where(Upload.id == upload_id, Upload.tenant_id == tenant_id).with_for_update()
        # Fresh from the row: an earlier claim in this transaction (a bulk call, an archive's
        # chunk naming the same upload twice) updated it behind the session's back.
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if upload is None:
        raise UploadUnusable("not_found", 404, f"no upload with id {upload_id}")
    if upload.used_at is not None:
        raise UploadUnusable(
            "conflict", 409,
            f"upload {upload_id} was already submitted (analysis {upload.analysis_id}); "
            "each upload id is used once: create a new upload for a new image",
        )
    if upload.usable_until <= now:
        raise UploadUnusable("conflict", 409, f"upload {upload_id} expired at {iso(upload.usable_until)}; "
                             "create a new upload")
    known = known_sizes or {}
    size = known[upload.object_key] if upload.object_key in known else store.size(IMAGES, upload.object_key)
    if size is None:
        raise UploadUnusable("conflict", 409, f"nothing was uploaded for upload {upload_id} yet; PUT the image to "
                             "its url first")
    if size > settings.max_upload_bytes:
        raise UploadUnusable(
            "payload_too_large", 413,
            f"the image is larger than the {settings.max_upload_mb} MB limit; send a smaller JPEG or PNG",
        )
    session.execute(
        update(Upload)
        .where(Upload.id == upload.id)
        .values(used_at=now, analysis_id=analysis_id)
        .execution_options(synchronize_session=False)
    )
    return upload
