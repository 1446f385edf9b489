"""The clinical rules as numbers: the decision threshold, risk bands, uncertainty levels, the
review and bias rules, skin groups, concept grades, the 6 mm rule, the image-quality gates and
what counts as trained weights.

Operating threshold: every function that depends on the melanoma threshold takes an optional
``threshold``. ``None`` means the design's default (``MELANOMA_THRESHOLD``, 0.5). A model
registry that ships a validated operating point passes it; stored analyses carry it as
``model.threshold`` (read with ``threshold_of``). The high band does not move with the
threshold: "high" means a probability above 0.8 whatever the operating point, and only rises
to the threshold itself if a model's threshold is above 0.8 (so that every band above "low" is
a melanoma call and "low" is always benign).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.clinical.shapes import Provenance

# ---------------------------------------------------------------- decision and risk bands

MELANOMA_THRESHOLD = 0.5
HIGH_RISK_THRESHOLD = 0.8
DIAGNOSES = ("melanoma", "benign")
RISK_BANDS = ("high", "medium", "low")
# The key of a stored analysis' model provenance (JSON column) that holds its operating
# threshold: triage reads it in SQL (api/services/batches.py).
THRESHOLD_KEY = "threshold"


def operating_threshold(threshold: float | None = None) -> float:
    """The melanoma threshold in force: ``threshold`` if given (strictly inside 0..1)."""
    if threshold is None:
        return MELANOMA_THRESHOLD
    value = float(threshold)
    if not 0.0 < value < 1.0:
        raise ValueError(f"an operating threshold must lie strictly between 0 and 1, not {threshold!r}")
    return value


def high_risk_threshold(threshold: float | None = None) -> float:
    """Lower bound (exclusive) of the high band: 0.8, or the operating threshold if higher."""
    return max(HIGH_RISK_THRESHOLD, operating_threshold(threshold))


def threshold_of(model: Provenance | None) -> float | None:
    """The operating threshold recorded in an analysis' model provenance, if any."""
    return model.threshold if model is not None else None


def diagnosis(probability: float, threshold: float | None = None) -> str:
    return "melanoma" if probability > operating_threshold(threshold) else "benign"


def risk_band(probability: float, threshold: float | None = None) -> str:
    if probability > high_risk_threshold(threshold):
        return "high"
    if probability > operating_threshold(threshold):
        return "medium"
    return "low"


def risk_band_ranges(threshold: float | None = None) -> dict[str, str]:
    """Each band's probability range as printed in notes and reports."""
    low, high = operating_threshold(threshold), high_risk_threshold(threshold)
    return {"high": f"> {high:.2f}", "medium": f"{low:.2f}–{high:.2f}", "low": f"{low:.2f} or below"}


def risk_zones(threshold: float | None = None) -> list[tuple[float, float, str]]:
    """(from, to, band) over 0..1, lowest first: the zones of a probability scale."""
    low, high = operating_threshold(threshold), high_risk_threshold(threshold)
    zones = [(0.0, low, "low"), (low, high, "medium"), (high, 1.0, "high")]
    return [zone for zone in zones if zone[1] > zone[0]]


# ---------------------------------------------------------------- uncertainty and review

# TTA standard deviation from which the views disagree enough that the score is unreliable.
HIGH_UNCERTAINTY = 0.15
MODERATE_UNCERTAINTY = 0.08
# A probability this close to the operating threshold could fall either side of it.
REVIEW_MARGIN = 0.1

REVIEW_HIGH_UNCERTAINTY = "high_uncertainty"
REVIEW_NEAR_THRESHOLD = "near_threshold"
REVIEW_BIAS_WARNING = "bias_warning"
REVIEW_WEIGHTS_NOT_TRAINED = "weights_not_trained"
REVIEW_REASONS = (REVIEW_HIGH_UNCERTAINTY, REVIEW_NEAR_THRESHOLD, REVIEW_BIAS_WARNING, REVIEW_WEIGHTS_NOT_TRAINED)


def uncertainty_level(uncertainty: float) -> str:
    if uncertainty >= HIGH_UNCERTAINTY:
        return "high"
    if uncertainty >= MODERATE_UNCERTAINTY:
        return "moderate"
    return "low"


def review_reasons(
    probability: float | None,
    uncertainty: float | None,
    bias_warning: bool | None,
    weights: str | None = None,
    threshold: float | None = None,
) -> list[str]:
    """Why a result needs a clinician's review (empty: it does not), in a fixed order.
    ``weights`` is the model's weights status; ``None`` means it is not known here and adds
    no reason (pass it wherever the status is known)."""
    reasons = []
    if uncertainty is not None and uncertainty >= HIGH_UNCERTAINTY:
        reasons.append(REVIEW_HIGH_UNCERTAINTY)
    if probability is not None and abs(probability - operating_threshold(threshold)) < REVIEW_MARGIN:
        reasons.append(REVIEW_NEAR_THRESHOLD)
    if bias_warning:
        reasons.append(REVIEW_BIAS_WARNING)
    if weights is not None and not is_clinically_meaningful(weights):
        reasons.append(REVIEW_WEIGHTS_NOT_TRAINED)
    return reasons


