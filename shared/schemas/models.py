"""The model registry over HTTP (issue 24): ``GET /v1/models`` and the model card of one
registered version, ``GET /v1/models/{id}/card``.

The card (``ModelCardOut``) carries its facts twice, on purpose: typed fields a program reads
(metrics with intervals, per ITA skin group, operating points, weights status) and
``applied_model_card``, the same facts in the sections and element names of the CHAI
Applied Model Card (schema v0.2: ``BasicInfo``, ``ReleaseInfo``, ``ModelSummary``,
``UsesAndDirections``, ``Warnings``, ``TrustIngredients``, ``KeyMetrics``, ``Resources``,
``Bibliography``), whose text fields are Markdown and whose metric values are JSON strings
(``ValueJson``), so it maps one to one onto a CHAI instance document.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.schemas.common import ResponseModel, WeightsStatus

ModelKind = Literal["scalpel", "fusion"]
ModelStatusName = Literal["candidate", "active", "retired"]
AcceptanceState = Literal["passed", "failed", "not_checked"]


class MetricEstimate(ResponseModel):
    """A metric with its percentile bootstrap 95% interval (None where undefined, e.g. AUC of one class)."""

    value: float | None
    ci95: tuple[float | None, float | None]


class SkinGroupMetrics(ResponseModel):
    """The metrics of every scored image (``skin_group`` null) or of one ITA skin group."""

    skin_group: str | None = Field(description="The Equity Engine's ITA group; null for every scored image")
    count: int
    positives: int = Field(description="Melanomas among them")
    bias_warning: bool = Field(description="The group lies at or below the Equity Engine's bias cut-off (ITA 10°)")
    auc: MetricEstimate | None = None
    sensitivity: MetricEstimate | None = Field(default=None, description="At the operating (high-risk) threshold")
    specificity: MetricEstimate | None = Field(default=None, description="At the operating (high-risk) threshold")
    balanced_accuracy: MetricEstimate | None = None
    ece: MetricEstimate | None = Field(default=None, description="Expected calibration error")
    sensitivity_at_rule_out: MetricEstimate | None = Field(
        default=None, description="Below the rule-out threshold is ruled out"
    )
    specificity_at_rule_out: MetricEstimate | None = None
    npv_at_rule_out: MetricEstimate | None = Field(
        default=None, description="Negative predictive value at the rule-out threshold"
    )
    routine_melanomas: int | None = Field(default=None, description="Melanomas the disposition would have sent home")
    dice: MetricEstimate | None = Field(default=None, description="Segmentation overlap, when masks were given")
    jaccard: MetricEstimate | None = None


class EvaluationSetOut(ResponseModel):
    name: str
    sha256: str = Field(description="sha256 over every image's name and content and the labels CSV")
    images: int


class StoredEvaluationOut(ResponseModel):
    """An ``evaluate`` report stored against this model (`dermasentinel evaluate --fusion-model`)."""

    evaluation_set: EvaluationSetOut
    stored_at: str
    images: int
    evaluated: int
    rejected: int = Field(description="Images a quality or lesion gate rejected (left out of the metrics)")
    segmenter: str | None = None
    backend: str | None = None
    overall: SkinGroupMetrics
    per_skin_group: list[SkinGroupMetrics]
    groups_not_evaluated: list[str] = Field(description="ITA groups with no scored image in this set")


class StoredEvaluationListed(ResponseModel):
    """Another evaluation stored against the model, in brief."""

    evaluation_set: EvaluationSetOut
    stored_at: str
    auc: float | None


class CardOperatingPoints(ResponseModel):
    """The Fusion model's two thresholds, the sensitivity each was chosen for on the validation
    fold and what each reached there, and, when an evaluation is stored, what each reached on it."""

    chosen_on: str = Field(description="`validation` when fitted by training, `default` otherwise")
    temperature: float | None
    threshold: float | None = Field(description="The operating (high-risk) threshold: above it, melanoma")
    target_sensitivity: float | None
    sensitivity_on_validation: float | None
    specificity_on_validation: float | None
    urgent_threshold: float = Field(description="Above it, urgent referral (trained weights only)")
    rule_out_threshold: float = Field(description="Below it, with no review reason, routine")
    rule_out_is_default: bool = Field(description="True when the model has no calibrated rule-out threshold")
    rule_out_sensitivity: float | None = Field(description="The sensitivity the rule-out threshold was chosen for")
    rule_out_sensitivity_on_validation: float | None
    rule_out_npv_on_validation: float | None
    sensitivity_at_threshold_evaluated: MetricEstimate | None = Field(
        default=None, description="On the stored evaluation, at the operating threshold"
    )
    sensitivity_at_rule_out_evaluated: MetricEstimate | None = Field(
        default=None, description="On the stored evaluation, at the rule-out threshold"
    )


class CardTrainingData(ResponseModel):
    description: str | None
    synthetic: bool
    images: int | None = None
    patients: int | None = None
    positives: int | None = None
    fingerprint: str | None = Field(default=None, description="sha256 over every training image, mask and CSV")
    split: str | None = None


class FailedCriterionOut(ResponseModel):
    criterion: str
    message: str
    group: str | None = None
    measured: float | None = None
    bound: float | None = None


class AcceptanceCheckOut(ResponseModel):
    """The acceptance check of the model's latest activation (`models activate --acceptance`)."""

    state: AcceptanceState
    activated_at: str
    actor: str
    evaluation_set: EvaluationSetOut | None = None
    file_sha256: str | None = None
    failed: list[FailedCriterionOut] = Field(default_factory=list)
    override_reason: str | None = Field(default=None, description="Why a failing candidate was activated anyway")


