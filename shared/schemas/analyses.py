"""Analyses: the submit form, feedback, and the typed analysis record clients, reports and exports read."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from shared import fhir_refs
from shared.clinical.disposition import Disposition
from shared.clinical.vocabulary import AGE_MAX, AGE_MIN
from shared.schemas.common import (
    EXTERNAL_ID_PATTERN,
    PIXEL_SPACING_MAX_MM,
    PIXEL_SPACING_MIN_MM,
    AnalysisStatusName,
    CancelReason,
    Diagnosis,
    Priority,
    ResponseModel,
    RiskBand,
    Sex,
    Site,
    Stage,
    Timestamp,
    Url,
    WeightsStatus,
)
from shared.schemas.webhooks import AnalysisWebhook

# Issue 23: who and which visit the image belongs to, as the client's EHR names them
# (shared.fhir_refs: one parser for the API, direct uploads, CLI manifests and FHIR).
PatientReference = Annotated[
    str,
    StringConstraints(max_length=fhir_refs.MAX_LENGTH),
    AfterValidator(fhir_refs.patient_reference),
    WithJsonSchema(
        {"type": "string", "maxLength": fhir_refs.MAX_LENGTH, "pattern": fhir_refs.reference_pattern("Patient")}
    ),
]
EncounterReference = Annotated[
    str,
    StringConstraints(max_length=fhir_refs.MAX_LENGTH),
    AfterValidator(fhir_refs.encounter_reference),
    WithJsonSchema(
        {"type": "string", "maxLength": fhir_refs.MAX_LENGTH, "pattern": fhir_refs.reference_pattern("Encounter")}
    ),
]
PATIENT_REFERENCE_DESCRIPTION = (
    "The patient, as your EHR names them: a FHIR reference `Patient/<id>`, an absolute URL ending in "
    "`Patient/<id>`, or an identifier `system|value` (e.g. `urn:oid:1.2.36.146.595.217.0.1|12345`). It becomes the "
    "FHIR report's `subject`; no other patient detail is needed"
)
ENCOUNTER_REFERENCE_DESCRIPTION = (
    "The visit, as your EHR names it: `Encounter/<id>`, an absolute URL ending in `Encounter/<id>`, or `system|value`. "
    "It becomes the FHIR report's `encounter`"
)
# The inputs issue 23 added: left out of a request's idempotency fingerprint when not given,
# so a key stored before them still replays (``AnalysisInputs.fingerprint_fields``).
REFERENCE_INPUTS = ("patient_reference", "encounter_reference")


class AnalysisInputs(BaseModel):
    """The form fields of ``POST /v1/analyses`` (the image travels beside them)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    age: int | None = Field(default=None, ge=AGE_MIN, le=AGE_MAX)
    sex: Sex = "unknown"
    site: Site = "unknown"
    pixel_spacing_mm: float | None = Field(
        default=None, ge=PIXEL_SPACING_MIN_MM, le=PIXEL_SPACING_MAX_MM,
        description=f"Millimetres per pixel, {PIXEL_SPACING_MIN_MM:g} to {PIXEL_SPACING_MAX_MM:g}; gives "
        "`concepts.diameter_mm`",
    )
    external_id: str | None = Field(
        default=None, pattern=EXTERNAL_ID_PATTERN,
        description="Your reference for this request (an order or accession number): the FHIR DiagnosticReport's "
        "identifier, never the patient's (give the patient as `patient_reference`); letters, digits and . _ : - "
        "(no / or \\, no spaces or control characters), at most 200, not starting with -",
    )
    batch_id: uuid.UUID | None = None
    priority: Literal["interactive", "bulk"] = "interactive"
    patient_reference: PatientReference | None = Field(
        default=None, description=PATIENT_REFERENCE_DESCRIPTION, examples=["Patient/8812"]
    )
    encounter_reference: EncounterReference | None = Field(
        default=None, description=ENCOUNTER_REFERENCE_DESCRIPTION,
        examples=["https://ehr.example.org/fhir/Encounter/visit-8812"],
    )

    def fingerprint_fields(self) -> dict[str, Any]:
        """The inputs as the idempotency fingerprint reads them: as before issue 23 when no
        reference was given, so keys stored before it still replay."""
        fields = self.model_dump(mode="json")
        for name in REFERENCE_INPUTS:
            if fields.get(name) is None:
                fields.pop(name, None)
        return fields


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
    patient_reference: str | None = Field(
        default=None, description="As submitted: the FHIR report's `subject` (null: none was given)"
    )
    encounter_reference: str | None = Field(
        default=None, description="As submitted: the FHIR report's `encounter` (null: none was given)"
    )


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
    disposition: Disposition | None = Field(
        default=None,
        description="What should happen next: `urgent_referral` (the probability reaches the model's high-risk "
        "operating point, trained weights only), `routine` (below the model's rule-out threshold and no review "
        "reason; comes with `safety_netting`), else `clinician_review`. Weights that are not `trained` never give "
        "`routine` or `urgent_referral`. Null only on results stored before dispositions existed",
    )
    disposition_reasons: list[str] = Field(
        default_factory=list,
        description="Stable codes for why (docs/CLINICAL_RULES.md): `high_probability`, `below_rule_out`, "
        "`weights_not_trained`, `brown_or_dark_skin`, `high_uncertainty`, `near_threshold`, `borderline_quality`, "
        "`weakly_evidenced_site`, `age_under_18`, `missing_metadata`, `diameter_over_6mm`, `above_rule_out`, "
        "`drift` (the tenant is in safety mode after a drift of the model's output: every result is "
        "`clinician_review`)",
    )
    safety_netting: str | None = Field(
        default=None, description="For `routine` only: what change should bring the patient back, and when to "
        "re-photograph",
    )
    notice: str | None = Field(
        default=None,
        description="Beside `diagnosis` whenever the model's weights are not `trained`: the diagnosis, probability, "
        "band and disposition carry no clinical meaning. Null for trained weights",
    )


