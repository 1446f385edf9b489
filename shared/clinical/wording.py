"""The clinical sentences: the PLAN of each disposition, retake advice, the weights banners, the
bias warning, concept labels and disclaimers. The scribe note, the PDF, the FHIR bundle, the
grounded answers, triage and the API quote them from here, so no two surfaces can word the
same advice differently; the numbers they are about are in ``rules``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from shared.clinical.disposition import (
    CLINICIAN_REVIEW,
    DISPOSITION_TEXT,
    REASON_ABOVE_RULE_OUT,
    REASON_BELOW_RULE_OUT,
    REASON_HIGH_PROBABILITY,
    REASON_HIGH_UNCERTAINTY,
    REASON_NEAR_THRESHOLD,
    REASON_TEXT,
    REASON_WEIGHTS_NOT_TRAINED,
    ROUTINE,
    SAFETY_NETTING,
    URGENT_REFERRAL,
    Disposition,
    DispositionDecision,
    urgent_threshold,
)
from shared.clinical.rules import (
    DIAMETER_THRESHOLD_MM,
    SYNTHETIC,
    UNKNOWN_WEIGHTS,
    UNTRAINED,
    above_diameter_threshold,
    is_clinically_meaningful,
    threshold_of,
    uncertainty_level,
    weights_counts,
    weights_status,
)

if TYPE_CHECKING:
    from shared.clinical.shapes import Finding, Provenance

# ---------------------------------------------------------------- rejections and advice

REJECTION_REASONS = {
    "low_resolution": "The image has too few pixels to assess the lesion.",
    "blurry": "The image is too blurred to assess the lesion.",
    "no_lesion": "No skin lesion could be found in the image.",
    "unreadable_image": "The file could not be read as an image.",
    "unsupported_media_type": "The file is not a JPEG or PNG image.",
    "image_too_large": "The image has more pixels than the service accepts.",
    "payload_too_large": "The file is larger than the upload size limit.",
    "unsupported_dicom": "The DICOM file is not a colour photograph of the kind analysed.",
}
DEFAULT_REJECTION_REASON = "The image did not pass a quality gate."
# What to do about each rejection: the one wording of the API (``rejection.advice``, triage
# ``retake_advice``), the web app, the scribe note, the PDF and the FHIR conclusion.
RETAKE_ADVICE = {
    "low_resolution": (
        "Retake the photo closer or at a higher resolution: the shorter side must be at least 256 pixels "
        "(the default minimum; the rejection's detail gives this service's). Send the camera's original "
        "file, not a thumbnail or a cropped screenshot."
    ),
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
    "unsupported_dicom": (
        "Send a one-frame colour VL Photographic, Dermoscopic Photography or Secondary Capture image "
        "(uncompressed, JPEG baseline or JPEG lossless), or the photo as a JPEG or PNG file."
    ),
}
DEFAULT_RETAKE_ADVICE = "Retake the photo and submit it again."
FAILED_ADVICE = (
    "This was a system error, not a problem with the photo. Submit the photo again later; if it "
    "fails again, contact the service operator and quote the analysis id."
)


def rejection_reason(code: str | None) -> str:
    return REJECTION_REASONS.get(code or "", DEFAULT_REJECTION_REASON)


def retake_advice(code: str | None) -> str:
    return RETAKE_ADVICE.get(code or "", DEFAULT_RETAKE_ADVICE)


# ---------------------------------------------------------------- PLAN: the disposition in words

# The PLAN's first line from trained weights, by disposition (shared.clinical.disposition decides it).
DISPOSITION_PLAN = {
    URGENT_REFERRAL: (
        "Refer urgently to dermatology (suspected-melanoma pathway) for dermoscopic "
        "examination and consideration of excision biopsy."
    ),
    CLINICIAN_REVIEW: (
        "Clinician review: a clinician examines the lesion, with dermoscopy, and decides whether to "
        "refer or discharge; this result alone cannot rule melanoma out."
    ),
    ROUTINE: "Routine care: no referral or review rule applies. Give the patient the safety-netting advice.",
}
# The PLAN line, the disposition's explanation and the PDF's box from weights that are not trained:
# the one disposition they ever get, and why.
NOT_ASSESSABLE = (
    "Clinician review because the model's weights are not trained: the findings cannot be assessed. A "
    "clinician examines the lesion and decides on clinical grounds."
)
# Said of a result stored before dispositions existed (its disposition is derived, never routine).
DISPOSITION_NOT_RECORDED = (
    "No disposition was recorded with this result (it predates dispositions): without its review reasons "
    "it cannot be ruled out."
)
# Reasons read off the model's own output: from weights that are not trained they mean as little
# as the output, so no surface gives them as reasons (weights_not_trained says it all).
MODEL_OUTPUT_REASONS = (REASON_HIGH_UNCERTAINTY, REASON_NEAR_THRESHOLD, REASON_ABOVE_RULE_OUT)
HIGH_UNCERTAINTY_ADVICE = (
    "Model views disagree (high uncertainty): specialist review is required whatever "
    "the risk band; this result cannot rule melanoma out."
)
MODERATE_UNCERTAINTY_ADVICE = "Moderate uncertainty: consider clinician dermoscopy before discharge."
BIAS_ADVICE = (
    "Skin tone outside the model's well-represented range: interpret with caution and prefer specialist review."
)
DIAMETER_ADVICE = f"Diameter above {DIAMETER_THRESHOLD_MM:.0f} mm despite a low score: clinical review advised."
# The record fields a PLAN is decided by, as a grounded answer cites them.
PLAN_FIELDS = (
    "result.disposition",
    "result.safety_netting",
    "result.risk_band",
    "result.uncertainty",
    "result.equity.bias_warning",
    "result.concepts.diameter_mm",
    "model.weights",
)


def plan(
    *,
    disposition: Disposition,
    risk_band: str,
    uncertainty: float,
    bias_warning: bool,
    diameter_mm: float | None,
    weights: str | None,
    safety_netting: str | None = None,
) -> list[str]:
    """The PLAN lines of a disposition. Weights that are not trained (``None``, not recorded,
    counts as unknown): ``do_not_act`` and ``NOT_ASSESSABLE``, nothing read off the output.
    Trained: the ``DISPOSITION_PLAN`` line; for ``routine`` the safety netting and nothing else;
    otherwise the advice that applies, in this order: high uncertainty, moderate uncertainty
    (clinician review, low band), skin tone, diameter (clinician review, low band)."""
    caution = do_not_act(weights)
    if caution:
        return [caution, NOT_ASSESSABLE]
    lines = [DISPOSITION_PLAN[disposition]]
    if disposition == ROUTINE:
        return lines + [safety_netting or SAFETY_NETTING]
    review = disposition == CLINICIAN_REVIEW
    level = uncertainty_level(uncertainty)
    if level == "high":
        lines.append(HIGH_UNCERTAINTY_ADVICE)
    elif level == "moderate" and review and risk_band == "low":
        lines.append(MODERATE_UNCERTAINTY_ADVICE)
    if bias_warning:
        lines.append(BIAS_ADVICE)
    if review and diameter_mm is not None and above_diameter_threshold(diameter_mm) and risk_band == "low":
        lines.append(DIAMETER_ADVICE)
    return lines


def disposition_of(result: Finding, model: Provenance | None) -> DispositionDecision:
    """The disposition every surface shows for a result: the recorded one, except that weights
    that are not trained always give ``clinician_review`` with ``weights_not_trained`` first and
    without ``MODEL_OUTPUT_REASONS``; a result stored before dispositions existed gets
    ``urgent_referral`` when trained and above the high-risk operating point, else
    ``clinician_review`` (never ``routine``: its review reasons were not recorded)."""
    weights = weights_status(model)
    if not is_clinically_meaningful(weights):
        dropped = {REASON_WEIGHTS_NOT_TRAINED, REASON_HIGH_PROBABILITY, REASON_BELOW_RULE_OUT, *MODEL_OUTPUT_REASONS}
        kept = [code for code in result.disposition_reasons if code not in dropped]
        return DispositionDecision(CLINICIAN_REVIEW, [REASON_WEIGHTS_NOT_TRAINED, *kept])
    if result.disposition is None:
        if result.probability > urgent_threshold(threshold_of(model)):
            return DispositionDecision(URGENT_REFERRAL, [REASON_HIGH_PROBABILITY])
        return DispositionDecision(CLINICIAN_REVIEW, [])
    safety_netting = (result.safety_netting or SAFETY_NETTING) if result.disposition == ROUTINE else None
    return DispositionDecision(result.disposition, list(result.disposition_reasons), safety_netting)


def disposition_text(decision: DispositionDecision) -> str:
    """The disposition in words, e.g. "Urgent referral"."""
    return DISPOSITION_TEXT[decision.disposition]


def reason_sentences(decision: DispositionDecision) -> list[str]:
    """Each reason's sentence (``REASON_TEXT``), in the decision's order."""
    return [REASON_TEXT.get(code, code) for code in decision.reasons]


def plan_for(result: Finding, model: Provenance | None) -> list[str]:
    """The PLAN of an analysis' result, from its disposition (``disposition_of``): what its
    scribe note says, FHIR recommends, the PDF prints and a grounded answer quotes."""
    decision = disposition_of(result, model)
    return plan(
        disposition=decision.disposition,
        risk_band=result.risk_band,
        uncertainty=result.uncertainty,
        bias_warning=result.equity.bias_warning,
        diameter_mm=result.concepts.diameter_mm,
        weights=weights_status(model),
        safety_netting=decision.safety_netting,
    )


# ---------------------------------------------------------------- findings in words

CONCEPT_LABELS = {"asymmetry": "Asymmetry", "border": "Border irregularity", "color": "Color variegation"}
# What a bias warning means, after "BIAS WARNING: " in reports and "Bias warning: " in answers.
BIAS_WARNING_TEXT = (
    "this skin tone is under-represented in the model's training data; accuracy for this group is not established."
)

# ---------------------------------------------------------------- weights status and disclaimers

UNTRAINED_BANNER = "UNTRAINED MODEL — output is not clinically meaningful"
UNTRAINED_WATERMARK = "UNTRAINED MODEL — NOT FOR CLINICAL USE"
WEIGHTS_HEADLINES = {UNTRAINED: "UNTRAINED MODEL", SYNTHETIC: "MODEL TRAINED ON SYNTHETIC IMAGES ONLY"}
# Why output from these weights must not be acted on (the do-not-act PLAN line).
NOT_MEANINGFUL_BECAUSE = {
    UNTRAINED: "the classifier has no trained weights",
    SYNTHETIC: "the classifier was trained on generated images only and is not clinically validated",
}
DISCLAIMER = (
    "Research use only. DermaSentinel is not a certified medical device. This output is "
    "generated by fixed rules from model scores and does not replace clinical examination, "
    "dermoscopy by a trained clinician, or histopathology."
)
# Beside every grounded answer (POST/GET /v1/analyses/{id}/questions).
ANSWER_DISCLAIMER = (
    "Research use only, not a certified medical device; answers support, never replace, clinical judgement."
)


def weights_headline(weights: str | None) -> str:
    return WEIGHTS_HEADLINES.get(weights or "", f"MODEL WEIGHTS {(weights or UNKNOWN_WEIGHTS).upper()}")


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
    why = NOT_MEANINGFUL_BECAUSE.get(
        weights or "", f"the classifier's weights are {weights or UNKNOWN_WEIGHTS}, not trained"
    )
    return f"Do not act on this output: {why}. Manage the lesion on clinical grounds alone."


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
