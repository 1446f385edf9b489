"""Postgres schema. Postgres is the source of truth for every job; migrations create it."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.clinical.disposition import CLINICIAN_REVIEW
from shared.clinical.rules import TRAINED
from shared.scopes import ALL_SCOPES_SQL

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class AnalysisStatus(enum.StrEnum):
    queued = "queued"
    processing = "processing"
    succeeded = "succeeded"
    rejected = "rejected"
    failed = "failed"
    canceled = "canceled"


ACTIVE_STATUSES = frozenset({AnalysisStatus.queued, AnalysisStatus.processing})


class Priority(enum.StrEnum):
    interactive = "interactive"
    bulk = "bulk"


def _uuid() -> uuid.UUID:
    return uuid.uuid4()


TZ = DateTime(timezone=True)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    # `dermasentinel tenants disable`: every key answers 401 until `tenants enable` (issue 22).
    disabled_at: Mapped[datetime | None] = mapped_column(TZ)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(TZ)
    # Written at most once a minute per key (shared.tenants.authenticate).
    last_used_at: Mapped[datetime | None] = mapped_column(TZ)
    # What the key may do (shared/scopes.py); keys made before scopes existed hold them all.
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text(ALL_SCOPES_SQL))


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    external_id: Mapped[str | None] = mapped_column(String(200))
    sealed_at: Mapped[datetime | None] = mapped_column(TZ)
    completed_at: Mapped[datetime | None] = mapped_column(TZ)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    # Direct uploads and expiry (docs/UPLOADS_AND_EXPIRY.md): items added get this deadline
    # (or their own, if sooner); ``canceled_at`` is set by POST /v1/batches/{id}/cancel.
    deadline_at: Mapped[datetime | None] = mapped_column(TZ)
    canceled_at: Mapped[datetime | None] = mapped_column(TZ)


# The generated columns of ``analyses`` (migration 0010 writes the same expressions).
WEIGHTS_STATUS_SQL = "model ->> 'weights'"
SHOWN_DISPOSITION_SQL = (
    "CASE WHEN status = 'succeeded' THEN "
    f"CASE WHEN (model ->> 'weights') IS DISTINCT FROM '{TRAINED}' THEN '{CLINICIAN_REVIEW}' "
    "ELSE result ->> 'disposition' END END"
)


# The model version a stored analysis names (its Fusion's: it makes the diagnosis), and the final
# statuses monitoring counts (issue 24).
MODEL_VERSION_SQL = "model ->> 'version'"
FINAL_STATUSES_SQL = "('succeeded', 'rejected', 'failed')"


class Analysis(Base):
    __tablename__ = "analyses"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_analyses_tenant_idempotency_key"),
        Index("ix_analyses_tenant_created", "tenant_id", "created_at", "id"),
        # Batch progress, the triage summary and `batch.completed` count statuses, shown
        # dispositions and weights from this index alone (no row, no JSON is read).
        Index("ix_analyses_batch_tally", "batch_id", "status", "shown_disposition", "weights_status"),
        # Batch throughput: items finished in the last minutes, without a scan of the batch.
        Index("ix_analyses_batch_completed", "batch_id", "completed_at"),
        Index("ix_analyses_tenant_external", "tenant_id", "external_id"),
        Index(
            "ix_analyses_active",
            "status",
            "priority",
            "created_at",
            postgresql_where=text("status IN ('queued', 'processing')"),
        ),
        # Fault tolerance (docs/FAULTS.md): the sweeper's two small work lists.
        Index(
            "ix_analyses_retry_due", "not_before", postgresql_where=text("status = 'queued' AND not_before IS NOT NULL")
        ),
        Index(
            "ix_analyses_report_pending",
            "report_requested_at",
            postgresql_where=text("report_requested_at IS NOT NULL"),
        ),
        # Direct uploads and expiry (docs/UPLOADS_AND_EXPIRY.md): the sweeper's lists.
        Index(
            "ix_analyses_deadline",
            "deadline_at",
            postgresql_where=text("status IN ('queued', 'processing') AND deadline_at IS NOT NULL"),
        ),
        Index(
            "ix_analyses_ingest_pending",
            "ingest_requested_at",
            postgresql_where=text("ingest_requested_at IS NOT NULL"),
        ),
        Index(
            "uq_analyses_batch_row",
            "batch_id",
            "batch_row",
            unique=True,
            postgresql_where=text("batch_row IS NOT NULL"),
        ),
        # Monitoring (issue 24, docs/MONITORING.md): a (tenant, model version)'s window is its
        # newest final results, read backwards from this index with a LIMIT.
        Index(
            "ix_analyses_monitor",
            "tenant_id",
            text(f"({MODEL_VERSION_SQL})"),
            "completed_at",
            postgresql_where=text(f"status IN {FINAL_STATUSES_SQL}"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"))
    external_id: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[str] = mapped_column(String(16), default=Priority.interactive.value)

    status: Mapped[str] = mapped_column(String(16), default=AnalysisStatus.queued.value)
    stage: Mapped[str | None] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer, default=0)

    age: Mapped[int | None] = mapped_column(Integer)
    sex: Mapped[str] = mapped_column(String(16), default="unknown")
    site: Mapped[str] = mapped_column(String(32), default="unknown")
    pixel_spacing_mm: Mapped[float | None] = mapped_column(Float)
    # Issue 23: the client's patient and encounter (shared/fhir_refs.py), as submitted.
    patient_reference: Mapped[str | None] = mapped_column(String(512))
    encounter_reference: Mapped[str | None] = mapped_column(String(512))

    image_key: Mapped[str] = mapped_column(String(300))
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_content_type: Mapped[str] = mapped_column(String(32))
    image_width: Mapped[int] = mapped_column(Integer)
    image_height: Mapped[int] = mapped_column(Integer)
    mask_key: Mapped[str | None] = mapped_column(String(300))
    overlay_key: Mapped[str | None] = mapped_column(String(300))

    result: Mapped[dict | None] = mapped_column(JSONB)
    rejection: Mapped[dict | None] = mapped_column(JSONB)
    error: Mapped[dict | None] = mapped_column(JSONB)
    model: Mapped[dict | None] = mapped_column(JSONB)
    probability: Mapped[float | None] = mapped_column(Float)
    # Kept by Postgres from the stored JSON (generated, stored columns), so whoever writes a row
    # (the worker, a migration, a test) cannot leave them stale: the weights status, and the
    # disposition every surface shows (the SQL twin of ``shared.clinical.disposition_of``).
    weights_status: Mapped[str | None] = mapped_column(Text, Computed(WEIGHTS_STATUS_SQL, persisted=True))
    shown_disposition: Mapped[str | None] = mapped_column(
        Text, Computed(SHOWN_DISPOSITION_SQL, persisted=True)
    )

    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    idempotency_expires_at: Mapped[datetime | None] = mapped_column(TZ)

    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    enqueued_at: Mapped[datetime | None] = mapped_column(TZ)
    started_at: Mapped[datetime | None] = mapped_column(TZ)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TZ)
    completed_at: Mapped[datetime | None] = mapped_column(TZ)

    # Fault tolerance (docs/FAULTS.md). ``attempt`` stays the fencing token and grows on every
    # claim; ``transient_retries`` counts the claims given back after an infrastructure error,
    # so attempts the job itself spent are ``attempt - transient_retries``.
    transient_retries: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Not claimable before this moment (backoff after an infrastructure error).
    not_before: Mapped[datetime | None] = mapped_column(TZ)
    # The worker process ("gpu@host:pid") that holds or last held the claim.
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    # When the PDF/FHIR report was last asked for; NULL once it exists (or never needed).
    report_requested_at: Mapped[datetime | None] = mapped_column(TZ)

    # Direct uploads and expiry (docs/UPLOADS_AND_EXPIRY.md).
    # Past this moment an unfinished job ends ``canceled`` with ``cancel_reason = 'expired'``.
    deadline_at: Mapped[datetime | None] = mapped_column(TZ)
    # Why a canceled job was canceled: requested, batch_canceled, expired.
    cancel_reason: Mapped[str | None] = mapped_column(String(32))
    # The direct upload the image came from, and, while its ingest (check, clean, store)
    # has not happened, when it was last asked for; the job is not claimable until then.
    upload_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    ingest_requested_at: Mapped[datetime | None] = mapped_column(TZ)
    # Model lifecycle (docs/MODELS.md): a re-run of another analysis on a newer model keeps
    # both results; this row is the re-run and names the analysis it repeats.
    reprocessed_from: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("analyses.id", ondelete="SET NULL"), index=True
    )
    # DICOM in (issue 23; docs/DICOM.md): the study, series and SOP instance UIDs, SOP class
    # and transfer syntax of the instance the image came from (shared.schemas.DicomSource);
    # NULL for JPEG and PNG uploads. Never any other attribute of its header.
    dicom_source: Mapped[dict | None] = mapped_column(JSONB)
    # Issue 25 (shared/tracing.py): the W3C traceparent of the request that created the job, so
    # every worker span and delivery of it continues the caller's trace across the outbox.
    traceparent: Mapped[str | None] = mapped_column(String(55))
    # File-based batches (issue 25): the item's row in its batch's archive (1-based; NULL for
    # items submitted one by one). Unique per batch, so an unpack that is retried cannot make
    # a row's item twice.
    batch_row: Mapped[int | None] = mapped_column(Integer)


class AnalysisTransition(Base):
    """Every change of an analysis' ``status`` or ``stage``, appended by a trigger on ``analyses``
    in the transaction that made it (migration 0018), whoever wrote it: the record live progress
    (``GET /v1/analyses/{id}/events``) replays and resumes from. Per analysis, ids grow in
    commit order. No PHI."""

    __tablename__ = "analysis_transitions"
    __table_args__ = (
        Index("ix_analysis_transitions_analysis", "analysis_id", "id"),
        Index("ix_analysis_transitions_batch", "batch_id", "id", postgresql_where=text("batch_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    analysis_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"))
    # The analysis' batch when it changed: a batch's stream notices its items' changes by this.
    batch_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    status: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class Upload(Base):
    """A presigned PUT handed to a client: tenant-owned, single-use, expiring."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_usable_until", "usable_until"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    object_key: Mapped[str] = mapped_column(String(300))
    content_type: Mapped[str] = mapped_column(String(32))
    url_expires_at: Mapped[datetime] = mapped_column(TZ)
    usable_until: Mapped[datetime] = mapped_column(TZ)
    used_at: Mapped[datetime | None] = mapped_column(TZ)
    analysis_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class ArchiveState(enum.StrEnum):
    """A batch archive's life (issue 25): ``awaiting`` its PUT (the batch is open), ``unpacking``
    once the batch is sealed, then ``done`` (every row read), ``refused`` (the archive itself
    is unusable: not a zip, no manifest.csv, too many rows) or ``stopped`` (the batch was
    canceled, or its deadline passed, before every row was read)."""

    awaiting = "awaiting"
    unpacking = "unpacking"
    done = "done"
    refused = "refused"
    stopped = "stopped"


