"""The API's answers as typed models, one class per OpenAPI component schema of the same name.

Written from the API's OpenAPI document and kept equal to it by a test (tests/clients/
test_models.py compares each class's fields, and which of them are required, with the live
``app.openapi()``). Enumerations are plain ``str`` and unknown fields are kept (``extra="allow"``),
so an API that adds a value or a field does not break an older client. Timestamps are the API's
ISO 8601 text and ids its UUID text."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class AnalysisInputsOut(_Model):
    age: int | None
    sex: str
    site: str
    pixel_spacing_mm: float | None
    patient_reference: str | None = None
    encounter_reference: str | None = None


class ImageInfo(_Model):
    """The stored (cleaned) image; empty until a direct upload has been ingested."""

    content_type: str | None
    width: int | None
    height: int | None
    sha256: str | None


class Segmentation(_Model):
    coverage: float


class Concepts(_Model):
    """ABCD concepts measured on the lesion mask."""

    asymmetry: float
    border: float
    color: float
    diameter_px: float
    diameter_mm: float | None = None


class Equity(_Model):
    ita_degrees: float
    skin_group: str
    bias_warning: bool


class Quality(_Model):
    blur_score: float


class AnalysisResult(_Model):
    """A succeeded analysis' findings. Research use only, not a certified medical device: read `model.weights`
    first; `untrained` output carries no meaning.
    """

    diagnosis: str
    probability: float
    uncertainty: float
    tta_probabilities: list[float]
    risk_band: str
    segmentation: Segmentation
    concepts: Concepts
    equity: Equity
    quality: Quality
    uncertainty_level: str | None = None
    scribe_note: str | None = None
    disposition: str | None = None
    disposition_reasons: list[str] = Field(default_factory=list)
    safety_netting: str | None = None
    notice: str | None = None


class Rejection(_Model):
    code: str
    detail: str
    scores: dict[str, Any] | None = None
    at: str | None = None
    advice: str | None = None


class ErrorInfo(_Model):
    code: str
    detail: str
    advice: str | None = None


class Checkpoint(_Model):
    name: str
    version: str
    sha256: str | None
    seed: int | None = None
    registry_id: str | None = None


class OperatingPoint(_Model):
    """How the probability became a decision: temperature scaling, then the threshold."""

    threshold: float
    temperature: float
    target_sensitivity: float | None
    chosen_on: str
    rule_out_threshold: float | None = None
    rule_out_sensitivity: float | None = None


class ModelInfo(_Model):
    """Provenance of the networks that produced the result."""

    segmenter: str
    weights: str
    backend: str | None = None
    precision: str | None = None
    scalpel: Checkpoint | None = None
    fusion: Checkpoint | None = None
    version: str | None = None
    rollout: str | None = None  # "canary" when a canary version answered (issue 24)
    operating_point: OperatingPoint | None = None
    threshold: float | None = None
    training_data: str | None = None
    banner: str | None = None


class DicomSource(_Model):
    """The DICOM instance the image came from (issue 23; docs/DICOM.md): its identifiers only, kept so that the
    DICOM Segmentation and Structured Report can reference it. Never a name, patient id, date or any other
    attribute of its header.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


class AnalysisLinks(_Model):
    self: str
    report: str
    fhir: str


class Artifacts(_Model):
    """Presigned links, valid until `expires_at` (at most 15 minutes)."""

    image: str | None = None
    mask: str | None = None
    overlay: str | None = None
    expires_at: str


class ReportState(_Model):
    ready: bool
    created_at: str | None


class FeedbackRecord(_Model):
    agrees: bool
    final_diagnosis: str | None
    histopathology: str | None
    notes: str | None
    created_at: str


class AnalysisWebhook(_Model):
    """The per-request webhook of ``POST /v1/analyses`` (``webhook_url``)."""

    id: str
    url: str
    events: list[str]
    secret: str


