"""Direct uploads: hand out a presigned PUT, and take an upload id in place of the file.

Submitting one is ``api.services.analyses.submit_upload`` (which claims it here); several at
once, ``api.services.bulk``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta

from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import Conflict, NotFound, PayloadTooLarge
from shared.clock import utcnow
from shared.context import AppContext
from shared.lifecycle.uploads import UploadUnusable, claim_upload
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
    """Mark the upload used by ``analysis_id`` (``shared.lifecycle.uploads.claim_upload``: once,
    by its own tenant, before it expires, only when an image of an acceptable size was PUT);
    404, 409 or 413 otherwise."""
    try:
        return claim_upload(session, context.store, context.settings, tenant.id, upload_id, analysis_id, known_sizes)
    except UploadUnusable as unusable:
        problem = {404: NotFound, 413: PayloadTooLarge}.get(unusable.status, Conflict)
        raise problem(unusable.detail) from None