class BatchArchive(Base):
    """A batch's one archive: a presigned PUT, unpacked into items by the ingest lane."""

    __tablename__ = "batch_archives"
    __table_args__ = (
        Index(
            "ix_batch_archives_ingest_pending",
            "ingest_requested_at",
            postgresql_where=text("ingest_requested_at IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), unique=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    format: Mapped[str] = mapped_column(String(8))  # zip | tar | ndjson
    object_key: Mapped[str] = mapped_column(String(300))
    url_expires_at: Mapped[datetime] = mapped_column(TZ)
    state: Mapped[str] = mapped_column(String(16), default=ArchiveState.awaiting.value)
    # While unpacking: when the ingest lane was last asked (or last reported progress); the
    # sweeper re-sends the wake-up when this grows old. NULL otherwise.
    ingest_requested_at: Mapped[datetime | None] = mapped_column(TZ)
    # Rows 1..next_row are settled (an item made, or the row refused): a retry starts after it.
    next_row: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    items: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    refused: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(TZ)


class BatchRowError(Base):
    """A row of a batch's archive that was refused (no item was made for it): what the errors
    file lists. Row 0 is the archive itself, when it could not be read at all."""

    __tablename__ = "batch_row_errors"

    batch_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    row: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # The row's file name (zip, tar) or upload id (NDJSON) as given, cut to 300 characters.
    file: Mapped[str | None] = mapped_column(String(300))
    code: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text)
    errors: Mapped[list | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class Report(Base):
    __tablename__ = "reports"

    analysis_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("analyses.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    pdf_key: Mapped[str] = mapped_column(String(300))
    pdf_sha256: Mapped[str] = mapped_column(String(64))
    fhir: Mapped[dict] = mapped_column(JSONB)
    render_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    analysis_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("analyses.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    agrees: Mapped[bool] = mapped_column(Boolean)
    final_diagnosis: Mapped[str | None] = mapped_column(String(200))
    histopathology: Mapped[str | None] = mapped_column(String(500))
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class AnalysisQuestion(Base):
    """A clinician's question about one analysis and the answers given (issue 15; audit)."""

    __tablename__ = "analysis_questions"
    __table_args__ = (Index("ix_analysis_questions_analysis_created", "analysis_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    analysis_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    question: Mapped[str] = mapped_column(Text)
    # shared.questions.GroundedAnswer.as_dict(): text, cited, intents, outside_scope.
    answer: Mapped[dict] = mapped_column(JSONB)
    # Only with VQA_MODEL_DIR: {status: pending|done|failed, text, model, label}.
    model_answer: Mapped[dict | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class Event(Base):
    """Outbox: written in the same transaction as the state change it reports."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_undispatched", "created_at", postgresql_where=text("dispatched_at IS NULL")),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(64))
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    payload: Mapped[dict] = mapped_column(JSONB)
    only_endpoint_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The span that recorded the event (shared/tracing.py): each delivery continues its trace.
    traceparent: Mapped[str | None] = mapped_column(String(55))
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    dispatched_at: Mapped[datetime | None] = mapped_column(TZ)


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        # The tenant-wide endpoints (fan-out, list, quota) without the per-request ones.
        Index("ix_webhook_endpoints_tenant_shared", "tenant_id", postgresql_where=text("analysis_id IS NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(500))
    events: Mapped[list] = mapped_column(JSONB, default=list)
    # Fernet tokens under SECRET_KEY (shared.security.SecretBox); never the plaintext.
    secret_encrypted: Mapped[str] = mapped_column(Text)
    # After a rotation the old secret also signs until this moment (Standard Webhooks
    # allows several signatures), so receivers can switch without dropping events.
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(TZ)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(300))
    failing_since: Mapped[datetime | None] = mapped_column(TZ)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    # A per-request webhook (`webhook_url` on POST /v1/analyses): this analysis' events only;
    # deleted with the analysis. NULL for the tenant-wide endpoints.
    analysis_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("analyses.id", ondelete="CASCADE"), unique=True, index=True
    )
    # What receives the events (issue 23; worker/destinations.py): a signed webhook, a FHIR
    # Subscription's rest-hook, an EHR's FHIR server (write-back) or a PACS (DICOMweb STOW-RS).
    # The tenant's /v1/webhook-endpoints are the `webhook` ones; each other kind has its own
    # API. `config` holds what the kind needs besides the URL (never a secret: those are in
    # `secret_encrypted`).
    kind: Mapped[str] = mapped_column(String(32), server_default=text("'webhook'"))
    config: Mapped[dict] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class DeliveryStatus(enum.StrEnum):
    """A webhook delivery's state: stored in ``webhook_deliveries.status`` and shown in the deliveries log."""

    pending = "pending"
    delivered = "delivered"
    failed = "failed"  # the schedule ran out, or the endpoint was disabled while retrying
    skipped = "skipped"  # the endpoint was disabled before this delivery's turn


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
        Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        Index(
            "ix_webhook_deliveries_leased", "leased_at",
            postgresql_where=text("status = 'pending' AND leased_at IS NOT NULL"),
        ),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending.value)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(TZ, server_default=func.now())
    # When the current wake-up was sent or the current attempt claimed; None while the
    # delivery waits for next_attempt_at (worker.webhooks.dispatch_due finds lost ones by it).
    leased_at: Mapped[datetime | None] = mapped_column(TZ)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(TZ)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    status_code: Mapped[int | None] = mapped_column(Integer)
    # None when the target is internal and nothing answered: timing would tell ports apart.
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(String(500))
    response_excerpt: Mapped[str | None] = mapped_column(Text)


class ModelStatus(enum.StrEnum):
    candidate = "candidate"
    active = "active"
    retired = "retired"


class ModelVersion(Base):
    """A checkpoint in the object store and what is known about it (docs/MODELS.md). At most
    one row per kind is ``active``: the GPU workers run it, switching between passes."""

    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("kind", "version", name="uq_models_kind_version"),
        UniqueConstraint("kind", "sha256", name="uq_models_kind_sha256"),
        Index("uq_models_active_kind", "kind", unique=True, postgresql_where=text("status = 'active'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    kind: Mapped[str] = mapped_column(String(16))  # scalpel | fusion
    version: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(300))
    card: Mapped[dict] = mapped_column(JSONB, default=dict)
    metrics: Mapped[dict] = mapped_column(JSONB, default=dict)
    threshold: Mapped[float | None] = mapped_column(Float)
    temperature: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.candidate.value)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    activated_at: Mapped[datetime | None] = mapped_column(TZ)
    # Issue 24 (migration 0015). The ``evaluate`` reports stored against this model, by the
    # evaluation set's sha256: {sha256: {"evaluation_set", "stored_at", "report"}}
    # (``shared.model_registry.StoredEvaluation``). Deferred: the workers' poll of the active
    # rows never loads them.
    evaluations: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"), deferred=True)
    # What change control recorded: each activation's acceptance check, failed criteria and
    # override reason (``shared.model_acceptance.Governance``).
    governance: Mapped[dict] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))


# The system chain of the audit trail (actions that belong to no tenant: model activation,
# tenant creation and deletion) is kept under this id.
SYSTEM_CHAIN = uuid.UUID(int=0)


class AuditEvent(Base):
    """One access to patient data or one change, as the audit trail records it (issue 22;
    docs/AUDIT.md). Append-only: a trigger refuses UPDATE and TRUNCATE, and DELETE of any row
    no signed checkpoint covers. Each tenant's rows form a hash chain (``seq``, ``prev_hash``,
    ``hash``), so `dermasentinel audit verify` finds an edited or missing row. No foreign key:
    the trail outlives the tenant, its keys and its analyses, and it holds no PHI."""

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "seq", name="uq_audit_events_tenant_seq"),
        Index("ix_audit_events_tenant_time", "tenant_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    seq: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(TZ)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(32))
    status_code: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(100))
    client_address: Mapped[str | None] = mapped_column(String(100))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    detail: Mapped[dict | None] = mapped_column(JSONB)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """Where pruning cut a tenant's chain: the last pruned row's seq and hash, signed with the
    server's key, so the rows after it still verify (``AUDIT_RETENTION_DAYS``). Append-only
    like the trail itself."""

    __tablename__ = "audit_checkpoints"

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    through_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    through_hash: Mapped[str] = mapped_column(String(64))
    pruned_before: Mapped[datetime] = mapped_column(TZ)
    rows_pruned: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    signature: Mapped[str] = mapped_column(String(128))


class ModelReference(Base):
    """What a model's output looked like when it was evaluated (issue 24; docs/MONITORING.md):
    the distribution of its probabilities (101 quantiles), its skin-group mix and its
    rejections, recorded by `dermasentinel evaluate`. Keyed by the version results name
    (``model.version``), so models outside the registry (MODEL_DIR, seeded untrained
    weights) have one too. Monitoring compares every window of that version with it."""

    __tablename__ = "model_references"

    model_version: Mapped[str] = mapped_column(String(100), primary_key=True)
    fusion_sha256: Mapped[str | None] = mapped_column(String(64))
    # shared.schemas.monitoring.Reference
    reference: Mapped[dict] = mapped_column(JSONB)
    recorded_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class DriftEpisode(Base):
    """A drift detected on one tenant's results of one model version (issue 24), open until an
    operator clears it (`dermasentinel monitor clear`). At most one is open per (tenant,
    version): while it is, no further `model.drift_detected` event is sent for them. An open
    episode whose ``action`` is ``review_all`` is the tenant's safety mode: every new result
    is ``clinician_review`` with the reason ``drift``."""

    __tablename__ = "drift_episodes"
    __table_args__ = (
        Index(
            "uq_drift_episodes_open", "tenant_id", "model_version", unique=True,
            postgresql_where=text("cleared_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(100))
    opened_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    # ``alert`` or ``review_all`` (DRIFT_ACTION when it opened).
    action: Mapped[str] = mapped_column(String(16))
    # The measures that crossed, the window and the thresholds (shared.schemas.monitoring.DriftMeasures).
    measures: Mapped[dict] = mapped_column(JSONB)
    event_id: Mapped[str | None] = mapped_column(String(64))
    cleared_at: Mapped[datetime | None] = mapped_column(TZ)
    cleared_by: Mapped[str | None] = mapped_column(String(200))


class RolloutMode(enum.StrEnum):
    shadow = "shadow"
    canary = "canary"


class ModelRollout(Base):
    """A candidate model run beside the active one (issue 24; docs/MODELS.md): a **shadow** runs
    on a share of live jobs after their result is stored and keeps its outputs apart
    (``shadow_outputs``); a **canary** answers a share of new jobs itself, chosen by a stable
    hash of the analysis id, until it is promoted, stopped or rolled back. At most one of each
    mode is open per kind (a partial unique index)."""

    __tablename__ = "model_rollouts"
    __table_args__ = (
        Index("uq_model_rollouts_open", "kind", "mode", unique=True, postgresql_where=text("ended_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    kind: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(16))  # RolloutMode
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    # A canary's incumbent: the model active when it began, whose results it is judged against.
    incumbent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    fraction: Mapped[float] = mapped_column(Float)  # share of jobs, in (0, 1]
    started_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    started_by: Mapped[str] = mapped_column(String(200))
    ended_at: Mapped[datetime | None] = mapped_column(TZ)
    # stopped | promoted | rolled_back | replaced
    ended_reason: Mapped[str | None] = mapped_column(String(32))
    ended_by: Mapped[str | None] = mapped_column(String(200))
    # A rollback's measures and bounds (shared.model_rollout.CanaryVerdict).
    verdict: Mapped[dict | None] = mapped_column(JSONB)


class ShadowOutput(Base):
    """What a shadowed candidate said of one analysis, beside what the active model said
    (issue 24): never shown to the tenant, read by ``dermasentinel models compare``."""

    __tablename__ = "shadow_outputs"
    __table_args__ = (
        UniqueConstraint("analysis_id", "model_id", name="uq_shadow_outputs_analysis_model"),
        Index("ix_shadow_outputs_model", "model_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=_uuid)
    analysis_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))  # the shadow's outcome: succeeded | rejected | failed
    probability: Mapped[float | None] = mapped_column(Float)
    disposition: Mapped[str | None] = mapped_column(String(32))
    rejection: Mapped[str | None] = mapped_column(String(32))
    # The active model's outcome of the same analysis, as the worker had it before storing it.
    active_version: Mapped[str | None] = mapped_column(String(100))
    active_status: Mapped[str] = mapped_column(String(16))
    active_probability: Mapped[float | None] = mapped_column(Float)
    active_disposition: Mapped[str | None] = mapped_column(String(32))
    skin_group: Mapped[str | None] = mapped_column(String(32))  # the active result's ITA group
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
