"""Direct uploads: hand out a presigned PUT, and take an upload id in place of the file."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.deps import TenantRef
from api.problems import Conflict, NotFound, PayloadTooLarge, Problem
from shared.clock import iso, utcnow
from shared.context import AppContext
from shared.schemas import AnalysisInputs, UploadIn
from shared.storage import IMAGES, upload_key
from shared.tables import Analysis, Upload

# One bulk call hands out or submits at most this many: big enough to amortise a request's
# fixed cost (auth, rate limit, transaction, commit) to a few per cent, small enough that one
# call holds a database slot for well under a second (docs/UPLOADS_AND_EXPIRY.md, Decisions).
MAX_BULK = 100
# HEADs in flight at once for a bulk submission (the store client's pool holds 10 connections).
_HEAD_THREADS = 8
_KNOWN_SIZES = "dermasentinel_known_upload_sizes"


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


@dataclass
class BulkItem:
    """One entry of a bulk submission, parsed; ``problem`` when it was refused."""

    upload_id: uuid.UUID
    analysis: Analysis | None = None
    replayed: bool = False
    problem: Problem | None = None


def submit_many(
    context: AppContext,
    session: Session,
    tenant: TenantRef,
    items: list[tuple[uuid.UUID, AnalysisInputs, str | None, float | None]],
) -> list[BulkItem]:
    """Submit several direct uploads in one transaction, each exactly as ``POST /v1/analyses
    {upload_id}`` would (``api.services.analyses.submit_upload``: tenant, single use, expiry,
    size, idempotency, batch): an item refused (404, 409, 413) is reported with its problem
    and leaves the others alone. Items are (upload id, inputs,
    idempotency key, cancel_after seconds)."""
    from api.services import analyses as submissions  # it imports this module

    # The object store's answers first, all at once (each key follows from tenant and id): the
    # HEADs overlap instead of taking turns inside the transaction. Checked as one at a time.
    keys = [upload_key(tenant.id, upload_id) for upload_id, *_ in items]
    with ThreadPoolExecutor(min(_HEAD_THREADS, len(keys) or 1)) as pool:
        session.info[_KNOWN_SIZES] = dict(zip(keys, pool.map(lambda key: context.store.size(IMAGES, key), keys),
                                              strict=True))
    session.connection()  # begin: a rollback inside submit_upload shows as another transaction
    transaction = session.get_transaction()
    outcomes = []
    for upload_id, inputs, idempotency_key, cancel_after in items:
        # No savepoint per item: every refusal of submit_upload (idempotency mismatch, batch,
        # and each check of claim_for_analysis) is raised before that item writes anything,
        # so a refused item leaves nothing behind and the others' writes stand.
        try:
            submitted = submissions.submit_upload(
                context, session, tenant, upload_id, inputs, idempotency_key, cancel_after=cancel_after
            )
        except Problem as problem:
            if session.get_transaction() is not transaction:
                _lost_race()
            outcomes.append(BulkItem(upload_id, problem=problem))
            continue
        if session.get_transaction() is not transaction:
            _lost_race()
        outcomes.append(BulkItem(upload_id, analysis=submitted.analysis, replayed=submitted.replayed))
    session.info.pop(_KNOWN_SIZES, None)
    return outcomes


def _lost_race() -> None:
    # submit_upload lost an Idempotency-Key race to a concurrent request and rolled the whole
    # transaction back: nothing of this call is stored, and the whole call can be retried.
    raise Conflict(
        "another request used one of these idempotency keys at the same moment; "
        "nothing was submitted: retry the same request"
    )


def claim_for_analysis(
    context: AppContext, session: Session, tenant: TenantRef, upload_id: uuid.UUID, analysis_id: uuid.UUID
) -> Upload:
    """Mark the upload used by ``analysis_id``: once, by its own tenant, before it expires,
    and only when an image of an acceptable size was PUT."""
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
    known = session.info.get(_KNOWN_SIZES, {})
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

