"""Model cards (issue 24; docs/MODELS.md): one per registered version, as JSON and as HTML.

The card is generated from the registry row (id, sha256, status, operating point), the card
its training run wrote (data, split, validation metrics, calibration) and the evaluations
stored against it (metrics overall and per ITA skin group with 95% intervals), whenever it
is read: at import it describes the training run; once ``evaluate --fusion-model`` stores a
report it shows that; after ``models activate`` it shows the acceptance check. Fields follow
the CHAI Applied Model Card (``shared.schemas.models``).

``card_url(model_id)`` is the API path of a card, for the PDF report's and the FHIR bundle's
provenance; ``card_for(session, model_id)`` is the card itself (None for an unknown id).
"""

from __future__ import annotations

import functools
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from jinja2 import Environment, Template
from sqlalchemy.orm import Session

from shared.clinical import (
    BIAS_WARNING_GROUPS,
    BIAS_WARNING_MAX_ITA,
    BIAS_WARNING_TEXT,
    DISCLAIMER,
    SKIN_GROUPS,
    SYNTHETIC,
    disposition,
)
from shared.clock import iso, utcnow
from shared.model_acceptance import Governance
from shared.model_registry import (
    Calibration,
    ModelCard,
    StoredEvaluation,
    get_model,
    stored_evaluations,
)
from shared.schemas.common import WeightsStatus
from shared.schemas.evaluation import Block, EvaluationReport, RuleOutBlock, Score
from shared.schemas.models import (
    AcceptanceCheckOut,
    AcceptanceState,
    AppliedModelCard,
    CardOperatingPoints,
    CardTrainingData,
    ChaiAISystemFacts,
    ChaiBasicInfo,
    ChaiKeyMetric,
    ChaiKeyMetrics,
    ChaiMetricResult,
    ChaiModelSummary,
    ChaiReleaseInfo,
    ChaiResources,
    ChaiTransparencyInformation,
    ChaiTrustIngredients,
    ChaiUsesAndDirections,
    ChaiWarnings,
    EvaluationSetOut,
    FailedCriterionOut,
    MetricEstimate,
    ModelCardOut,
    ModelKind,
    ModelListed,
    ModelStatusName,
    RegisteredModelRef,
    SkinGroupMetrics,
    StoredEvaluationListed,
    StoredEvaluationOut,
)
from shared.tables import ModelVersion

CARD_SCHEMA = "dermasentinel.applied-model-card/1"
# worker.pipeline.networks' FUSION_NAME and SCALPEL_NAME, for a card that names none.
DEFAULT_NAMES = {"fusion": "fusion-efficientnet-b3-meta", "scalpel": "scalpel-unet-resnet34"}
CHAI_SCHEMA = "https://mc.chai.org/v0.2/schema.xsd"
REGULATORY_STATUS = "Not a certified medical device: research and decision-support use only."
DEFAULT_DEVELOPER = "The operating site (trained locally with DermaSentinel; no weights ship with it)"
NOT_STATED = "Not stated"
# Groups with fewer scored images than this are flagged: their intervals are wide.
FEW_IMAGES = 30