class RegisteredModelRef(ResponseModel):
    id: str
    kind: ModelKind
    version: str
    sha256: str = Field(description="sha256 of the checkpoint file")
    status: ModelStatusName
    created_at: str | None
    activated_at: str | None
    card_url: str = Field(description="This card: `/v1/models/{id}/card`")


# ------------------------------------------------------------------ CHAI Applied Model Card v0.2


class ChaiBasicInfo(ResponseModel):
    ModelName: str
    ModelDeveloper: str
    DeveloperContact: str


class ChaiReleaseInfo(ResponseModel):
    ReleaseStage: str
    ReleaseDate: str
    ReleaseVersion: str
    GlobalAvailability: str
    RegulatoryApproval: str


class ChaiModelSummary(ResponseModel):
    Summary: str
    Keywords: list[str]


class ChaiUsesAndDirections(ResponseModel):
    IntendedUseAndWorkflow: str
    PrimaryIntendedUsers: str
    HowToUse: str
    TargetedPatientPopulation: str
    CautionedOutOfScopeSettings: str


class ChaiWarnings(ResponseModel):
    KnownRisksAndLimitations: str
    KnownBiasesOrEthicalConsiderations: str
    ClinicalRiskLevel: str


class ChaiAISystemFacts(ResponseModel):
    OutcomesAndOutputs: str
    ModelType: str
    FoundationModels: str
    InputDataSource: str
    OutputAndInputDataTypes: str
    DevelopmentDataCharacterization: str
    BiasMitigationApproaches: str
    OngoingMaintenance: str
    Security: str
    Transparency: str


class ChaiTransparencyInformation(ResponseModel):
    FundingSource: str
    ThirdPartyInformation: str
    StakeholdersConsulted: str


class ChaiTrustIngredients(ResponseModel):
    AISystemFacts: ChaiAISystemFacts
    TransparencyInformation: ChaiTransparencyInformation


class ChaiMetricResult(ResponseModel):
    Label: str
    ValueJson: str = Field(description="The value as JSON text: {value, ci95, count, …}")


class ChaiKeyMetric(ResponseModel):
    MetricGoal: str
    Results: list[ChaiMetricResult] = Field(min_length=1)
    Interpretation: str
    TestType: str
    TestingDataDescription: str
    ValidationProcessAndJustification: str


class ChaiKeyMetrics(ResponseModel):
    UsefulnessUsabilityEfficacy: ChaiKeyMetric
    FairnessEquity: ChaiKeyMetric
    SafetyReliability: ChaiKeyMetric


class ChaiResources(ResponseModel):
    EvaluationReferences: str
    ClinicalTrial: str
    PeerReviewedPublications: str
    ReimbursementStatus: str
    PatientConsentOrDisclosure: str


class AppliedModelCard(ResponseModel):
    """The CHAI Applied Model Card (https://mc.chai.org, schema v0.2), its element names as keys."""

    BasicInfo: ChaiBasicInfo
    ReleaseInfo: ChaiReleaseInfo
    ModelSummary: ChaiModelSummary
    UsesAndDirections: ChaiUsesAndDirections
    Warnings: ChaiWarnings
    TrustIngredients: ChaiTrustIngredients
    KeyMetrics: ChaiKeyMetrics
    Resources: ChaiResources
    Bibliography: str


class ModelCardOut(ResponseModel):
    """The model card of one registered version, generated from its registry row, its training
    card and its stored evaluations whenever it is read (so it always shows the latest)."""

    schema_: Literal["dermasentinel.applied-model-card/1"] = Field(alias="schema")
    chai_schema: str = Field(description="The CHAI Applied Model Card schema `applied_model_card` follows")
    generated_at: str
    model: RegisteredModelRef
    name: str
    developer: str
    weights: WeightsStatus = Field(description="`trained`, or `synthetic` (learnt from generated images only)")
    regulatory_status: str
    intended_use: str
    out_of_scope_use: list[str]
    model_type: str
    inputs: list[str]
    outputs: list[str]
    training_data: CardTrainingData | None
    validation_metrics: dict[str, float | None] = Field(description="On the training run's validation fold")
    evaluation: StoredEvaluationOut | None = Field(description="The latest stored evaluation; null when none is stored")
    other_evaluations: list[StoredEvaluationListed]
    operating_points: CardOperatingPoints | None = Field(description="Fusion only")
    limitations: list[str]
    bias_and_fairness: list[str]
    acceptance: AcceptanceCheckOut | None = Field(
        description="The latest activation's acceptance check; null: never activated"
    )
    applied_model_card: AppliedModelCard


class ModelListed(ResponseModel):
    """A registered version in the list: its status, weights and the headline of its card."""

    id: str
    kind: ModelKind
    version: str
    sha256: str
    status: ModelStatusName
    weights: WeightsStatus
    created_at: str | None
    activated_at: str | None
    threshold: float | None
    rule_out_threshold: float | None
    evaluation_set: EvaluationSetOut | None = Field(description="The latest stored evaluation's set")
    auc: MetricEstimate | None = Field(description="Its overall AUC")
    acceptance: AcceptanceState | None = Field(description="The latest activation's acceptance check")
    override: bool = Field(description="The latest activation overrode failed acceptance criteria")
    card_url: str


class ModelList(ResponseModel):
    data: list[ModelListed]
