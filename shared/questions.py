"""Grounded answers to a clinician's free-text question about one analysis.

No generative model: a question is matched against a fixed table of intents (regular
expressions, below) and each matched intent answers from the analysis' own fields, naming
every field it used in ``cited``. The same question about the same analysis always gets the
same answer. Whatever the analysis did not measure (symptoms, history, change over time,
other lesions) is said to be outside what it measured; no finding is ever invented, and the
only courses of action ever quoted are the analysis' disposition (``clinical.disposition_of``:
clinician review, never routine or urgent, from weights that are not trained) and its PLAN,
taken from shared.clinical (the rule its scribe note's PLAN is written by), never parsed out of
the rendered note.

Intent table (first column is the intent name stored with each answer):

============  ==================================================================
status        any question about an analysis that has no findings (queued,
              processing, rejected, failed, canceled): says why there are none
diagnosis     melanoma, cancer, malignant, benign, diagnosis, "what is it"
probability   probability, likelihood, chance, confidence, certainty, sure
risk          risk, risk band, worried, dangerous, serious
abcd          "ABCD": all four concept scores at once
asymmetry     asymmetry, symmetric, shape
border        border, edge, margin, outline, irregular
color         colour/color, pigment, variegation
diameter      diameter, size, big, large, small, width, mm
coverage      coverage, segmentation, mask, area
skin_tone     skin tone/type/colour, ITA, Fitzpatrick, bias, equity
quality       quality, blur, sharp, focus
model         model, weights, trained, checkpoint, version
disposition   what should happen next, next step, refer, a dermatologist or
              specialist, urgent, follow-up, discharge, safety netting: the
              disposition, its reasons and (routine) the safety netting
plan          treatment, what to do, biopsy, excision, manage, recommend: quotes
              the analysis' PLAN (shared.clinical, decided by the disposition)
not_measured  symptoms (itch, bleeding, pain), evolution or growth, history,
              spread, prognosis, other lesions: said plainly to be unmeasured
outside       nothing matched: the question is outside what was measured
============  ==================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from shared import clinical
from shared.schemas.analyses import AnalysisRecord, AnalysisResult

MAX_QUESTION_CHARS = 500

MEASURED = (
    "This analysis measured, from one photo: lesion segmentation and coverage, the ABCD concept "
    "scores (asymmetry, border, colour, diameter), the skin tone (ITA angle, skin group, bias "
    "warning), image sharpness, and a melanoma probability with its uncertainty and risk band."
)
NOT_MEASURED = (
    "The analysis saw one photo only: it has no information about symptoms (itching, bleeding, "
    "pain), change over time or growth, the patient's history, spread, prognosis, or other lesions. "
    "Those are outside what it measured."
)
NO_ADVICE = "DermaSentinel gives no treatment advice of its own."


@dataclass(frozen=True)
class GroundedAnswer:
    text: str
    cited: list[str]
    intents: list[str]
    outside_scope: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "cited": self.cited,
            "intents": self.intents,
            "grounded": True,
            "outside_scope": self.outside_scope,
        }


@dataclass
class _Parts:
    sentences: list[str] = field(default_factory=list)
    cited: list[str] = field(default_factory=list)

    def say(self, sentence: str, *fields: str) -> None:
        self.sentences.append(sentence)
        for name in fields:
            if name not in self.cited:
                self.cited.append(name)


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _score(value: float) -> str:
    return f"{value:.2f} on a 0-1 scale (0 = none, 1 = most marked)"


def _weights_caveat(record: AnalysisRecord, parts: _Parts) -> None:
    """Output from weights that are not trained is said to be meaningless, every time."""
    weights = clinical.weights_status(record.model)
    banner = clinical.weights_banner(weights)
    if banner is not None:
        parts.say(f"{banner} (model.weights = {weights or clinical.UNKNOWN_WEIGHTS}).", "model.weights")


# ---------------------------------------------------------------- intent handlers

Answer = Callable[[AnalysisRecord, AnalysisResult, _Parts], None]
# Answers have always spelt the colour concept the British way; the reports use CONCEPT_LABELS as is.
ANSWER_CONCEPT_LABELS = {**clinical.CONCEPT_LABELS, "color": "Colour variegation"}


def _diagnosis(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    _weights_caveat(record, parts)
    threshold = clinical.operating_threshold(clinical.threshold_of(record.model))
    parts.say(
        f"The model's output is '{result.diagnosis}' (melanoma probability {_pct(result.probability)}, "
        f"operating threshold {_pct(threshold)}). This is decision support, not a diagnosis.",
        "result.diagnosis",
        "result.probability",
    )


def _probability(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    _weights_caveat(record, parts)
    parts.say(
        f"Melanoma probability {_pct(result.probability)} ± {_pct(result.uncertainty)} "
        f"(mean ± standard deviation over {len(result.tta_probabilities)} test-time views of the photo); "
        f"{_uncertainty_words(record, result)}.",
        "result.probability",
        "result.uncertainty",
        "result.tta_probabilities",
    )


def _uncertainty_words(record: AnalysisRecord, result: AnalysisResult) -> str:
    """The uncertainty level in words; from weights that are not trained no level (not even
    "low") is given: it would read as reassurance about meaningless output."""
    if not clinical.is_clinically_meaningful(clinical.weights_status(record.model)):
        return "its uncertainty cannot be assessed from weights that are not trained"
    return f"{clinical.uncertainty_level(result.uncertainty)} uncertainty"


def _risk(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    _weights_caveat(record, parts)
    band = result.risk_band
    ranges = clinical.risk_band_ranges(clinical.threshold_of(record.model))
    parts.say(
        f"Risk band: {band} (probability {ranges[band]}; this one {result.probability:.2f}).",
        "result.risk_band",
        "result.probability",
    )


def _concept(name: str) -> Answer:
    label = ANSWER_CONCEPT_LABELS[name]

    def answer(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
        score: float = getattr(result.concepts, name)
        parts.say(f"{label}: {_score(score)}.", f"result.concepts.{name}")

    return answer


def _abcd(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    for name in ANSWER_CONCEPT_LABELS:
        _concept(name)(record, result, parts)
    _diameter(record, result, parts)


def _diameter(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    px, mm = result.concepts.diameter_px, result.concepts.diameter_mm
    if mm is None:
        parts.say(
            f"Diameter: {px:.0f} pixels across. No pixel spacing was supplied with the photo, so the "
            "size in millimetres is not known.",
            "result.concepts.diameter_px",
            "inputs.pixel_spacing_mm",
        )
    else:
        parts.say(
            f"Diameter: {px:.0f} pixels = {mm:.1f} mm (with the pixel spacing supplied).",
            "result.concepts.diameter_px",
            "result.concepts.diameter_mm",
        )


def _coverage(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    segmenter = record.model.segmenter if record.model is not None else None
    how = f" by the {segmenter} segmenter" if segmenter else ""
    fields = ["result.segmentation.coverage"] + (["model.segmenter"] if segmenter else [])
    parts.say(f"The segmented lesion{how} covers {_pct(result.segmentation.coverage)} of the photo.", *fields)


def _skin_tone(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    equity = result.equity
    parts.say(
        f"Skin tone by individual typology angle (ITA): {equity.ita_degrees:.1f}°, skin group "
        f"'{equity.skin_group}'.",
        "result.equity.ita_degrees",
        "result.equity.skin_group",
    )
    if equity.bias_warning:
        parts.say(f"Bias warning: {clinical.BIAS_WARNING_TEXT}", "result.equity.bias_warning")
    else:
        parts.say("No bias warning for this skin group.", "result.equity.bias_warning")


def _quality(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    parts.say(
        f"Image sharpness (blur score, higher is sharper): {result.quality.blur_score:.1f}; the photo passed "
        "the quality gate.",
        "result.quality.blur_score",
        "status",
    )


def _model(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    model = record.model
    pieces = [f"weights: {model.weights if model is not None else clinical.UNKNOWN_WEIGHTS}"]
    fields = ["model.weights"]
    if model is not None:
        for key, value in (("segmenter", model.segmenter), ("backend", model.backend), ("version", model.version)):
            if value:
                pieces.append(f"{key}: {value}")
                fields.append(f"model.{key}")
    parts.say("Model: " + "; ".join(pieces) + ".", *fields)
    _weights_caveat(record, parts)


def _disposition(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    _weights_caveat(record, parts)
    decision = clinical.disposition_of(result, record.model)
    parts.say(
        f"What should happen next: {clinical.disposition_text(decision)} — the disposition "
        f"'{decision.disposition}'.",
        "result.disposition",
    )
    if not clinical.is_clinically_meaningful(clinical.weights_status(record.model)):
        parts.say(clinical.NOT_ASSESSABLE, "model.weights")
    sentences = clinical.reason_sentences(decision)
    if sentences:
        parts.say("Why: " + "; ".join(sentences) + ".", "result.disposition_reasons")
    if result.disposition is None:
        parts.say(clinical.DISPOSITION_NOT_RECORDED, "result.disposition")
    if decision.safety_netting:
        parts.say(f"Safety netting: {decision.safety_netting}", "result.safety_netting")


def _plan(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    plan = clinical.plan_for(result, record.model)
    parts.say(
        f"{NO_ADVICE} The report's PLAN says: " + " ".join(plan) + " The treating clinician decides.",
        *clinical.PLAN_FIELDS,
    )


def _not_measured(record: AnalysisRecord, result: AnalysisResult, parts: _Parts) -> None:
    parts.say(NOT_MEASURED)


@dataclass(frozen=True)
class Intent:
    name: str
    pattern: re.Pattern
    answer: Answer


def _rx(*alternatives: str) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")", re.IGNORECASE)


# Order is the order of the sentences in a combined answer.
INTENTS: tuple[Intent, ...] = (
    Intent(
        "diagnosis",
        _rx("melanoma", "cancer", "malignan", "benign", "diagnos", r"what is (?:it|this)", "mole"),
        _diagnosis,
    ),
    Intent(
        "probability",
        _rx("probab", "likel", "chance", "confiden", "certain", "uncertain", "sure", "percent", "odds"),
        _probability,
    ),
    Intent("risk", _rx("risk", "band", "worr", "dangerous", "serious", "concern"), _risk),
    Intent("abcd", _rx(r"abcd?\b", "concepts?", "features?", "findings?"), _abcd),
    Intent("asymmetry", _rx("asymmetr", "symmetr", "shape"), _concept("asymmetry")),
    Intent(
        "border",
        _rx("border", "edges?", "margins?", "outline", "irregular"),
        _concept("border"),
    ),
    Intent(
        "color",
        _rx("(?<!skin )colou?r", "pigment", "variegat", "shades?"),
        _concept("color"),
    ),
    Intent(
        "diameter",
        _rx("diameter", "size", "big", "large", "small", "wide", "width", r"mm\b", "millimet", "how long is"),
        _diameter,
    ),
    Intent("coverage", _rx("coverage", "segment", "mask", "area", "overlay"), _coverage),
    Intent(
        "skin_tone",
        _rx(r"skin (?:tone|type|colou?r|group)", r"ita\b", "fitzpatrick", "bias", "equity", "dark skin", "ethnic"),
        _skin_tone,
    ),
    Intent("quality", _rx("quality", "blur", "sharp", "focus", "clear"), _quality),
    Intent("model", _rx("model", "weights", "untrained", "trained", "checkpoint", "version"), _model),
    Intent(
        "disposition",
        _rx(r"what (?:should|will|must|needs? to) (?:happen|be done)", "next", "refer", "dermatolog", "specialist",
            "urgent", "disposition", "follow.?up", "discharge", "safety.?net", r"see (?:a|the) (?:doctor|clinician|gp)",
            "triage", "routine", "review"),
        _disposition,
    ),
    Intent(
        "plan",
        _rx("treat", "cure", "remov", "excis", "surgery", "biops", "medic", "cream", "drug", "therap",
            r"what (?:should|do|can) (?:i|we)", "manage", "plan", "recommend"),
        _plan,
    ),
    Intent(
        "not_measured",
        _rx("itch", "bleed", "pain", "hurt", "sore", "grow", "chang", "evolv", "history", "family", "sun",
            "spread", "metasta", "prognos", "surviv", "stage", "other (?:lesion|mole|spot)s?", "contagious",
            "how long ha"),
        _not_measured,
    ),
)
SINGLE_CONCEPTS = frozenset({"asymmetry", "border", "color", "diameter"})
INTENT_NAMES = tuple(i.name for i in INTENTS) + ("status", "outside")


def normalise_question(question: str) -> str:
    """One line, single spaces, control characters shown as U+FFFD: what is stored and answered."""
    text = " ".join(question.split())
    return "".join(ch if ch.isprintable() or ch == " " else "\ufffd" for ch in text)


def answer_question(question: str, record: AnalysisRecord) -> GroundedAnswer:
    """Answer ``question`` from ``record`` (shared.lifecycle.analysis_record of one analysis)."""
    question = normalise_question(question)
    result = record.result
    if record.status != "succeeded" or result is None:
        return _status_answer(record)

    matched = [intent for intent in INTENTS if intent.pattern.search(question)]
    if any(i.name == "abcd" for i in matched):
        # The combined ABCD answer already covers the single concepts.
        matched = [i for i in matched if i.name not in SINGLE_CONCEPTS]
    parts = _Parts()
    if not matched:
        parts.say("That question is outside what this analysis measured.")
        parts.say(MEASURED)
        parts.say("Ask about one of these, or consult the full report.")
        return GroundedAnswer(" ".join(parts.sentences), parts.cited, ["outside"], True)
    for intent in matched:
        intent.answer(record, result, parts)
    # The weights caveat is said once however many intents asked for it.
    sentences = list(dict.fromkeys(parts.sentences))
    outside = all(i.name == "not_measured" for i in matched)
    return GroundedAnswer(" ".join(sentences), parts.cited, [i.name for i in matched], outside)


def _status_answer(record: AnalysisRecord) -> GroundedAnswer:
    status = record.status
    parts = _Parts()
    if status in ("queued", "processing"):
        parts.say(
            f"The analysis has not finished yet (status: {status}); there are no findings to answer from.", "status"
        )
    elif status == "rejected":
        rejection = record.rejection
        code = rejection.code if rejection is not None else "unknown"
        detail = rejection.detail if rejection is not None else ""
        parts.say(
            f"There are no findings: the photo was rejected by a quality gate ({code}): "
            f"{detail or 'no detail given'}.",
            "status",
            "rejection.code",
            "rejection.detail",
        )
        if rejection is not None and rejection.advice:
            parts.say(rejection.advice, "rejection.advice")
    elif status == "failed":
        code = record.error.code if record.error is not None else "unknown"
        parts.say(f"There are no findings: the analysis failed with a system error ({code}).", "status", "error.code")
    elif status == "canceled":
        parts.say("There are no findings: the analysis was canceled before it finished.", "status", "cancel_reason")
    else:
        parts.say(f"There are no findings for an analysis with status {status}.", "status")
    return GroundedAnswer(" ".join(parts.sentences), parts.cited, ["status"], True)