INTENDED_USE = {
    "fusion": (
        "Decision support for clinicians triaging photographs of single skin lesions for melanoma: a calibrated "
        "probability, a risk band and a disposition (urgent referral, clinician review or routine) with the Equity "
        "Engine's skin-tone caveat. Every output is reviewed by a clinician; research use only."
    ),
    "scalpel": (
        "Segmentation of the lesion in a skin photograph (Gate 1 of the pipeline): the mask from which the ABCD "
        "features, the ITA skin tone of the surrounding skin and the overlay are computed. Research use only."
    ),
}
OUT_OF_SCOPE = [
    "Diagnosis or treatment decisions without a clinician's examination; it does not replace dermoscopy by a "
    "trained clinician or histopathology.",
    "Use as a certified medical device, or self-screening by the public without a clinician.",
    "Images other than a photograph of one skin lesion (mucosa, nails, several lesions, non-skin images), and photos "
    "the quality and resolution gates reject.",
    "Populations and skin tones the stored evaluation does not cover (see the per-group metrics).",
]
MODEL_TYPE = {
    "fusion": "EfficientNet-B3 image encoder fused with a metadata encoder (age, sex, anatomical site); binary "
              "classifier (melanoma vs benign) with temperature scaling, trained from random weights",
    "scalpel": "U-Net with a ResNet-34 encoder; binary lesion segmentation, trained from random weights",
}
INPUTS = {
    "fusion": ["a photograph of one skin lesion (JPEG or PNG), resized to the network's input size",
               "age (years, optional)", "sex", "anatomical site"],
    "scalpel": ["a photograph of one skin lesion (JPEG or PNG), resized to the network's input size"],
}
OUTPUTS = {
    "fusion": ["calibrated probability of melanoma (mean of test-time-augmented views) and its uncertainty",
               "diagnosis at the operating threshold, risk band and disposition"],
    "scalpel": ["lesion mask (the pipeline derives coverage, ABCD features, ITA and the overlay from it)"],
}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


def card_url(model_id: uuid.UUID | str) -> str:
    """The API path of a registered model's card (the PDF and FHIR provenance link to it)."""
    return f"/v1/models/{model_id}/card"


def card_for(session: Session, model_id: uuid.UUID | str) -> ModelCardOut | None:
    """The card of the registered model with this id, or None when there is none."""
    row = get_model(session, model_id)
    return build_card(row) if row is not None else None


# ------------------------------------------------------------------------------- building


def _estimate(score: Score | None) -> MetricEstimate | None:
    return MetricEstimate(value=score.value, ci95=score.ci95) if score is not None else None


def _group_metrics(block: Block, rule_out: RuleOutBlock | None) -> SkinGroupMetrics:
    metrics = block.metrics
    return SkinGroupMetrics(
        skin_group=block.skin_group, count=block.count, positives=block.positives,
        bias_warning=block.skin_group in BIAS_WARNING_GROUPS,
        auc=_estimate(metrics.get("auc")), sensitivity=_estimate(metrics.get("sensitivity")),
        specificity=_estimate(metrics.get("specificity")),
        balanced_accuracy=_estimate(metrics.get("balanced_accuracy")), ece=_estimate(metrics.get("ece")),
        sensitivity_at_rule_out=_estimate(rule_out.rule_out.sensitivity) if rule_out else None,
        specificity_at_rule_out=_estimate(rule_out.rule_out.specificity) if rule_out else None,
        npv_at_rule_out=_estimate(rule_out.rule_out.npv) if rule_out else None,
        routine_melanomas=rule_out.dispositions.routine_melanomas if rule_out else None,
        dice=_estimate(metrics.get("dice")), jaccard=_estimate(metrics.get("jaccard")),
    )


def _evaluation(stored: StoredEvaluation) -> StoredEvaluationOut | None:
    report = stored.report
    if report.overall is None:
        return None
    rule_out = {block.skin_group: block for block in (report.rule_out.per_skin_group if report.rule_out else [])}
    groups = [_group_metrics(block, rule_out.get(block.skin_group)) for block in report.per_skin_group]
    present = {group.skin_group for group in groups}
    return StoredEvaluationOut(
        evaluation_set=EvaluationSetOut(**stored.evaluation_set.model_dump()),
        stored_at=stored.stored_at, images=report.images, evaluated=report.evaluated, rejected=len(report.rejected),
        segmenter=report.model.segmenter if report.model else None,
        backend=report.model.backend if report.model else None,
        overall=_group_metrics(report.overall, report.rule_out.overall if report.rule_out else None),
        per_skin_group=groups,
        groups_not_evaluated=[group for group in SKIN_GROUPS if group not in present],
    )