class AnalysisOut(_Model):
    """One analysis: status, result, provenance, links and short-lived artifact URLs."""

    id: str
    external_id: str | None
    batch_id: str | None
    status: str
    stage: str | None
    priority: str
    attempt: int
    created_at: str
    started_at: str | None
    completed_at: str | None
    inputs: AnalysisInputsOut
    image: ImageInfo
    result: AnalysisResult | None
    rejection: Rejection | None
    error: ErrorInfo | None
    deadline_at: str | None
    cancel_reason: str | None
    reprocessed_from: str | None = None
    weights: str | None = None
    model: ModelInfo | None
    dicom_source: DicomSource | None = None
    updated_at: str
    links: AnalysisLinks
    artifacts: Artifacts
    report: ReportState
    feedback: list[FeedbackRecord]
    webhook: AnalysisWebhook | None = None


class AnalysisSummary(_Model):
    """An analysis in a list (no model provenance, links or artifacts)."""

    id: str
    external_id: str | None
    batch_id: str | None
    status: str
    stage: str | None
    priority: str
    attempt: int
    created_at: str
    started_at: str | None
    completed_at: str | None
    inputs: AnalysisInputsOut
    image: ImageInfo
    result: AnalysisResult | None
    rejection: Rejection | None
    error: ErrorInfo | None
    deadline_at: str | None
    cancel_reason: str | None
    reprocessed_from: str | None = None
    weights: str | None = None


class AnalysisPage(_Model):
    data: list[AnalysisSummary]
    next_cursor: str | None


class StatusCounts(_Model):
    queued: int = 0
    processing: int = 0
    succeeded: int = 0
    rejected: int = 0
    failed: int = 0
    canceled: int = 0


class BatchLinks(_Model):
    self: str
    seal: str
    cancel: str
    results: str


class DispositionCounts(_Model):
    """Succeeded results per disposition, as each result shows it (`result.disposition`): results from weights that
    are not `trained` count as `clinician_review`. Results stored before dispositions existed (trained weights)
    have none and are in no count.
    """

    urgent_referral: int
    clinician_review: int
    routine: int


class BatchOut(_Model):
    """A batch with its progress."""

    id: str
    name: str
    external_id: str | None
    state: str
    created_at: str
    sealed_at: str | None
    completed_at: str | None
    deadline_at: str | None
    canceled_at: str | None
    counts: StatusCounts
    total: int
    links: BatchLinks
    dispositions: DispositionCounts
    done: int
    percent_done: float
    throughput_per_minute: float | None
    eta_seconds: float | None
    eta_at: str | None


class BatchSummary(_Model):
    id: str
    name: str
    external_id: str | None
    state: str
    created_at: str
    sealed_at: str | None
    completed_at: str | None
    deadline_at: str | None
    canceled_at: str | None
    counts: StatusCounts
    total: int
    links: BatchLinks


class BatchPage(_Model):
    data: list[BatchSummary]
    next_cursor: str | None


class BatchCanceled(_Model):
    id: str
    name: str
    external_id: str | None
    state: str
    created_at: str
    sealed_at: str | None
    completed_at: str | None
    deadline_at: str | None
    canceled_at: str | None
    counts: StatusCounts
    total: int
    links: BatchLinks
    dispositions: DispositionCounts
    done: int
    percent_done: float
    throughput_per_minute: float | None
    eta_seconds: float | None
    eta_at: str | None
    canceled_now: int


class TriageItem(_Model):
    rank: int
    analysis_id: str
    external_id: str | None
    status: str
    weights: str | None
    risk_band: str | None
    probability: float | None
    uncertainty: float | None
    needs_review: bool
    review_reason: str | None
    diagnosis: str | None
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
    completed_at: str | None
    disposition: str | None
    disposition_reasons: str | None


class EquityRow(_Model):
    skin_group: str
    items: int
    high_risk: int
    high_risk_share: float
    suspicious: int
    suspicious_share: float
    needs_review: int
    bias_warning: bool


class TriageSummaryOut(_Model):
    counts: StatusCounts
    total: int
    needs_review: int
    retake: dict[str, int]
    review_rule: str
    equity: list[EquityRow]
    weights: dict[str, int]
    weights_warning: str | None
    dispositions: DispositionCounts


class BatchResults(_Model):
    batch: BatchOut
    items: list[TriageItem]
    summary: TriageSummaryOut


class UploadNext(_Model):
    method: str
    path: str
    body: dict[str, str]


class UploadOut(_Model):
    id: str
    url: str
    method: str
    headers: dict[str, str]
    expires_at: str
    submit_before: str
    max_bytes: int
    content_type: str
    next: UploadNext


