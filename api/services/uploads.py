"""Direct uploads: hand out a presigned PUT, and take an upload id in place of the file.

Submitting one is ``api.services.analyses.submit_upload`` (which claims it here); several at
once, ``api.services.bulk``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import Conflict, NotFound, PayloadTooLarge
from shared.clock import iso, utcnow
from shared.context import AppContext
from shared.schemas import UploadIn
from shared.storage import IMAGES, upload_key
from shared.tables import Upload

# One bulk call hands out or submits at most this many: big enough to amortise a request's
# fixed cost (auth, rate limit, transaction, commit) to a few per cent, small enough that one
# call holds a database slot for well under a second (docs/UPLOADS_AND_EXPIRY.md, Decisions).
MAX_BULK = 100


def create(context: AppContext, session: Session, tenant: TenantRef, body: UploadIn) -> tuple[Upload, str]:
    """A row that says who may use the upload id and until when, and the URL to PUT to."""
    return create_many(context, session, tenant, body, 1)[0]


def create_many(
    context: AppContext, session: Session, tenant: TenantRef, body: UploadIn, count: int
) -> list[tuple[Upload, str]]:
    """``count`` upload ids in one INSERT, each with its own presigned PUT (each URL names its
    own key, so one URL can never overwrite another upload)."""
    settings = context.settings
    now = utcnow()
    uploads = []
    for _ in range(count):
        upload_id = uuid.uuid4()
        uploads.append(Upload(
            id=upload_id,
            tenant_id=tenant.id,
            object_key=upload_key(tenant.id, upload_id),
            content_type=body.content_type,
            url_expires_at=now + timedelta(seconds=settings.upload_url_ttl_seconds),
            usable_until=now + timedelta(hours=settings.upload_keep_hours),
            created_at=now,
        ))
    session.add_all(uploads)
    session.flush()
    ttl = settings.upload_url_ttl_seconds
    return [(upload, context.store.presigned_put(IMAGES, upload.object_key, ttl)) for upload in uploads]


def claim_for_analysis(
    context: AppContext,
    session: Session,
    tenant: TenantRef,
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
        select(Upload).where(Upload.id == upload_id, Upload.tenant_id == tenant.id).with_for_update()
    ).scalar_one_or_none()
    if upload is None:
        raise NotFound(f"no upload with id {upload_id}")
    if upload.used_at is not None:
        raise Conflict(
            f"upload {upload_id} was already submitted (analysis {upload.analysis_id}); "
            "each upload id is used once: create a new upload for a new image"
        )
    if upload.usable_until <= now:
        raise Conflict(f"upload {upload_id} expired at {iso(upload.usable_until)}; create a new upload")
    known = known_sizes or {}
    size = known[upload.object_key] if upload.object_key in known else context.store.size(IMAGES, upload.object_key)
    if size is None:
        raise Conflict(
            f"nothing was uploaded for upload {upload_id} yet; PUT the image to its url first"
        )
    if size > context.settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"the image is larger than the {context.settings.max_upload_mb} MB limit; send a smaller JPEG or PNG"
        )
    session.execute(
        update(Upload)
        .where(Upload.id == upload.id)
        .values(used_at=now, analysis_id=analysis_id)
        .execution_options(synchronize_session=False)
    )
    return upload