def _operating_points(calibration: Calibration, report: EvaluationReport | None) -> CardOperatingPoints:
    rule_out = report.rule_out if report is not None else None
    overall = report.overall if report is not None else None
    return CardOperatingPoints(
        chosen_on=calibration.chosen_on or "default",
        temperature=calibration.temperature, threshold=calibration.threshold,
        target_sensitivity=calibration.target_sensitivity,
        sensitivity_on_validation=calibration.sensitivity, specificity_on_validation=calibration.specificity,
        urgent_threshold=disposition.urgent_threshold(calibration.threshold),
        rule_out_threshold=disposition.rule_out_threshold(calibration.rule_out_threshold),
        rule_out_is_default=calibration.rule_out_threshold is None,
        rule_out_sensitivity=calibration.rule_out_sensitivity,
        rule_out_sensitivity_on_validation=calibration.rule_out_sensitivity_reached,
        rule_out_npv_on_validation=calibration.rule_out_npv,
        sensitivity_at_threshold_evaluated=_estimate(overall.metrics.get("sensitivity")) if overall else None,
        sensitivity_at_rule_out_evaluated=_estimate(rule_out.overall.rule_out.sensitivity) if rule_out else None,
    )


def _training_data(card: ModelCard) -> CardTrainingData | None:
    data = card.training_data
    if data is None:
        return None
    extra = data.model_extra or {}
    split = (card.model_extra or {}).get("split")
    method = split.get("method") if isinstance(split, dict) else None
    return CardTrainingData(
        description=data.description, synthetic=data.synthetic, images=_int(extra.get("images")),
        patients=_int(extra.get("patients")), positives=_int(extra.get("positives")),
        fingerprint=extra.get("fingerprint") if isinstance(extra.get("fingerprint"), str) else None, split=method,
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _validation_metrics(card: ModelCard) -> dict[str, float | None]:
    validation = (card.metrics or {}).get("validation") or {}
    return {k: float(v) for k, v in validation.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _acceptance(row: ModelVersion) -> AcceptanceCheckOut | None:
    latest = Governance.of(row.governance).latest
    if latest is None:
        return None
    check = latest.acceptance
    if check is None:
        return AcceptanceCheckOut(state="not_checked", activated_at=latest.at, actor=latest.actor)
    return AcceptanceCheckOut(
        state="passed" if check.passed else "failed", activated_at=latest.at, actor=latest.actor,
        evaluation_set=EvaluationSetOut(name=check.evaluation_set.name, sha256=check.evaluation_set.sha256,
                                        images=_set_images(row, check.evaluation_set.sha256)),
        file_sha256=check.file_sha256,
        failed=[FailedCriterionOut(criterion=r.criterion, message=r.message, group=r.group, measured=r.measured,
                                bound=r.bound) for r in check.failed],
        override_reason=latest.override.reason if latest.override else None,
    )


def _set_images(row: ModelVersion, sha256: str) -> int:
    stored = (row.evaluations or {}).get(sha256) or {}
    images = (stored.get("evaluation_set") or {}).get("images")
    return images if isinstance(images, int) else 0


def _limitations(kind: str, weights: str, evaluation: StoredEvaluationOut | None) -> list[str]:
    found = []
    if weights == SYNTHETIC:
        found.append("Trained on generated (synthetic) images only: its output is not clinically meaningful, and the "
                     "service sends every case it scores to clinician review.")
    if evaluation is None:
        found.append("No evaluation is stored for this version: its only metrics are the training run's validation "
                     "fold, from the same data source as its training data.")
    else:
        found.append(f"The metrics describe evaluation set {evaluation.evaluation_set.name} only "
                     f"({evaluation.evaluated} scored images); performance elsewhere (other cameras, clinics, "
                     "populations) is not established.")
        small = [g.skin_group for g in evaluation.per_skin_group if g.count < FEW_IMAGES and g.skin_group]
        if small:
            found.append(f"Fewer than {FEW_IMAGES} scored images in: {', '.join(small)}; their intervals are wide.")
    if kind == "fusion":
        found.append("Photos the quality gates reject (blurry, too small, no lesion) get no probability; the metrics "
                     "leave them out.")
    found.append("Weights are trained from random initialisation at the operating site; nothing is pre-trained or "
                 "downloaded.")
    return found


def _bias_notes(evaluation: StoredEvaluationOut | None) -> list[str]:
    notes = [
        f"Skin tone is estimated by the Equity Engine as the Individual Typology Angle (ITA) of the skin around the "
        f"lesion and grouped into {', '.join(SKIN_GROUPS)}. ITA is a colorimetric proxy from one photograph "
        "(lighting, white balance and camera change it), not a Fitzpatrick type.",
        f"Results at ITA of {BIAS_WARNING_MAX_ITA:g}° or below ({', '.join(sorted(BIAS_WARNING_GROUPS))}) carry a bias "
        f"warning: {BIAS_WARNING_TEXT} The disposition sends such cases to clinician review.",
    ]
    if evaluation is not None:
        if evaluation.groups_not_evaluated:
            notes.append("Not evaluated (no scored image in the evaluation set): "
                         + ", ".join(evaluation.groups_not_evaluated) + ".")
        overall = evaluation.overall.auc.value if evaluation.overall.auc else None
        gaps = [(overall - g.auc.value, g.skin_group) for g in evaluation.per_skin_group
                if overall is not None and g.auc is not None and g.auc.value is not None]
        if gaps:
            gap, group = max(gaps)
            if gap > 0:
                notes.append(f"Largest AUC shortfall: {group}, {gap * 100:.1f} points below the overall AUC.")
    return notes


def build_card(row: ModelVersion) -> ModelCardOut:
    """The card of ``row`` as of now (see the module's docstring)."""
    card = ModelCard.of(row.card)
    calibration = card.calibration or Calibration()
    extra = card.model_extra or {}
    weights = card.weights
    stored = stored_evaluations(row)
    latest = stored[-1] if stored else None
    evaluation = _evaluation(latest) if latest is not None else None
    report = latest.report if latest is not None else None
    name = str(extra.get("name") or DEFAULT_NAMES[row.kind])
    developer = str(extra.get("developer") or DEFAULT_DEVELOPER)
    entry = RegisteredModelRef(
        id=str(row.id), kind=cast(ModelKind, row.kind), version=row.version, sha256=row.sha256,
        status=cast(ModelStatusName, row.status),
        created_at=_iso(row.created_at), activated_at=_iso(row.activated_at), card_url=card_url(row.id),
    )
    points = _operating_points(calibration, report) if row.kind == "fusion" else None
    limitations = _limitations(row.kind, weights, evaluation)
    bias = _bias_notes(evaluation)
    training = _training_data(card)
    validation = _validation_metrics(card)
    out = ModelCardOut(
        schema=CARD_SCHEMA, chai_schema=CHAI_SCHEMA, generated_at=iso(utcnow()), model=entry, name=name,
        developer=developer, weights=cast(WeightsStatus, weights),
        regulatory_status=REGULATORY_STATUS,
        intended_use=INTENDED_USE[row.kind], out_of_scope_use=OUT_OF_SCOPE, model_type=MODEL_TYPE[row.kind],
        inputs=INPUTS[row.kind], outputs=OUTPUTS[row.kind], training_data=training, validation_metrics=validation,
        evaluation=evaluation,
        other_evaluations=[
            StoredEvaluationListed(evaluation_set=EvaluationSetOut(**s.evaluation_set.model_dump()),
                                   stored_at=s.stored_at, auc=_overall_auc(s.report))
            for s in stored[:-1]
        ],
        operating_points=points, limitations=limitations, bias_and_fairness=bias, acceptance=_acceptance(row),
        applied_model_card=_chai(row, extra, name, developer, weights, training, validation, evaluation, points,
                                 limitations, bias),
    )
    return out


def _overall_auc(report: EvaluationReport) -> float | None:
    score = report.overall.metrics.get("auc") if report.overall is not None else None
    return score.value if score is not None else None


# --------------------------------------------------------------------------------- CHAI


def _value_json(estimate: MetricEstimate | None, **more: object) -> str:
    body: dict[str, object] = {"value": None, "ci95": [None, None]}
    if estimate is not None:
        body = {"value": estimate.value, "ci95": list(estimate.ci95)}
    return json.dumps({**body, **more})


def _fmt(estimate: MetricEstimate | None) -> str:
    if estimate is None or estimate.value is None:
        return "n/a"
    low, high = estimate.ci95
    interval = f" (95% CI {low:.3f}–{high:.3f})" if low is not None and high is not None else ""
    return f"{estimate.value:.3f}{interval}"


def _chai(row: ModelVersion, extra: dict[str, Any], name: str, developer: str, weights: str,
          training: CardTrainingData | None, validation: dict[str, float | None],
          evaluation: StoredEvaluationOut | None, points: CardOperatingPoints | None, limitations: list[str],
          bias: list[str]) -> AppliedModelCard:
    kind = row.kind
    if evaluation is not None:
        testing = (f"Evaluation set `{evaluation.evaluation_set.name}` (sha256 {evaluation.evaluation_set.sha256}): "
                   f"{evaluation.images} images, {evaluation.evaluated} scored, {evaluation.rejected} rejected by a "
                   f"gate; stored {evaluation.stored_at}.")
        test_type = "Retrospective evaluation on a labelled local data set, run through the service's own pipeline"
        overall = evaluation.overall
        efficacy = [ChaiMetricResult(Label=f"{label} (all, n={overall.count})",
                                     ValueJson=_value_json(getattr(overall, field), count=overall.count))
                    for label, field in (("AUC", "auc"), ("Sensitivity at the operating threshold", "sensitivity"),
                                         ("Specificity at the operating threshold", "specificity"),
                                         ("Balanced accuracy", "balanced_accuracy"))]
        fairness = [
            ChaiMetricResult(Label=f"{label} ({g.skin_group}, n={g.count})",
                             ValueJson=_value_json(getattr(g, field), count=g.count, positives=g.positives))
            for g in evaluation.per_skin_group
            for label, field in (("AUC", "auc"), ("Sensitivity at the rule-out threshold", "sensitivity_at_rule_out"))
        ] or [ChaiMetricResult(Label="per skin group", ValueJson="null")]
        safety = [ChaiMetricResult(Label=f"{label} (all, n={overall.count})",
                                   ValueJson=_value_json(getattr(overall, f)))
                  for label, f in (("Sensitivity at the rule-out threshold", "sensitivity_at_rule_out"),
                                   ("NPV at the rule-out threshold", "npv_at_rule_out"),
                                   ("Expected calibration error", "ece"))]
        safety.append(ChaiMetricResult(Label="Melanomas the disposition would send home",
                                       ValueJson=json.dumps({"value": overall.routine_melanomas})))
        interpretation = (f"AUC {_fmt(overall.auc)} over every scored image; per ITA group: "
                          + "; ".join(f"{g.skin_group} {_fmt(g.auc)}" for g in evaluation.per_skin_group) + ".")
    else:
        testing = "No evaluation stored; the figures are the training run's validation fold."
        test_type = "Internal validation (held-out patients of the training data)"
        efficacy = [ChaiMetricResult(Label=f"validation {k}", ValueJson=json.dumps({"value": v}))
                    for k, v in validation.items()] or [ChaiMetricResult(Label="not evaluated", ValueJson="null")]
        fairness = [ChaiMetricResult(Label="per skin group", ValueJson="null")]
        safety = [ChaiMetricResult(Label="not evaluated", ValueJson="null")]
        interpretation = "Not evaluated on a held-out evaluation set: store one with `dermasentinel evaluate`."
    validation_process = (
        "`dermasentinel evaluate` runs every image through the service's pipeline (quality gates, Gate 1, Equity "
        "Engine, TTA, calibration, thresholds); 95% percentile bootstrap intervals; the same block per ITA skin group. "
        "Activation can be held to an acceptance file (minimum AUC, sensitivity at the rule-out threshold, largest "
        "gap of any ITA group) on a named evaluation set."
    )
    if points is not None:
        operating = (f"Operating threshold {points.threshold if points.threshold is not None else 'default'} "
                     f"(chosen on {points.chosen_on} for sensitivity {points.target_sensitivity}); rule-out threshold "
                     f"{points.rule_out_threshold:.3f}"
                     + (" (the conservative default)" if points.rule_out_is_default
                        else f" (chosen for sensitivity {points.rule_out_sensitivity})") + ".")
    else:
        operating = "A segmenter: no operating threshold."
    data_text = "Not recorded in the training card."
    if training is not None:
        data_text = (f"{training.description or 'unnamed data'}: {_known(training.images)} images of "
                     f"{_known(training.patients)} patients, {_known(training.positives)} melanomas; split "
                     f"{training.split or 'not recorded'}; data "
                     f"fingerprint {training.fingerprint or 'not recorded'}."
                     + (" Generated (synthetic) images, not clinical data." if training.synthetic else ""))
    return AppliedModelCard(
        BasicInfo=ChaiBasicInfo(ModelName=f"DermaSentinel {kind} {name}", ModelDeveloper=developer,
                                DeveloperContact=str(extra.get("contact") or NOT_STATED)),
        ReleaseInfo=ChaiReleaseInfo(
            ReleaseStage=f"{row.status} in this site's model registry", ReleaseDate=_iso(row.created_at) or NOT_STATED,
            ReleaseVersion=f"{row.version} (sha256 {row.sha256}; registry id {row.id})",
            GlobalAvailability="This site only: weights are trained locally and never distributed with DermaSentinel.",
            RegulatoryApproval=REGULATORY_STATUS,
        ),
        ModelSummary=ChaiModelSummary(
            Summary=f"{INTENDED_USE[kind]} {operating} Weights: {weights}.",
            Keywords=["dermatology", "melanoma", "skin lesion", "decision support", "ITA skin tone"],
        ),
        UsesAndDirections=ChaiUsesAndDirections(
            IntendedUseAndWorkflow=INTENDED_USE[kind],
            PrimaryIntendedUsers="Clinicians (dermatology, primary care) reviewing the service's results.",
            HowToUse="Submit a photo (`POST /v1/analyses`); read the probability, risk band, disposition and caveats "
                     "in the result, PDF or FHIR bundle; a clinician decides. " + DISCLAIMER,
            TargetedPatientPopulation="Patients with a skin lesion photographed for melanoma triage, within the skin "
                                      "tones and ages the evaluation covers.",
            CautionedOutOfScopeSettings=" ".join(OUT_OF_SCOPE),
        ),
        Warnings=ChaiWarnings(
            KnownRisksAndLimitations=" ".join(limitations),
            KnownBiasesOrEthicalConsiderations=" ".join(bias),
            ClinicalRiskLevel="Decision support for a condition where a miss is serious: every output goes to a "
                              "clinician; not for autonomous use.",
        ),
        TrustIngredients=ChaiTrustIngredients(
            AISystemFacts=ChaiAISystemFacts(
                OutcomesAndOutputs="; ".join(OUTPUTS[kind]), ModelType=MODEL_TYPE[kind],
                FoundationModels="None (no pre-trained weights)",
                InputDataSource="Photographs and metadata submitted by the operating site's clinical systems.",
                OutputAndInputDataTypes=f"Inputs: {'; '.join(INPUTS[kind])}. Outputs: {'; '.join(OUTPUTS[kind])}.",
                DevelopmentDataCharacterization=data_text,
                BiasMitigationApproaches="Patient-grouped split; class-imbalance weighting; per-ITA-group evaluation "
                                         "with intervals; bias warning and clinician review at ITA of "
                                         f"{BIAS_WARNING_MAX_ITA:g}° or below; acceptance bounds on group gaps.",
                OngoingMaintenance="Registry of versions with activation, rollback and an audit trail; "
                                   "re-evaluation stored per version; this card regenerates from them.",
                Security="Checkpoints verified by sha256 before loading; API keys with scopes; every read of this "
                         "card is audited.",
                Transparency=f"This card at {card_url(row.id)} (JSON, or HTML with Accept: text/html).",
            ),
            TransparencyInformation=ChaiTransparencyInformation(
                FundingSource=str(extra.get("funding") or NOT_STATED),
                ThirdPartyInformation="None",
                StakeholdersConsulted=str(extra.get("stakeholders") or NOT_STATED),
            ),
        ),
        KeyMetrics=ChaiKeyMetrics(
            UsefulnessUsabilityEfficacy=ChaiKeyMetric(
                MetricGoal="Discriminate melanoma from benign lesions: AUC-ROC, and sensitivity and specificity at the "
                           "operating threshold.",
                Results=efficacy, Interpretation=interpretation, TestType=test_type,
                TestingDataDescription=testing, ValidationProcessAndJustification=validation_process,
            ),
            FairnessEquity=ChaiKeyMetric(
                MetricGoal="Comparable discrimination and rule-out sensitivity in every ITA skin group.",
                Results=fairness, Interpretation=" ".join(bias), TestType=test_type,
                TestingDataDescription=testing, ValidationProcessAndJustification=validation_process,
            ),
            SafetyReliability=ChaiKeyMetric(
                MetricGoal="Few melanomas below the rule-out threshold (sensitivity and NPV there); calibrated "
                           "probabilities.",
                Results=safety, Interpretation=operating, TestType=test_type,
                TestingDataDescription=testing, ValidationProcessAndJustification=validation_process,
            ),
        ),
        Resources=ChaiResources(
            EvaluationReferences=testing, ClinicalTrial="None", PeerReviewedPublications="None",
            ReimbursementStatus="None",
            PatientConsentOrDisclosure="Results state that they come from a research tool, not a certified medical "
                                       "device; disclosure to patients follows the site's policy.",
        ),
        Bibliography="",
    )


# ---------------------------------------------------------------------------------- list


def listed(row: ModelVersion) -> ModelListed:
    """A registered version as ``GET /v1/models`` lists it."""
    card = ModelCard.of(row.card)
    calibration = card.calibration or Calibration()
    stored = stored_evaluations(row)
    latest = stored[-1] if stored else None
    overall = latest.report.overall if latest is not None else None
    governance = Governance.of(row.governance).latest
    acceptance: AcceptanceState | None = None
    if governance is not None:
        check = governance.acceptance
        acceptance = "not_checked" if check is None else ("passed" if check.passed else "failed")
    return ModelListed(
        id=str(row.id), kind=cast(ModelKind, row.kind), version=row.version, sha256=row.sha256,
        status=cast(ModelStatusName, row.status), weights=cast(WeightsStatus, card.weights),
        created_at=_iso(row.created_at), activated_at=_iso(row.activated_at), threshold=row.threshold,
        rule_out_threshold=calibration.rule_out_threshold,
        evaluation_set=EvaluationSetOut(**latest.evaluation_set.model_dump()) if latest is not None else None,
        auc=_estimate(overall.metrics.get("auc")) if overall is not None else None,
        acceptance=acceptance,
        override=governance is not None and governance.override is not None,
        card_url=card_url(row.id),
    )


# ---------------------------------------------------------------------------------- HTML

# The page: shared/templates/model_card.html (package data), rendered with autoescape on.
TEMPLATE = Path(__file__).with_name("templates") / "model_card.html"


def _known(value: int | None) -> str:
    return "an unrecorded number of" if value is None else str(value)


def _fmt3(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@functools.cache
def _page() -> Template:
    """The compiled page, on first use (importing this module for ``card_url`` reads no file)."""
    environment = Environment(autoescape=True, keep_trailing_newline=True)
    environment.globals.update(fmt3=_fmt3, est=_fmt, known=_known)
    return environment.from_string(TEMPLATE.read_text(encoding="utf-8"))


def render_html(card: ModelCardOut) -> str:
    """The card as one self-contained HTML page (no scripts, no external resources; every value escaped)."""
    return _page().render(card=card)
