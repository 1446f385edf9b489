"""Request schemas shared by the API and the client commands."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    UrlConstraints,
    WithJsonSchema,
)

Sex = Literal["male", "female", "unknown"]
Site = Literal[
    "head/neck",
    "upper extremity",
    "lower extremity",
    "torso",
    "palms/soles",
    "oral/genital",
    "unknown",
]
SEXES: tuple[str, ...] = get_args(Sex)
SITES: tuple[str, ...] = get_args(Site)
# Not starting with "-": a spreadsheet would read "-2+3" as a formula (CSV injection).
EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9._:/][A-Za-z0-9._:/\-]{0,199}$"


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
MIN_CANCEL_AFTER_SECONDS = 5.0


def parse_duration(value: object) -> float:
    """Seconds from ``Cancel-After`` syntax, as Replicate takes it: ``90s``, ``5m``,
    ``1h30m``; a bare number is seconds. At least 5 seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like 90s, 5m or 1h30m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.match(text)
            if not text or match is None:
                raise ValueError(f"{value!r} is not a duration like 90s, 5m or 1h30m") from None
            hours, minutes, secs = match.groups()
            seconds = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
    if not seconds >= MIN_CANCEL_AFTER_SECONDS:
        raise ValueError(f"must be at least {MIN_CANCEL_AFTER_SECONDS:g} seconds")
    return seconds


# The default MAX_CANCEL_AFTER_SECONDS (shared.config); an operator may lower it.
DOCUMENTED_MAX_CANCEL_AFTER = 30 * 24 * 3600
CANCEL_AFTER_SCHEMA = {
    "type": "number",
    "minimum": MIN_CANCEL_AFTER_SECONDS,
    "maximum": DOCUMENTED_MAX_CANCEL_AFTER,
    "description": "Deadline in seconds (at least 5, at most MAX_CANCEL_AFTER_SECONDS, 30 days by default); "
    "a duration string like 90s, 5m or 1h30m is accepted too",
}
# Documented as seconds; ``Cancel-After`` syntax is accepted as well (parse_duration).
def _within_documented_max(seconds: float) -> float:
    # The schema's bound; a lower MAX_CANCEL_AFTER_SECONDS is the route's to enforce.
    if seconds > DOCUMENTED_MAX_CANCEL_AFTER:
        raise ValueError(f"must be at most {DOCUMENTED_MAX_CANCEL_AFTER} seconds")
    return seconds


CancelAfter = Annotated[
    float, BeforeValidator(parse_duration), AfterValidator(_within_documented_max), WithJsonSchema(CANCEL_AFTER_SCHEMA)
]


class AnalysisInputs(BaseModel):
    """The form fields of ``POST /v1/analyses`` (the image travels beside them)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    age: int | None = Field(default=None, ge=0, le=120)
    sex: Sex = "unknown"
    site: Site = "unknown"
    pixel_spacing_mm: float | None = Field(default=None, gt=0, le=10)
    external_id: str | None = Field(default=None, pattern=EXTERNAL_ID_PATTERN)
    batch_id: uuid.UUID | None = None
    priority: Literal["interactive", "bulk"] = "interactive"


class FeedbackIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {"agrees": False, "final_diagnosis": "dysplastic naevus", "histopathology": "mild atypia",
                 "notes": "excised 2026-11-20"}
            ]
        },
    )

    agrees: bool = Field(strict=True)  # JSON true/false only, never "yes" or 1
    final_diagnosis: str | None = Field(default=None, max_length=200)
    histopathology: str | None = Field(default=None, max_length=500)
    notes: str | None = Field(default=None, max_length=4000)


class BatchIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"name": "clinic backlog 2026-11", "external_id": "ward-7/2026-11",
                                         "cancel_after": 86400}]},
    )

    name: str = Field(min_length=1, max_length=200)
    external_id: str | None = Field(default=None, pattern=EXTERNAL_ID_PATTERN)
    # Items still unfinished this long after the batch was created end canceled (expired).
    cancel_after: CancelAfter | None = None


class UploadIn(BaseModel):
    """``POST /v1/uploads``: the type of the image that will be PUT."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    content_type: Literal["image/jpeg", "image/png"] = "image/jpeg"


