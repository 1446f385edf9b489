"""The clinical rules, in one place: every threshold, band, flag and sentence of advice that
decides what a clinician is told. The pipeline, the reports, triage, CSV exports, webhooks,
the CLI and the API take them from here, so no two surfaces can disagree.

Pure Python (no torch, numpy, FastAPI or database): importable by every process.
docs/CLINICAL_RULES.md explains each rule and the choices made.

Operating threshold: every function that depends on the melanoma threshold takes an
optional ``threshold``. ``None`` means the design's default (``MELANOMA_THRESHOLD``, 0.5). A
model registry that ships a validated operating point passes it; stored analyses carry it
as ``model["threshold"]`` (read with ``threshold_of``). The high band does not move with the
threshold: "high" means a probability above 0.8 whatever the operating point, and only
rises to the threshold itself if a model's threshold is above 0.8 (so that every band
above "low" is a melanoma call and "low" is always benign).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.schemas.analyses import ModelInfo

# ---------------------------------------------------------------- decision and risk bands

MELANOMA_THRESHOLD = 0.5
HIGH_RISK_THRESHOLD = 0.8
DIAGNOSES = ("melanoma", "benign")
RISK_BANDS = ("high", "medium", "low")
# Where a stored analysis keeps the operating threshold its model used (absent: the default).
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


def threshold_of(model: ModelInfo | Mapping | None) -> float | None:
    """The operating threshold recorded in an analysis' model provenance, if any (a stored
    row's provenance is read as ``ModelInfo``; old rows' dicts are still accepted)."""
    value = (model or {}).get(THRESHOLD_KEY) if isinstance(model, Mapping | None) else model.threshold
    return float(value) if value is not None else None


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


# ---------------------------------------------------------------- rejections and advice

REJECTION_REASONS = {
    "blurry": "The image is too blurred to assess the lesion.",
    "no_lesion": "No skin lesion could be found in the image.",
    "unreadable_image": "The file could not be read as an image.",
    "unsupported_media_type": "The file is not a JPEG or PNG image.",
    "image_too_large": "The image has more pixels than the service accepts.",
    "payload_too_large": "The file is larger than the upload size limit.",
}
# What to do about each rejection: the one wording of the API (``rejection.advice``, triage
# ``retake_advice``), the web app, the scribe note, the PDF and the FHIR conclusion.
RETAKE_ADVICE = {
    "blurry": (
        "Retake the photo in focus: hold the camera or dermatoscope steady, let it focus on the "
        "lesion, and check the picture is sharp before sending it."
    ),
    "no_lesion": (
        "Retake the photo with the lesion centred in the frame and filling about a third of it; "
        "keep hair, glare and ruler markings off the lesion, and check the right spot was photographed."
    ),
    "unreadable_image": (
        "Send the photo again as a JPEG or PNG file exported directly from the camera or "
        "dermatoscope software (not a screenshot or a PDF)."
    ),
    "unsupported_media_type": "Send the photo again as a JPEG or PNG file.",
    "image_too_large": "Send the photo again at a lower resolution, as a JPEG or PNG file.",
    "payload_too_large": "Send a smaller file: export the photo again as a JPEG at a lower resolution.",
}
DEFAULT_RETAKE_ADVICE = "Retake the photo and submit it again."
FAILED_ADVICE = (
    "This was a system error, not a problem with the photo. Submit the photo again later; if it "
    "fails again, contact the service operator and quote the analysis id."
)


def rejection_reason(code: str | None) -> str:
    return REJECTION_REASONS.get(code or "", "The image did not pass a quality gate.")


def retake_advice(code: str | None) -> str:
    return RETAKE_ADVICE.get(code or "", DEFAULT_RETAKE_ADVICE)


# ---------------------------------------------------------------- weights status: honesty

TRAINED = "trained"
UNTRAINED = "untrained"
SYNTHETIC = "synthetic"  # trained on generated images only
WEIGHTS_STATUSES = (UNTRAINED, SYNTHETIC, TRAINED)
UNKNOWN_WEIGHTS = "unknown"

UNTRAINED_BANNER = "UNTRAINED MODEL — output is not clinically meaningful"
UNTRAINED_WATERMARK = "UNTRAINED MODEL — NOT FOR CLINICAL USE"
_HEADLINES = {UNTRAINED: "UNTRAINED MODEL", SYNTHETIC: "MODEL TRAINED ON SYNTHETIC IMAGES ONLY"}
_WHY_NOT = {
    UNTRAINED: "the classifier has no trained weights",
    SYNTHETIC: "the classifier was trained on generated images only and is not clinically validated",
}
DISCLAIMER = (
    "Research use only. DermaSentinel is not a certified medical device. This output is "
    "generated by fixed rules from model scores and does not replace clinical examination, "
    "dermoscopy by a trained clinician, or histopathology."
)


def weights_status(model: ModelInfo | Mapping | None) -> str | None:
    """The weights status recorded with an analysis; None when no model ran for it."""
    return (model or {}).get("weights") if isinstance(model, Mapping | None) else model.weights


def is_clinically_meaningful(weights: str | None) -> bool:
    """Only ``trained`` weights give output a clinician may act on; anything else
    (untrained, synthetic, unknown, a status added later) does not."""
    return weights == TRAINED


def weights_headline(weights: str | None) -> str:
    return _HEADLINES.get(weights or "", f"MODEL WEIGHTS {(weights or UNKNOWN_WEIGHTS).upper()}")


def weights_banner(weights: str | None) -> str | None:
    """The banner every surface shows above output from these weights (None: trained)."""
    if is_clinically_meaningful(weights):
        return None
    return f"{weights_headline(weights)} — output is not clinically meaningful"


def weights_watermark(weights: str | None) -> str | None:
    if is_clinically_meaningful(weights):
        return None
    headline = "SYNTHETIC-DATA MODEL" if weights == SYNTHETIC else weights_headline(weights)
    return f"{headline} — NOT FOR CLINICAL USE"


def do_not_act(weights: str | None) -> str | None:
    """The first line of every PLAN from weights that are not trained."""
    if is_clinically_meaningful(weights):
        return None
    why = _WHY_NOT.get(weights or "", f"the classifier's weights are {weights or UNKNOWN_WEIGHTS}, not trained")
    return f"Do not act on this output: {why}. Manage the lesion on clinical grounds alone."


def weights_counts(values: Mapping[str | None, int]) -> dict[str, int]:
    """Counts per weights status (unknown for missing), known statuses first."""
    counts: dict[str, int] = {}
    for status, n in values.items():
        if n:
            key = status or UNKNOWN_WEIGHTS
            counts[key] = counts.get(key, 0) + n
    order = {status: i for i, status in enumerate(WEIGHTS_STATUSES)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def ranking_warning(counts: Mapping[str, int]) -> str | None:
    """What a batch's summary says when some of its results come from weights that are not
    trained (None when every result is meaningful, or there are none)."""
    total = sum(counts.values())
    not_meaningful = {status: n for status, n in counts.items() if n and not is_clinically_meaningful(status)}
    if not not_meaningful:
        return None
    worst = next((s for s in (UNTRAINED, SYNTHETIC) if s in not_meaningful), next(iter(not_meaningful)))
    n = sum(not_meaningful.values())
    breakdown = ", ".join(f"{status} {count}" for status, count in not_meaningful.items())
    return (
        f"{weights_headline(worst)} — ranking by probability is not meaningful: {n} of {total} results "
        f"come from weights that are not trained ({breakdown}); their diagnosis, probability and risk "
        "band carry no clinical meaning. Review every item on clinical grounds."
    )


def weights_summary(values: Mapping[str | None, int]) -> dict:
    """``weights`` (counts per status over results) and ``weights_warning`` for a batch."""
    counts = weights_counts(values)
    return {"weights": counts, "weights_warning": ranking_warning(counts)}


# ---------------------------------------------------------------- patient metadata vocabularies
# One vocabulary, in shared.clinical.vocabulary; re-exported here for the rules' callers.
from shared.clinical.vocabulary import AGE_RANGE, SEXES, SITE_ALIASES, SITES  # noqa: E402, F401
