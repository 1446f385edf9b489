"""The disposition: what should happen next for a lesion, the way clinics act on a result.

Skin-lesion services in clinical use answer with a disposition, not a probability (Skin
Analytics DERM: urgent referral, dermatologist review, or discharge with safety-netting
advice; NICE HTE24 requires a clinician's review for black or brown skin). Ours:

- ``urgent_referral``: the probability reaches the model's high-risk operating point, and the
  weights are trained;
- ``routine``: the probability is below the model's rule-out threshold AND no review reason
  applies; it always comes with safety-netting advice;
- ``clinician_review`` otherwise, with every reason that applies.

Nothing from weights that are not ``trained`` is ever ``routine`` or ``urgent_referral``.
Rejected images keep their rejection and have no disposition. Reason codes are stable: clients
and reports key on them. The rules are documented in docs/CLINICAL_RULES.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.clinical.rules import (
    DIAMETER_THRESHOLD_MM,
    HIGH_UNCERTAINTY,
    REVIEW_MARGIN,
    TRAINED,
    high_risk_threshold,
    operating_threshold,
    skin_group,
)
from shared.clinical.shapes import Disposition

URGENT_REFERRAL: Disposition = "urgent_referral"
CLINICIAN_REVIEW: Disposition = "clinician_review"
ROUTINE: Disposition = "routine"
DISPOSITIONS: tuple[Disposition, ...] = (URGENT_REFERRAL, CLINICIAN_REVIEW, ROUTINE)

# When a model's operating point records no rule-out threshold (it was not calibrated for
# one), nothing is ruled out above this: a conservative floor, far below the 0.5 decision
# threshold, so an uncalibrated model sends almost everything to review rather than home.
DEFAULT_RULE_OUT_THRESHOLD = 0.1
# The sensitivity calibration aims for when it chooses the rule-out threshold (train).
DEFAULT_RULE_OUT_SENSITIVITY = 0.95

# A blur score this many times the gate's minimum passed the gate, but only just.
BORDERLINE_BLUR_FACTOR = 1.25
# Lesion coverage this many times the coverage gate's minimum: the mask is barely a lesion.
BORDERLINE_COVERAGE_FACTOR = 2.0
# Under this age the model is weakly evidenced (melanoma in children is rare and presents
# differently; ISIC's training data hold few children).
ADULT_AGE = 18
# Sites the model is weakly evidenced on (acral and mucosal melanoma look different and are
# scarce in dermoscopic training sets).
WEAKLY_EVIDENCED_SITES = frozenset({"palms/soles", "oral/genital"})
# NICE HTE24: a clinician reviews every result on black or brown skin (Fitzpatrick V–VI),
# read here as the ITA groups "brown" and "dark".
REVIEW_SKIN_GROUPS = frozenset({"brown", "dark"})

# Reason codes, in the order they are listed.
REASON_HIGH_PROBABILITY = "high_probability"  # urgent_referral
REASON_BELOW_RULE_OUT = "below_rule_out"  # routine
REASON_WEIGHTS_NOT_TRAINED = "weights_not_trained"
REASON_DARKER_SKIN = "brown_or_dark_skin"
REASON_HIGH_UNCERTAINTY = "high_uncertainty"
REASON_NEAR_THRESHOLD = "near_threshold"
REASON_BORDERLINE_QUALITY = "borderline_quality"
REASON_WEAKLY_EVIDENCED_SITE = "weakly_evidenced_site"
REASON_UNDER_18 = "age_under_18"
REASON_MISSING_METADATA = "missing_metadata"
REASON_LARGE_DIAMETER = "diameter_over_6mm"
REASON_ABOVE_RULE_OUT = "above_rule_out"  # neither low enough to rule out nor high enough to refer
# The tenant is in safety mode after a drift of the model's output (issue 24, docs/MONITORING.md):
# every new result is reviewed, whatever the rules above say, until an operator clears it.
REASON_DRIFT = "drift"
REVIEW_REASON_CODES = (
    REASON_DRIFT,
    REASON_WEIGHTS_NOT_TRAINED,
    REASON_DARKER_SKIN,
    REASON_HIGH_UNCERTAINTY,
    REASON_NEAR_THRESHOLD,
    REASON_BORDERLINE_QUALITY,
    REASON_WEAKLY_EVIDENCED_SITE,
    REASON_UNDER_18,
    REASON_MISSING_METADATA,
    REASON_LARGE_DIAMETER,
    REASON_ABOVE_RULE_OUT,
)
REASON_TEXT = {
    REASON_HIGH_PROBABILITY: "the melanoma probability reaches the model's high-risk operating point",
    REASON_BELOW_RULE_OUT: "the melanoma probability is below the model's rule-out threshold",
    REASON_WEIGHTS_NOT_TRAINED: "the model's weights are not trained on clinical images: nothing can be assessed",
    REASON_DARKER_SKIN: "brown or dark skin, on which the model is weakly evidenced (NICE HTE24: always reviewed)",
    REASON_HIGH_UNCERTAINTY: "the test-time views disagree (high uncertainty)",
    REASON_NEAR_THRESHOLD: "the probability lies close to the decision threshold",
    REASON_BORDERLINE_QUALITY: "the photo only just passed the quality gates (sharpness or lesion size)",
    REASON_WEAKLY_EVIDENCED_SITE: "a site the model is weakly evidenced on (palms/soles, oral/genital)",
    REASON_UNDER_18: "the patient is under 18, an age the model is weakly evidenced on",
    REASON_MISSING_METADATA: "age, sex or site was not given, and the model uses them",
    REASON_LARGE_DIAMETER: "the lesion is wider than 6 mm (the ABCD rule's D)",
    REASON_ABOVE_RULE_OUT: "the probability is above the rule-out threshold but below the referral one",
    REASON_DRIFT: "the model's recent output has drifted from what it was validated on: every result is reviewed "
    "until the drift is resolved",
}
DISPOSITION_TEXT = {
    URGENT_REFERRAL: "Urgent referral",
    CLINICIAN_REVIEW: "Clinician review",
    ROUTINE: "Routine (safety-netting advice)",
}
SAFETY_NETTING = (
    "No feature met the referral or review rules. Re-photograph the lesion in 3 months, in the "
    "same light and from the same distance, and compare. Come back sooner, at once, if it grows, "
    "changes shape or colour, develops an irregular border, bleeds, itches, crusts or does not "
    "heal, or if a new or different-looking spot appears."
)


@dataclass(frozen=True)
class DispositionInputs:
    """What the rules read: the result's numbers, the patient's metadata, the model."""

    probability: float
    uncertainty: float
    ita_degrees: float | None
    blur_score: float | None
    coverage: float | None
    age: int | None
    sex: str | None
    site: str | None
    weights: str | None
    threshold: float | None = None  # the model's operating (decision) threshold; None: the default
    rule_out_threshold: float | None = None  # the model's; None: DEFAULT_RULE_OUT_THRESHOLD
    blur_threshold: float | None = None  # the quality gate's minimum, when known
    diameter_mm: float | None = None  # only when the photo's pixel spacing was given
    min_coverage: float | None = None  # the coverage gate's minimum, when known


@dataclass(frozen=True)
class DispositionDecision:
    disposition: Disposition
    reasons: list[str] = field(default_factory=list)
    safety_netting: str | None = None


def rule_out_threshold(value: float | None) -> float:
    return DEFAULT_RULE_OUT_THRESHOLD if value is None else float(value)


def urgent_threshold(threshold: float | None = None) -> float:
    """The high-risk operating point: the lower bound of the high risk band."""
    return high_risk_threshold(threshold)


def review_reasons(inputs: DispositionInputs) -> list[str]:
    """Every reason a clinician must look, in ``REVIEW_REASON_CODES`` order (without
    ``above_rule_out``, which depends on the disposition)."""
    reasons = []
    if inputs.weights != TRAINED:
        reasons.append(REASON_WEIGHTS_NOT_TRAINED)
    if inputs.ita_degrees is not None and skin_group(inputs.ita_degrees) in REVIEW_SKIN_GROUPS:
        reasons.append(REASON_DARKER_SKIN)
    if inputs.uncertainty >= HIGH_UNCERTAINTY:
        reasons.append(REASON_HIGH_UNCERTAINTY)
    if abs(inputs.probability - operating_threshold(inputs.threshold)) < REVIEW_MARGIN:
        reasons.append(REASON_NEAR_THRESHOLD)
    if _borderline_quality(inputs):
        reasons.append(REASON_BORDERLINE_QUALITY)
    if inputs.site in WEAKLY_EVIDENCED_SITES:
        reasons.append(REASON_WEAKLY_EVIDENCED_SITE)
    if inputs.age is not None and inputs.age < ADULT_AGE:
        reasons.append(REASON_UNDER_18)
    if inputs.age is None or inputs.sex in (None, "unknown") or inputs.site in (None, "unknown"):
        reasons.append(REASON_MISSING_METADATA)
    if inputs.diameter_mm is not None and inputs.diameter_mm > DIAMETER_THRESHOLD_MM:
        reasons.append(REASON_LARGE_DIAMETER)
    return reasons


def decide(inputs: DispositionInputs) -> DispositionDecision:
    """The disposition of one final, non-rejected result."""
    reasons = review_reasons(inputs)
    trained = inputs.weights == TRAINED
    if trained and inputs.probability > urgent_threshold(inputs.threshold):
        # Review reasons still travel with an urgent referral: the referral letter should say them.
        return DispositionDecision(URGENT_REFERRAL, [REASON_HIGH_PROBABILITY, *reasons])
    if trained and not reasons and inputs.probability < rule_out_threshold(inputs.rule_out_threshold):
        return DispositionDecision(ROUTINE, [REASON_BELOW_RULE_OUT], SAFETY_NETTING)
    if inputs.probability >= rule_out_threshold(inputs.rule_out_threshold):
        reasons.append(REASON_ABOVE_RULE_OUT)
    return DispositionDecision(CLINICIAN_REVIEW, reasons)


def under_drift(decision: DispositionDecision) -> DispositionDecision:
    """The disposition of a result while its tenant is in safety mode (a drift detected with
    ``DRIFT_ACTION=review_all``): ``clinician_review``, ``drift`` first, then the reasons the
    rules gave but ``below_rule_out`` (the rule-out is what drift puts in doubt). An urgent
    referral keeps ``high_probability``: the reviewer must see that the model scored high.
    No safety netting: nothing is routine."""
    kept = [code for code in decision.reasons if code not in (REASON_DRIFT, REASON_BELOW_RULE_OUT)]
    return DispositionDecision(CLINICIAN_REVIEW, [REASON_DRIFT, *kept])


def _borderline_quality(inputs: DispositionInputs) -> bool:
    blurry = (
        inputs.blur_score is not None
        and inputs.blur_threshold is not None
        and inputs.blur_score < inputs.blur_threshold * BORDERLINE_BLUR_FACTOR
    )
    small = (
        inputs.coverage is not None
        and inputs.min_coverage is not None
        and inputs.coverage < inputs.min_coverage * BORDERLINE_COVERAGE_FACTOR
    )
    return blurry or small
