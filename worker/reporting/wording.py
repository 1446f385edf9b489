"""Fixed clinical wording shared by the scribe note, the PDF and the FHIR bundle.

Every sentence a clinician reads comes from here, so the three outputs never disagree. The
rules behind them (thresholds, bands, the review and bias rules, retake advice, the weights
banner) live in shared.clinical, which the API, triage and the CLI read too.
"""

from __future__ import annotations

from shared import clinical
from shared.clinical import DISCLAIMER, uncertainty_level

__all__ = ["DISCLAIMER", "FAILED_ACTION", "uncertainty_level"]

FAILED_ACTION = clinical.FAILED_ADVICE

# The ABCD rule's classic "D" cut-off.
DIAMETER_THRESHOLD_MM = 6.0

CONCEPT_LABELS = {"asymmetry": "Asymmetry", "border": "Border irregularity", "color": "Color variegation"}


def weights(analysis: dict) -> str | None:
    return clinical.weights_status(analysis.get("model"))


def is_untrained(analysis: dict) -> bool:
    """True when the analysis' output must carry the not-meaningful banner: its weights are
    anything but ``trained`` (untrained, synthetic, ...), or unknown while it has a result."""
    status = weights(analysis)
    if status is None:
        return bool(analysis.get("result"))
    return not clinical.is_clinically_meaningful(status)


def banner(analysis: dict) -> str | None:
    """The weights banner for this analysis, or None when its output may be read as meant."""
    return clinical.weights_banner(weights(analysis) or clinical.UNKNOWN_WEIGHTS) if is_untrained(analysis) else None


def watermark(analysis: dict) -> str | None:
    return clinical.weights_watermark(weights(analysis) or clinical.UNKNOWN_WEIGHTS) if is_untrained(analysis) else None


def threshold(analysis: dict) -> float | None:
    return clinical.threshold_of(analysis.get("model"))


def risk_band_range(analysis: dict, band: str) -> str:
    return clinical.risk_band_ranges(threshold(analysis))[band]


def rejection_reason(code: str | None) -> str:
    return clinical.rejection_reason(code)


def rejection_action(code: str | None) -> str:
    return clinical.retake_advice(code)


def concept_grade(score: float) -> str:
    """Plain-language grade of a 0..1 ABCD concept score, in quarters."""
    if score < 0.25:
        return "minimal"
    if score < 0.5:
        return "mild"
    if score < 0.75:
        return "moderate"
    return "marked"


def fmt_prob(value: float) -> str:
    return f"{value:.2f}"


def fmt_percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def diameter_text(concepts: dict) -> str:
    px = concepts.get("diameter_px")
    mm = concepts.get("diameter_mm")
    if px is None:
        return "not measured"
    if mm is None:
        return f"{px:.0f} px (mm not available: no pixel spacing supplied)"
    side = "above" if mm > DIAMETER_THRESHOLD_MM else "at or below"
    return f"{px:.0f} px = {mm:.1f} mm ({side} the {DIAMETER_THRESHOLD_MM:.0f} mm ABCD threshold)"


def equity_text(equity: dict) -> str:
    base = f"Skin tone by ITA: {equity['ita_degrees']:.1f}° ({equity['skin_group']})."
    if equity.get("bias_warning"):
        return base + (
            " BIAS WARNING: this skin tone is under-represented in the model's training data; "
            "accuracy for this group is not established."
        )
    return base + " No bias warning for this skin tone group."


def recommended_actions(analysis: dict) -> list[str]:
    """The PLAN lines, in a fixed order: untrained, risk band, uncertainty, equity, diameter."""
    result = analysis["result"]
    actions: list[str] = []
    do_not_act = clinical.do_not_act(weights(analysis) or clinical.UNKNOWN_WEIGHTS) if is_untrained(analysis) else None
    if do_not_act:
        actions.append(do_not_act)
    band = result["risk_band"]
    if band == "high":
        actions.append(
            "Refer urgently to dermatology (suspected-melanoma pathway) for dermoscopic "
            "examination and consideration of excision biopsy."
        )
    elif band == "medium":
        actions.append(
            "Refer for routine dermatology review; if not excised, re-image in 3 months and "
            "compare for change."
        )
    else:
        actions.append(
            "No AI-flagged concern. Advise skin self-examination and re-image if the lesion "
            "changes in size, shape or color, bleeds or itches."
        )
    level = uncertainty_level(result["uncertainty"])
    if level == "high":
        actions.append(
            "Model views disagree (high uncertainty): specialist review is required whatever "
            "the risk band; this result cannot rule melanoma out."
        )
    elif level == "moderate" and band == "low":
        actions.append("Moderate uncertainty: consider clinician dermoscopy before discharge.")
    if (result.get("equity") or {}).get("bias_warning"):
        actions.append(
            "Skin tone outside the model's well-represented range: interpret with caution and "
            "prefer specialist review."
        )
    mm = (result.get("concepts") or {}).get("diameter_mm")
    if mm is not None and mm > DIAMETER_THRESHOLD_MM and band == "low":
        actions.append(
            f"Diameter above {DIAMETER_THRESHOLD_MM:.0f} mm despite a low score: clinical review advised."
        )
    return actions


def model_provenance(analysis: dict) -> list[str]:
    """One line per model: name, version, sha256 (or why there is none)."""
    model = analysis.get("model") or {}
    lines = []
    scalpel = model.get("scalpel")
    if scalpel:
        lines.append(
            f"Segmenter: {scalpel['name']} {scalpel['version']} ({model.get('segmenter', 'unet')}), "
            f"sha256 {scalpel['sha256']}"
        )
    else:
        lines.append(
            f"Segmenter: {model.get('segmenter', 'classical')} colour-threshold segmenter "
            "(no checkpoint)"
        )
    fusion = model.get("fusion")
    if fusion:
        sha = fusion.get("sha256") or "none (no checkpoint loaded)"
        seed = f", seed {fusion['seed']}" if fusion.get("seed") is not None else ""
        lines.append(f"Classifier: {fusion['name']} {fusion['version']}, sha256 {sha}{seed}")
    lines.append(f"Weights: {model.get('weights', 'unknown')}")
    if model.get("training_data"):
        lines.append(f"Training data (model card): {model['training_data']}")
    lines.append(f"Operating point: {operating_point_text(analysis)}")
    return lines


def operating_point_text(analysis: dict) -> str:
    """How the threshold was chosen, e.g. "threshold 0.31 chosen for sensitivity 0.95 on validation"."""
    point = (analysis.get("model") or {}).get("operating_point") or {}
    chosen = threshold(analysis)
    if chosen is None:
        return f"default threshold {clinical.MELANOMA_THRESHOLD:g} (no validated operating point)"
    if point.get("chosen_on", "default") == "default":
        return f"threshold {chosen:.2f} set with the model"
    text = f"threshold {chosen:.2f} chosen"
    if point.get("target_sensitivity") is not None:
        text += f" for sensitivity {point['target_sensitivity']:.2f}"
    text += f" on {point.get('chosen_on', 'validation')}"
    if point.get("temperature") not in (None, 1.0):
        text += f", temperature {point['temperature']:.2f}"
    return text


def inputs_text(inputs: dict) -> str:
    age = inputs.get("age")
    spacing = inputs.get("pixel_spacing_mm")
    parts = [
        f"age {age if age is not None else 'not given'}",
        f"sex {inputs.get('sex', 'unknown')}",
        f"site {inputs.get('site', 'unknown')}",
        f"pixel spacing {f'{spacing:g} mm' if spacing is not None else 'not given'}",
    ]
    return ", ".join(parts)