EventType = Literal[
    "analysis.succeeded",
    "analysis.rejected",
    "analysis.failed",
    "analysis.canceled",
    "analysis.report_ready",
    "batch.completed",
]
# Documented as the event names (tests/api/test_openapi.py holds them equal to
# shared.events.EVENT_TYPES); checked by the service, whose 422 lists the choices.
EventFilter = Annotated[
    list[str],
    WithJsonSchema({"type": "array", "items": {"type": "string", "enum": list(get_args(EventType))}}),
]


AnalysisEventType = Literal[
    "analysis.succeeded",
    "analysis.rejected",
    "analysis.failed",
    "analysis.canceled",
    "analysis.report_ready",
]


def _event_list(value: object) -> object:
    """``webhook_events_filter`` as a list: a JSON array, or in a form a comma-separated
    string (``analysis.succeeded,analysis.rejected``) or a JSON array written as text."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError("is not a JSON array of event names") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class RequestWebhookIn(BaseModel):
    """The per-request webhook fields of ``POST /v1/analyses`` (docs/API_CONTRACT.md)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    webhook_url: Annotated[HttpUrl, UrlConstraints(max_length=2048)] | None = Field(
        default=None,
        description="Where to POST this analysis' events, signed like a registered endpoint's with the answer's "
        "`webhook.secret`; the same address rules as registered endpoints (422)",
    )
    webhook_events_filter: Annotated[list[AnalysisEventType], BeforeValidator(_event_list)] | None = Field(
        default=None,
        description="Which of this analysis' events to send (all when omitted); in a form, comma-separated",
    )


class WebhookEndpointIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {"url": "https://ehr.example.org/hooks/dermasentinel",
                 "events": ["analysis.succeeded", "analysis.rejected"], "description": "EHR inbox"}
            ]
        },
    )

    url: HttpUrl
    events: EventFilter | None = Field(default=None, description="Event types to deliver; all when omitted")
    description: str | None = Field(default=None, max_length=500)


class WebhookEndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(default=None, strict=True)
    events: EventFilter | None = Field(default=None, description="Event types to deliver; all when omitted")
    description: str | None = Field(default=None, max_length=500)


# ======================================================================== responses
# What the API answers, typed once: the routes declare these as ``response_model``, the
# OpenAPI document is generated from them, and clients (the CLI, integrators) can parse with
# them. Response models allow keys they do not declare (``extra="allow"``): a field a service
# adds reaches clients instead of being silently dropped, and tests/api/test_openapi.py fails
# until it is declared here (docs/API_CONTRACT.md, Decisions).

AnalysisStatusName = Literal["queued", "processing", "succeeded", "rejected", "failed", "canceled"]
Stage = Literal["segmentation", "classification", "reporting"]
Priority = Literal["interactive", "bulk"]
Diagnosis = Literal["melanoma", "benign"]
RiskBand = Literal["low", "medium", "high"]
WeightsStatus = Literal["trained", "synthetic", "untrained"]
CancelReason = Literal["requested", "batch_canceled", "expired"]
# The values of shared.models.DeliveryStatus (tests/shared/test_schemas.py checks they agree).
DeliveryStatusName = Literal["pending", "delivered", "failed", "skipped"]

# ISO 8601 in UTC with a ``Z``, exactly as the API has always written it (kept a string so the
# text on the wire never changes).
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"}, examples=["2026-11-28T03:12:00.123456Z"])]
Url = Annotated[str, Field(json_schema_extra={"format": "uri"})]


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class FieldError(ResponseModel):
    field: str
    message: str