class Rejection(ResponseModel):
    code: str = Field(
        description="`low_resolution`, `blurry`, `no_lesion` or `unreadable_image` (or the API's code for a refused "
        "upload)"
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
    rule_out_threshold: float | None = Field(
        default=None,
        description="Below it (and with no review reason) a result is `routine`; chosen on the validation fold for "
        "`rule_out_sensitivity`. Null: not calibrated, the conservative default applies (docs/CLINICAL_RULES.md)",
    )
    rule_out_sensitivity: float | None = Field(
        default=None, description="The sensitivity the rule-out threshold was chosen for (default 0.95)"
    )


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
    rollout: Literal["canary"] | None = Field(
        default=None,
        description="`canary` when a canary version answered this job (a share of new jobs chosen by a stable hash "
        "of the analysis id, before the version is promoted); absent otherwise",
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


DICOM_UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
DicomUid = Annotated[str, StringConstraints(max_length=64, pattern=DICOM_UID_PATTERN)]


class DicomSource(ResponseModel):
    """The DICOM instance the image came from (issue 23; docs/DICOM.md): its identifiers only,
    kept so that the DICOM Segmentation and Structured Report can reference it. Never a name,
    patient id, date or any other attribute of its header."""

    study_instance_uid: DicomUid
    series_instance_uid: DicomUid
    sop_instance_uid: DicomUid
    sop_class_uid: DicomUid = Field(
        description="VL Photographic Image, Dermoscopic Photography Image or Secondary Capture Image Storage"
    )
    transfer_syntax_uid: DicomUid = Field(description="How its pixel data was encoded")


class AnalysisRecord(AnalysisSummary):
    """The analysis as typed data, with its model's provenance: what reports, FHIR, questions,
    webhook payloads and exports are built from (``shared.lifecycle.analysis_record``)."""

    model: ModelInfo | None
    dicom_source: DicomSource | None = Field(
        default=None,
        description="When the image was sent as DICOM (`application/dicom`): the study, series and SOP instance "
        "it came from, which `/dicom/seg` and `/dicom/sr` reference. Null for JPEG and PNG uploads",
    )


class ModelCaption(BaseModel):
    """A local vision-language model's caption for the scribe note (``VQA_MODEL_DIR``),
    always labelled as the model's."""

    text: str
    model: str
    label: str


class AnalysisOut(AnalysisRecord):
    """One analysis: status, result, provenance, links and short-lived artifact URLs."""

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