def review_rule_text(threshold: float | None = None) -> str:
    """The review rule in one sentence, as triage documents it next to its ``needs_review``."""
    return (
        f"needs_review when uncertainty >= {HIGH_UNCERTAINTY} ({REVIEW_HIGH_UNCERTAINTY}), or "
        f"|probability - {operating_threshold(threshold):g}| < {REVIEW_MARGIN} ({REVIEW_NEAR_THRESHOLD}; the "
        "model's own operating threshold when it has one), or the skin tone carries a bias warning, "
        f"ITA <= {BIAS_WARNING_MAX_ITA:g} degrees ({REVIEW_BIAS_WARNING}), or the model's weights are not "
        f"'{TRAINED}' ({REVIEW_WEIGHTS_NOT_TRAINED})"
    )


# ---------------------------------------------------------------- skin tone and the bias rule

# Darker skin (ITA <= 10 degrees) is under-represented in ISIC training data.
BIAS_WARNING_MAX_ITA = 10.0
# Upper ITA bound of each group (inclusive), darkest first; lighter than the last is "very light".
SKIN_GROUP_BOUNDS = ((-30.0, "dark"), (10.0, "brown"), (28.0, "tan"), (41.0, "intermediate"), (55.0, "light"))
LIGHTEST_SKIN_GROUP = "very light"
# Lightest first: the order of the equity summary.
SKIN_GROUPS = (LIGHTEST_SKIN_GROUP,) + tuple(name for _, name in reversed(SKIN_GROUP_BOUNDS))
# Groups that lie wholly at or below the bias cut-off: every ITA in them carries the warning.
BIAS_WARNING_GROUPS = frozenset(name for upper, name in SKIN_GROUP_BOUNDS if upper <= BIAS_WARNING_MAX_ITA)


def skin_group(ita_degrees: float) -> str:
    for upper, name in SKIN_GROUP_BOUNDS:
        if ita_degrees <= upper:
            return name
    return LIGHTEST_SKIN_GROUP


def bias_warning(ita_degrees: float) -> bool:
    return ita_degrees <= BIAS_WARNING_MAX_ITA


def group_bias_warning(group: str | None) -> bool:
    return group in BIAS_WARNING_GROUPS


# ---------------------------------------------------------------- ABCD concepts

# The ABCD rule's classic "D" cut-off: a lesion wider than this is a criterion.
DIAMETER_THRESHOLD_MM = 6.0
# A 0..1 concept score in words, by quarters: below each bound its grade; from 0.75 "marked".
CONCEPT_GRADE_BOUNDS = ((0.25, "minimal"), (0.5, "mild"), (0.75, "moderate"))
STRONGEST_CONCEPT_GRADE = "marked"


def concept_grade(score: float) -> str:
    """Plain-language grade of a 0..1 ABCD concept score."""
    for bound, grade in CONCEPT_GRADE_BOUNDS:
        if score < bound:
            return grade
    return STRONGEST_CONCEPT_GRADE


def above_diameter_threshold(diameter_mm: float) -> bool:
    return diameter_mm > DIAMETER_THRESHOLD_MM


# ---------------------------------------------------------------- image-quality gates

# Defaults of the pipeline's gates (BLUR_THRESHOLD and MIN_COVERAGE settings may change them per
# deployment): a photo sharper than this Laplacian variance, a mask covering at least this share.
BLUR_THRESHOLD = 100.0
MIN_COVERAGE = 0.01
# Shorter side (px) below which a photo is rejected ``low_resolution`` (setting MIN_IMAGE_SIDE).
MIN_IMAGE_SIDE = 256

# ---------------------------------------------------------------- weights status: honesty

TRAINED = "trained"
UNTRAINED = "untrained"
SYNTHETIC = "synthetic"  # trained on generated images only
WEIGHTS_STATUSES = (UNTRAINED, SYNTHETIC, TRAINED)
UNKNOWN_WEIGHTS = "unknown"


def weights_status(model: Provenance | Mapping | None) -> str | None:
    """The weights status recorded with an analysis; None when no model ran for it."""
    if isinstance(model, Mapping):
        # The stored JSON column as it is (lists and event payloads read it without validating
        # the whole provenance): the one string-keyed read of it kept here.
        return model.get("weights")
    return model.weights if model is not None else None


def is_clinically_meaningful(weights: str | None) -> bool:
    """Only ``trained`` weights give output a clinician may act on; anything else
    (untrained, synthetic, unknown, a status added later) does not."""
    return weights == TRAINED


def shows_weights_warning(weights: str | None, has_result: bool) -> bool:
    """Whether an analysis' output carries the not-meaningful banner: its weights are anything
    but ``trained``, or unknown while it has a result (a failed or canceled analysis that no
    model ran for shows no output, so no banner)."""
    if weights is None:
        return has_result
    return not is_clinically_meaningful(weights)


def weights_counts(values: Mapping[str | None, int]) -> dict[str, int]:
    """Counts per weights status (unknown for missing), known statuses first."""
    counts: dict[str, int] = {}
    for status, n in values.items():
        if n:
            key = status or UNKNOWN_WEIGHTS
            counts[key] = counts.get(key, 0) + n
    order = {status: i for i, status in enumerate(WEIGHTS_STATUSES)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