class ProblemDetails(ResponseModel):
    """RFC 7807 ``application/problem+json``: every error the API answers."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "https://dermasentinel.dev/problems/not_found",
                    "title": "Not found",
                    "status": 404,
                    "detail": "no analysis with id '0b6f…'",
                    "instance": "/v1/analyses/0b6f…",
                }
            ]
        },
    )

    type: Url = Field(description="`https://dermasentinel.dev/problems/<code>`: the stable, machine-readable code")
    title: str
    status: int = Field(ge=100, le=599)
    detail: str = Field(description="What was wrong and what to do, for people")
    instance: str = Field(description="The request path")
    errors: list[FieldError] | None = Field(default=None, description="One entry per invalid field (422)")


# ---------------------------------------------------------------- analyses


class AnalysisLinks(ResponseModel):
    self: Url
    report: Url
    fhir: Url


class AnalysisInputsOut(ResponseModel):
    age: int | None
    sex: Sex
    site: Site
    pixel_spacing_mm: float | None


class ImageInfo(ResponseModel):
    """The stored (cleaned) image; empty until a direct upload has been ingested."""

    content_type: str | None
    width: int | None
    height: int | None
    sha256: str | None


class Segmentation(ResponseModel):
    coverage: float = Field(ge=0, le=1, description="Share of the image the lesion mask covers")


class Concepts(ResponseModel):
    """ABCD concepts measured on the lesion mask."""

    asymmetry: float
    border: float
    color: float
    diameter_px: float
    diameter_mm: float | None = Field(default=None, description="Only when `pixel_spacing_mm` was given")


class Equity(ResponseModel):
    ita_degrees: float = Field(description="Individual Typology Angle of the skin around the lesion")
    skin_group: str = Field(examples=["intermediate"])
    bias_warning: bool = Field(description="ITA <= 10 degrees: skin tones under-represented in training data")


class Quality(ResponseModel):
    blur_score: float


class AnalysisResult(ResponseModel):
    """A succeeded analysis' findings. Research use only, not a certified medical device:
    read `model.weights` first; `untrained` output carries no meaning."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "diagnosis": "benign", "probability": 0.31, "uncertainty": 0.02,
                    "tta_probabilities": [0.3, 0.31, 0.32, 0.3, 0.32], "risk_band": "low",
                    "segmentation": {"coverage": 0.2},
                    "concepts": {"asymmetry": 0.12, "border": 0.2, "color": 0.31, "diameter_px": 120.0,
                                 "diameter_mm": None},
                    "equity": {"ita_degrees": 35.2, "skin_group": "intermediate", "bias_warning": False},
                    "quality": {"blur_score": 210.4}, "uncertainty_level": "low",
                }
            ]
        },
    )

    diagnosis: Diagnosis
    probability: float = Field(ge=0, le=1, description="Melanoma probability, mean of the TTA views")
    uncertainty: float = Field(ge=0, description="Population std of the TTA views")
    tta_probabilities: list[float]
    risk_band: RiskBand = Field(description="high > 0.8, medium > 0.5, else low")
    segmentation: Segmentation
    concepts: Concepts
    equity: Equity
    quality: Quality
    uncertainty_level: Literal["low", "moderate", "high"] | None = Field(
        default=None, description="`uncertainty` in words, from the one set of clinical rules"
    )
    scribe_note: str | None = Field(default=None, description="Draft clinical note (research use only)")


class Rejection(ResponseModel):
    code: str = Field(
        description="`blurry`, `no_lesion` or `unreadable_image` (or the API's code for a refused upload)"
    )
    detail: str
    scores: dict[str, Any] | None = Field(default=None, description="The gate's scores, when a gate refused")
    at: str | None = Field(default=None, description="`ingest` when a direct upload was refused before analysis")
    advice: str | None = Field(default=None, description="What to do: how to retake the photo")


class ErrorInfo(ResponseModel):
    code: str
    detail: str
    advice: str | None = Field(default=None, description="What to do about it")


