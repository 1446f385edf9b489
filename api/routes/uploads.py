"""/v1/uploads: a presigned PUT for one image, for backlogs too big to send through the API."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ContextDep, CurrentTenant, SessionDep
from api.services import uploads as service
from shared import analyses as lifecycle
from shared.schemas import UploadIn

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post("", status_code=201, summary="A short-lived URL to PUT one image to, and its upload id")
def create_upload(context: ContextDep, tenant: CurrentTenant, session: SessionDep, body: UploadIn | None = None):
    upload, url = service.create(context, session, tenant, body or UploadIn())
    settings = context.settings
    return {
        "id": str(upload.id),
        "url": url,
        "method": "PUT",
        "headers": {"Content-Type": upload.content_type},
        "expires_at": lifecycle.iso(upload.url_expires_at),
        "submit_before": lifecycle.iso(upload.usable_until),
        "max_bytes": settings.max_upload_bytes,
        "content_type": upload.content_type,
        "next": {"method": "POST", "path": "/v1/analyses", "body": {"upload_id": str(upload.id)}},
    }
