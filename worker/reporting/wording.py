"""How the scribe note, the PDF and the FHIR bundle put one analysis record into words.

The sentences and rules themselves (PLAN and referral advice, retake advice, banners, the bias
warning, concept labels and grades, the 6 mm rule, disclaimers) are shared.clinical's, which
the API, questions, triage and the CLI read too; this module only applies them to a record and
formats its values, so the three outputs never disagree.
"""

from __future__ import annotations

from shared import clinical
from shared.clinical import disposition
from shared.schemas.analyses import AnalysisInputsOut, AnalysisRecord, AnalysisResult, Concepts, Equity, ModelInfo


def weights(record: AnalysisRecord) -> str | None:
    return clinical.weights_status(record.model)


def is_untrained(record: AnalysisRecord) -> bool:
    """True when the record's output must carry the not-meaningful banner."""
    return clinical.shows_weights_warning(weights(record), has_result=record.result is not None)


def banner(record: AnalysisRecord) -> str | None:
    """The weights banner for this record, or None when its output may be read as meant."""
    return clinical.weights_banner(weights(record) or clinical.UNKNOWN_WEIGHTS) if is_untrained(record) else None


def watermark(record: AnalysisRecord) -> str | None:
    return clinical.weights_watermark(weights(record) or clinical.UNKNOWN_WEIGHTS) if is_untrained(record) else None


def threshold(record: AnalysisRecord) -> float | None:
    return clinical.threshold_of(record.model)


def risk_band_range(record: AnalysisRecord, band: str) -> str:
    return clinical.risk_band_ranges(threshold(record))[band]


def fmt_prob(value: float) -> str:
    return f"{value:.2f}"


def fmt_percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def concept_scores(concepts: Concepts) -> list[tuple[str, str, float]]:
    """(name, label, score) for asymmetry, border and colour, in the order of CONCEPT_LABELS."""
    scores = {"asymmetry": concepts.asymmetry, "border": concepts.border, "color": concepts.color}
    return [(name, label, scores[name]) for name, label in clinical.CONCEPT_LABELS.items()]


def diameter_text(concepts: Concepts) -> str:
    px, mm = concepts.diameter_px, concepts.diameter_mm
    if mm is None:
        return f"{px:.0f} px (mm not available: no pixel spacing supplied)"
    side = "above" if clinical.above_diameter_threshold(mm) else "at or below"
    return f"{px:.0f} px = {mm:.1f} mm ({side} the {clinical.DIAMETER_THRESHOLD_MM:.0f} mm ABCD threshold)"


def equity_text(equity: Equity) -> str:
    base = f"Skin tone by ITA: {equity.ita_degrees:.1f}° ({equity.skin_group})."
    if equity.bias_warning:
        return f"{base} BIAS WARNING: {clinical.BIAS_WARNING_TEXT}"
    return base + " No bias warning for this skin tone group."


def model_provenance(record: AnalysisRecord) -> list[str]:
    """One line per model: name, version, sha256 (or why there is none)."""
    model = record.model
    lines = []
    if model is not None and model.scalpel is not None:
        scalpel = model.scalpel
        lines.append(f"Segmenter: {scalpel.name} {scalpel.version} ({model.segmenter}), sha256 {scalpel.sha256}")
    else:
        segmenter = model.segmenter if model is not None else "classical"
        lines.append(f"Segmenter: {segmenter} colour-threshold segmenter (no checkpoint)")
    if model is not None and model.fusion is not None:
        fusion = model.fusion
        sha = fusion.sha256 or "none (no checkpoint loaded)"
        seed = f", seed {fusion.seed}" if fusion.seed is not None else ""
        lines.append(f"Classifier: {fusion.name} {fusion.version}, sha256 {sha}{seed}")
    lines.append(f"Weights: {model.weights if model is not None else clinical.UNKNOWN_WEIGHTS}")
    if model is not None and model.training_data:
        lines.append(f"Training data (model card): {model.training_data}")
    lines.append(f"Operating point: {operating_point_text(model)}")
    lines.append(f"Disposition thresholds: {thresholds_text(model)}")
    return lines


def thresholds_text(model: ModelInfo | None) -> str:
    """Both operating points a disposition is decided by: the high-risk one (referral above it)
    and the rule-out one, each the model's or the default. Worded without the dispositions'
    names: the untrained report prints it too."""
    high = disposition.urgent_threshold(clinical.threshold_of(model))
    return f"high-risk operating point {high:.2f} (referral above it); {rule_out_text(model)}"


def rule_out_text(model: ModelInfo | None) -> str:
    """The rule-out threshold and how it was chosen, e.g. "rule-out threshold 0.04 chosen for
    sensitivity 0.95 on validation"."""
    point = model.operating_point if model is not None else None
    chosen = point.rule_out_threshold if point is not None else None
    if point is None or chosen is None:
        default = disposition.DEFAULT_RULE_OUT_THRESHOLD
        return f"rule-out threshold {default:.2f} (default: the model has no calibrated rule-out threshold)"
    text = f"rule-out threshold {chosen:.2f} chosen"
    if point.rule_out_sensitivity is not None:
        text += f" for sensitivity {point.rule_out_sensitivity:.2f}"
    return text + f" on {point.chosen_on}"


def disposition_lines(record: AnalysisRecord, result: AnalysisResult) -> tuple[str, list[str]]:
    """(the disposition in words, the lines under it) as the note's DISPOSITION section and the
    PDF's box give them: why (each reason's sentence), and for ``routine`` the safety netting.
    From weights that are not trained: clinician review, ``weights_not_trained`` first."""
    decision = clinical.disposition_of(result, record.model)
    lines = [f"Reason: {sentence}." for sentence in clinical.reason_sentences(decision)]
    if result.disposition is None:
        lines.append(clinical.DISPOSITION_NOT_RECORDED)
    if decision.safety_netting:
        lines.append(f"Safety netting: {decision.safety_netting}")
    return clinical.disposition_text(decision), lines


def operating_point_text(model: ModelInfo | None) -> str:
    """How the threshold was chosen, e.g. "threshold 0.31 chosen for sensitivity 0.95 on validation"."""
    chosen = clinical.threshold_of(model)
    if chosen is None:
        return f"default threshold {clinical.MELANOMA_THRESHOLD:g} (no validated operating point)"
    point = model.operating_point if model is not None else None
    if point is None or point.chosen_on == "default":
        return f"threshold {chosen:.2f} set with the model"
    text = f"threshold {chosen:.2f} chosen"
    if point.target_sensitivity is not None:
        text += f" for sensitivity {point.target_sensitivity:.2f}"
    text += f" on {point.chosen_on}"
    if point.temperature != 1.0:
        text += f", temperature {point.temperature:.2f}"
    return text


def inputs_text(inputs: AnalysisInputsOut) -> str:
    age, spacing = inputs.age, inputs.pixel_spacing_mm
    parts = [
        f"age {age if age is not None else 'not given'}",
        f"sex {inputs.sex}",
        f"site {inputs.site}",
        f"pixel spacing {f'{spacing:g} mm' if spacing is not None else 'not given'}",
    ]
    return ", ".join(parts)