class Checkpoint(ResponseModel):
    name: str
    version: str
    sha256: str | None
    seed: int | None = None
    registry_id: str | None = Field(default=None, description="The model registry row it came from, if any")


class OperatingPoint(ResponseModel):
    """How the probability became a decision: temperature scaling, then the threshold."""

    threshold: float = Field(description="Melanoma when the (calibrated) probability is above it")
    temperature: float = Field(description="Temperature scaling fitted on the validation fold (1.0: none)")
    target_sensitivity: float | None = Field(description="The sensitivity the threshold was chosen for")
    chosen_on: str = Field(description="`validation` when chosen by training, `default` for the design's 0.5")


class ModelInfo(ResponseModel):
    """Provenance of the networks that produced the result."""

    segmenter: str = Field(description="`unet` or `classical`")
    weights: WeightsStatus
    backend: str | None = Field(default=None, description="`torch-cpu`, `torch-cuda`, `openvino-cpu`, …")
    precision: str | None = None
    scalpel: Checkpoint | None = None
    fusion: Checkpoint | None = None
    version: str | None = Field(default=None, description="The classifier's version: it makes the diagnosis")
    operating_point: OperatingPoint | None = None
    threshold: float | None = Field(
        default=None, description="Present when a validated operating point replaced the default threshold"
    )
    training_data: str | None = Field(default=None, description="The training data named in the model card")
    banner: str | None = Field(
        default=None, description="Shown above any output of weights that are not `trained`; null for trained weights"
    )


class AnalysisSummary(ResponseModel):
    """An analysis in a list (no model provenance, links or artifacts)."""

    id: uuid.UUID
    external_id: str | None
    batch_id: uuid.UUID | None
    status: AnalysisStatusName
    stage: Stage | None
    priority: Priority
    attempt: int
    created_at: Timestamp
    started_at: Timestamp | None
    completed_at: Timestamp | None
    inputs: AnalysisInputsOut
    image: ImageInfo
    result: AnalysisResult | None
    rejection: Rejection | None
    error: ErrorInfo | None
    deadline_at: Timestamp | None
    cancel_reason: CancelReason | None
    reprocessed_from: uuid.UUID | None = Field(
        default=None, description="The analysis this one re-ran on a newer model (both results are kept)"
    )
    weights: WeightsStatus | None = Field(
        default=None,
        description="The weights status of the model that ran (as `model.weights`), beside the result so lists "
        "show it too; null when no model ran. Anything but `trained` means the output is not clinically meaningful",
    )


class Artifacts(ResponseModel):
    """Presigned links, valid until `expires_at` (at most 15 minutes)."""

    image: Url | None = None
    mask: Url | None = None
    overlay: Url | None = None
    expires_at: Timestamp


class ReportState(ResponseModel):
    ready: bool
    created_at: Timestamp | None


class FeedbackRecord(ResponseModel):
    agrees: bool = Field(strict=True)  # JSON true/false only, never "yes" or 1
    final_diagnosis: str | None
    histopathology: str | None
    notes: str | None
    created_at: Timestamp


class AnalysisOut(AnalysisSummary):
    """One analysis: status, result, provenance, links and short-lived artifact URLs."""

    model: ModelInfo | None
    updated_at: Timestamp
    links: AnalysisLinks
    artifacts: Artifacts
    report: ReportState
    feedback: list[FeedbackRecord]
    webhook: AnalysisWebhook | None = Field(
        default=None, description="Only in the answer to a submission with `webhook_url`"
    )


