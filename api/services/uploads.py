"""Direct uploads: hand out a presigned PUT, and take an upload id in place of the file."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.problems import Conflict, NotFound, PayloadTooLarge
from shared import analyses as lifecycle
from shared.context import AppContext
from shared.models import Tenant, Upload
from shared.schemas import UploadIn
from shared.storage import IMAGES, upload_key


def create(context: AppContext, session: Session, tenant: Tenant, body: UploadIn) -> tuple[Upload, str]:
    """A row that says who may use the upload id and until when, and the URL to PUT to."""
    settings = context.settings
    now = lifecycle.utcnow()
    upload_id = uuid.uuid4()
    upload = Upload(
        id=upload_id,
        tenant_id=tenant.id,
        object_key=upload_key(tenant.id, upload_id),
        content_type=body.content_type,
        url_expires_at=now + timedelta(seconds=settings.upload_url_ttl_seconds),
        usable_until=now + timedelta(hours=settings.upload_keep_hours),
        created_at=now,
    )
    session.add(upload)
    session.flush()
    url = context.store.presigned_put(IMAGES, upload.object_key, settings.upload_url_ttl_seconds)
    return upload, url


def claim_for_analysis(
    context: AppContext, session: Session, tenant: Tenant, upload_id: uuid.UUID, analysis_id: uuid.UUID
) -> Upload:
    """Mark the upload used by ``analysis_id``: once, by its own tenant, before it expires,
    and only when an image of an acceptable size was PUT."""
    now = lifecycle.utcnow()
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
        raise Conflict(f"upload {upload_id} expired at {lifecycle.iso(upload.usable_until)}; create a new upload")
    size = context.store.size(IMAGES, upload.object_key)
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