class UploadsOut(_Model):
    uploads: list[UploadOut]


class FieldError(_Model):
    field: str
    message: str


class ProblemDetails(_Model):
    """RFC 7807 ``application/problem+json``: every error the API answers."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[FieldError] | None = None


class UploadSubmissionResult(_Model):
    upload_id: str
    status: int
    replayed: bool = False
    analysis: AnalysisSummary | None = None
    problem: ProblemDetails | None = None


class UploadSubmissionsOut(_Model):
    accepted: int
    refused: int
    results: list[UploadSubmissionResult]


class WebhookEndpointOut(_Model):
    id: str
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    failing_since: str | None
    created_at: str
    previous_secret_expires_at: str | None
    analysis_id: str | None = None


class WebhookEndpointWithSecret(_Model):
    id: str
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    failing_since: str | None
    created_at: str
    previous_secret_expires_at: str | None
    analysis_id: str | None = None
    secret: str


class WebhookEndpointList(_Model):
    data: list[WebhookEndpointOut]


class WebhookTestSent(_Model):
    event_id: str


class DeliveryAttempt(_Model):
    attempted_at: str
    status_code: int | None
    latency_ms: float | None
    error: str | None
    response_excerpt: str | None


class DeliveryOut(_Model):
    id: str
    event_id: str
    status: str
    attempt_count: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None
    attempts: list[DeliveryAttempt]


class DeliveryList(_Model):
    data: list[DeliveryOut]


class ResendAccepted(_Model):
    id: str
    status: str


class ApiKeyOut(_Model):
    id: str
    prefix: str
    label: str | None
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    active: bool
    scopes: list[str]


class ApiKeyCreated(_Model):
    id: str
    prefix: str
    label: str | None
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    active: bool
    scopes: list[str]
    key: str


class ApiKeyList(_Model):
    data: list[ApiKeyOut]


class AuditEventOut(_Model):
    """One row of a tenant's audit trail: who did what to which resource, and how it ended. Never PHI: ids, the
    action, the outcome, the request's id, address and user agent.
    """

    tenant_id: str
    seq: int
    occurred_at: str
    actor: str
    action: str
    resource_type: str
    resource_id: str | None
    outcome: str
    status_code: int | None
    request_id: str | None
    client_address: str | None
    user_agent: str | None
    detail: dict[str, Any] | None
    prev_hash: str
    hash: str


class AuditEventPage(_Model):
    data: list[AuditEventOut]
    next_cursor: str | None


class EvaluationSetOut(_Model):
    name: str
    sha256: str
    images: int


class MetricEstimate(_Model):
    """A metric with its percentile bootstrap 95% interval (None where undefined, e.g. AUC of one class)."""

    value: float | None
    ci95: list[Any]


class ModelListed(_Model):
    """A registered version in the list: its status, weights and the headline of its card."""

    id: str
    kind: str
    version: str
    sha256: str
    status: str
    weights: str
    created_at: str | None
    activated_at: str | None
    threshold: float | None
    rule_out_threshold: float | None
    evaluation_set: EvaluationSetOut | None
    auc: MetricEstimate | None
    acceptance: str | None
    override: bool
    card_url: str


class ModelList(_Model):
    data: list[ModelListed]


class GroundedAnswerOut(_Model):
    text: str
    cited: list[str]
    intents: list[str]
    grounded: bool = True
    outside_scope: bool


class ModelAnswerOut(_Model):
    status: str
    text: str | None = None
    model: str | None = None
    label: str = 'generated by a vision-language model; not verified'
    detail: str | None = None


class QuestionOut(_Model):
    id: str
    analysis_id: str
    question: str
    answer: GroundedAnswerOut
    model_answer: ModelAnswerOut | None = None
    created_at: str | None
    disclaimer: str = (
        'Research use only, not a certified medical device; answers support, never replace, clinical judgement.'
    )


class QuestionList(_Model):
    data: list[QuestionOut]


class FeedbackOut(_Model):
    analysis_id: str
    agrees: bool
    final_diagnosis: str | None
    histopathology: str | None
    notes: str | None


class Check(_Model):
    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class Readiness(_Model):
    status: str
    checks: dict[str, Check]