class AnalysisPage(ResponseModel):
    data: list[AnalysisSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last")


class FeedbackOut(ResponseModel):
    analysis_id: uuid.UUID
    agrees: bool = Field(strict=True)  # JSON true/false only, never "yes" or 1
    final_diagnosis: str | None
    histopathology: str | None
    notes: str | None


# ---------------------------------------------------------------- batches

BatchState = Literal["open", "sealed", "completed"]


class StatusCounts(ResponseModel):
    queued: int = 0
    processing: int = 0
    succeeded: int = 0
    rejected: int = 0
    failed: int = 0
    canceled: int = 0


class BatchLinks(ResponseModel):
    self: Url
    seal: Url
    cancel: Url
    results: Url


class BatchSummary(ResponseModel):
    id: uuid.UUID
    name: str
    external_id: str | None
    state: BatchState
    created_at: Timestamp
    sealed_at: Timestamp | None
    completed_at: Timestamp | None
    deadline_at: Timestamp | None
    canceled_at: Timestamp | None
    counts: StatusCounts
    total: int
    links: BatchLinks


class BatchOut(BatchSummary):
    """A batch with its progress."""

    done: int
    percent_done: float
    throughput_per_minute: float | None
    eta_seconds: float | None
    eta_at: Timestamp | None


class BatchCanceled(BatchOut):
    canceled_now: int = Field(description="Items this call canceled (0 on a repeat)")


class BatchPage(ResponseModel):
    data: list[BatchSummary]
    next_cursor: str | None


class TriageItem(ResponseModel):
    rank: int
    analysis_id: uuid.UUID
    external_id: str | None
    status: AnalysisStatusName
    weights: WeightsStatus | None = Field(description="Anything but `trained`: the risk and diagnosis mean nothing")
    risk_band: RiskBand | None
    probability: float | None
    uncertainty: float | None
    needs_review: bool
    review_reason: str | None = Field(description="`;`-separated codes")
    diagnosis: Diagnosis | None
    skin_group: str | None
    ita_degrees: float | None
    bias_warning: bool | None
    rejection_code: str | None
    rejection_detail: str | None
    retake_advice: str | None
    error_code: str | None
    error_detail: str | None
    age: int | None
    sex: str | None
    site: str | None
    completed_at: Timestamp | None


class EquityRow(ResponseModel):
    skin_group: str
    items: int
    high_risk: int
    high_risk_share: float
    suspicious: int
    suspicious_share: float
    needs_review: int
    bias_warning: bool


class TriageSummaryOut(ResponseModel):
    counts: StatusCounts
    total: int
    needs_review: int
    retake: dict[str, int] = Field(description="Rejections per code")
    review_rule: str
    equity: list[EquityRow]
    weights: dict[str, int] = Field(description="Results per weights status")
    weights_warning: str | None = Field(description="Set when any result came from weights that are not `trained`")


class BatchResults(ResponseModel):
    batch: BatchOut
    items: list[TriageItem]
    summary: TriageSummaryOut


# ---------------------------------------------------------------- keys, uploads


class ApiKeyOut(ResponseModel):
    id: uuid.UUID
    prefix: str
    label: str | None
    created_at: Timestamp
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None
    active: bool


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The API key itself (`dsk_…`), shown only in this answer")


class ApiKeyList(ResponseModel):
    data: list[ApiKeyOut]


class UploadNext(ResponseModel):
    method: Literal["POST"]
    path: str
    body: dict[str, str]


class UploadOut(ResponseModel):
    id: uuid.UUID
    url: Url = Field(description="PUT the image here, with the `headers` given")
    method: Literal["PUT"]
    headers: dict[str, str]
    expires_at: Timestamp
    submit_before: Timestamp
    max_bytes: int
    content_type: Literal["image/jpeg", "image/png"]
    next: UploadNext


# ---------------------------------------------------------------- webhooks


class WebhookEndpointOut(ResponseModel):
    id: uuid.UUID
    url: Url
    events: list[str] = Field(description="Event types delivered; empty means all")
    description: str | None
    enabled: bool
    disabled_reason: str | None
    failing_since: Timestamp | None
    created_at: Timestamp
    previous_secret_expires_at: Timestamp | None
    analysis_id: uuid.UUID | None = Field(
        default=None, description="Only on a per-request webhook (`webhook_url`): the one analysis it serves"
    )


class AnalysisWebhook(ResponseModel):
    """The per-request webhook of ``POST /v1/analyses`` (``webhook_url``)."""

    id: uuid.UUID = Field(description="A webhook endpoint of this analysis only: its deliveries are at "
                          "`/v1/webhook-endpoints/{id}/deliveries`")
    url: Url
    events: list[str] = Field(description="Event types delivered; empty means all of this analysis' events")
    secret: str = Field(description="The signing secret (`whsec_…`, Standard Webhooks); only in the answers to "
                        "the submission (and its idempotent replays)")


class WebhookEndpointWithSecret(WebhookEndpointOut):
    secret: str = Field(description="The signing secret (`whsec_…`), shown only in this answer")


class WebhookEndpointList(ResponseModel):
    data: list[WebhookEndpointOut]


class WebhookTestSent(ResponseModel):
    event_id: str


class DeliveryAttempt(ResponseModel):
    attempted_at: Timestamp
    status_code: int | None
    latency_ms: float | None
    error: str | None
    response_excerpt: str | None


class DeliveryOut(ResponseModel):
    id: uuid.UUID
    event_id: str
    status: DeliveryStatusName
    attempt_count: int
    next_attempt_at: Timestamp | None
    last_status_code: int | None
    last_error: str | None
    created_at: Timestamp
    delivered_at: Timestamp | None
    attempts: list[DeliveryAttempt]


class DeliveryList(ResponseModel):
    data: list[DeliveryOut]


class ResendAccepted(ResponseModel):
    id: uuid.UUID
    status: DeliveryStatusName


# ---------------------------------------------------------------- health


class Liveness(ResponseModel):
    status: Literal["ok"]


class Check(ResponseModel):
    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class Readiness(ResponseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Check] = Field(description="database, broker, object_store, gpu_workers")


# ---------------------------------------------------------------- webhook events
# Bodies the API POSTs to registered endpoints (Standard Webhooks): ``{type, timestamp, data}``.


class EventResultSummary(ResponseModel):
    diagnosis: Diagnosis
    probability: float
    uncertainty: float
    risk_band: RiskBand


class CodeOnly(ResponseModel):
    code: str


class EventRejection(CodeOnly):
    advice: str = Field(description="What to do about it (retake advice), in the report's wording")


class AnalysisEventData(ResponseModel):
    id: uuid.UUID
    status: AnalysisStatusName
    external_id: str | None
    batch_id: uuid.UUID | None
    links: AnalysisLinks
    result: EventResultSummary | None = Field(default=None, description="analysis.succeeded and its report_ready")
    weights: WeightsStatus | None = Field(default=None, description="Present with a result: read it before the result")
    rejection: EventRejection | None = None
    error: CodeOnly | None = None
    reason: CancelReason | None = Field(default=None, description="analysis.canceled: why")


class BatchEventLinks(ResponseModel):
    self: Url
    results: Url


class BatchCompletedData(ResponseModel):
    id: uuid.UUID
    name: str
    external_id: str | None
    counts: StatusCounts
    weights: dict[str, int] = Field(description="Results per weights status")
    weights_warning: str | None = Field(description="Set when any result came from weights that are not `trained`")
    links: BatchEventLinks


class AnalysisEvent(ResponseModel):
    type: Literal[
        "analysis.succeeded", "analysis.rejected", "analysis.failed", "analysis.canceled", "analysis.report_ready"
    ]
    timestamp: Timestamp
    data: AnalysisEventData


class BatchCompletedEvent(ResponseModel):
    type: Literal["batch.completed"]
    timestamp: Timestamp
    data: BatchCompletedData


class WebhookTestData(ResponseModel):
    endpoint_id: uuid.UUID
    message: str


class WebhookTestEvent(ResponseModel):
    type: Literal["webhook.test"]
    timestamp: Timestamp
    data: WebhookTestData
