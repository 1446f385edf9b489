"""Grounded answers: deterministic, cite the fields they use, never invent a finding."""

from __future__ import annotations

import pytest

from shared import clinical
from shared.clinical import disposition
from shared.questions import INTENT_NAMES, answer_question, normalise_question
from tests.factories import high_risk_trained, low_risk_untrained, record
from worker.reporting.scribe import build_scribe_note

RESULT = {
    "diagnosis": "melanoma",
    "probability": 0.6234,
    "uncertainty": 0.0412,
    "tta_probabilities": [0.6, 0.61, 0.62, 0.65, 0.64],
    "risk_band": "medium",
    "segmentation": {"coverage": 0.183},
    "concepts": {"asymmetry": 0.42, "border": 0.77, "color": 0.31, "diameter_px": 141.6, "diameter_mm": None},
    "equity": {"ita_degrees": 4.2, "skin_group": "brown", "bias_warning": True},
    "quality": {"blur_score": 312.4},
}
RECORD = record(
    inputs={"age": 58, "sex": "female", "site": "torso", "pixel_spacing_mm": None},
    result=RESULT,
    model={"weights": "untrained", "segmenter": "classical", "backend": "torch-cpu"},
)
TRAINED = record(result=RESULT, model={"weights": "trained", "segmenter": "unet"})


def test_same_question_same_answer():
    first = answer_question("Is this melanoma?", RECORD)
    assert first == answer_question("Is this melanoma?", RECORD.model_copy(deep=True))
    assert first.intents == ["diagnosis"]


def test_untrained_diagnosis_says_so_and_cites_weights():
    answer = answer_question("Is this melanoma?", RECORD)
    assert "UNTRAINED" in answer.text
    assert "model.weights" in answer.cited
    assert "result.diagnosis" in answer.cited
    assert "62.3%" in answer.text


@pytest.mark.parametrize("question", ["What is the risk?", "How likely is it cancer?", "how confident are you"])
def test_untrained_risk_and_probability_say_so(question):
    assert "UNTRAINED" in answer_question(question, RECORD).text


def test_trained_answer_has_no_untrained_caveat():
    answer = answer_question("What is the risk band?", TRAINED)
    assert "UNTRAINED" not in answer.text
    assert "medium" in answer.text
    assert answer.cited == ["result.risk_band", "result.probability"]


def test_asymmetry_cites_its_field_and_value():
    answer = answer_question("Is it asymmetric?", TRAINED)
    assert answer.cited == ["result.concepts.asymmetry"]
    assert "0.42" in answer.text


def test_probability_gives_uncertainty_and_views():
    answer = answer_question("What is the probability?", TRAINED)
    assert "62.3% ± 4.1%" in answer.text
    assert "5 test-time views" in answer.text
    assert {"result.probability", "result.uncertainty"} <= set(answer.cited)


def test_diameter_without_pixel_spacing_says_mm_unknown():
    answer = answer_question("How big is it in mm?", TRAINED)
    assert "142 pixels" in answer.text
    assert "millimetres is not known" in answer.text
    assert "inputs.pixel_spacing_mm" in answer.cited


def test_diameter_in_mm_when_measured():
    measured = record(result={**RESULT, "concepts": {**RESULT["concepts"], "diameter_mm": 7.08}})
    assert "7.1 mm" in answer_question("what size is the lesion", measured).text


def test_skin_tone_carries_bias_warning():
    answer = answer_question("Does skin tone matter here?", TRAINED)
    assert "4.2°" in answer.text and "brown" in answer.text
    assert "Bias warning" in answer.text
    assert "result.equity.bias_warning" in answer.cited


def test_abcd_covers_all_four_without_repeats():
    answer = answer_question("Summarise the ABCD border and asymmetry", TRAINED)
    assert answer.intents == ["abcd"]
    for field in ("asymmetry", "border", "color", "diameter_px"):
        assert f"result.concepts.{field}" in answer.cited
    assert answer.text.count("Asymmetry:") == 1


def test_several_intents_combine_and_untrained_caveat_is_said_once():
    answer = answer_question("What is the probability and the risk band, and is it melanoma?", RECORD)
    assert answer.intents == ["diagnosis", "probability", "risk"]
    assert answer.text.count("UNTRAINED") == 1


def test_treatment_question_quotes_only_the_plan():
    answer = answer_question("Should we treat it with cream or do a biopsy?", RECORD)
    assert answer.intents == ["plan"]
    assert "no treatment advice of its own" in answer.text
    assert RECORD.result is not None
    plan = clinical.plan_for(RECORD.result, RECORD.model)
    # Untrained: the PLAN says do not act and clinician review, and nothing read off the output.
    assert plan == [clinical.do_not_act("untrained"), clinical.NOT_ASSESSABLE]
    for line in plan:
        assert line in answer.text
    assert answer.cited == list(clinical.PLAN_FIELDS)
    assert "cream" not in answer.text.lower()


def test_the_plan_quoted_is_the_scribe_notes_plan_without_reading_the_note():
    note = build_scribe_note(TRAINED)
    plan = [line.removeprefix("- ") for line in note.split("\nPLAN\n")[1].split("\n\n")[0].splitlines()]
    answer = answer_question("What should we do next?", TRAINED)
    assert "The report's PLAN says: " + " ".join(plan) + " The treating clinician decides." in answer.text
    assert answer.text == answer_question("What should we do next?", TRAINED).text
    unrelated = TRAINED.model_copy(update={"result": TRAINED.result.model_copy(update={"scribe_note": "PLAN\n- x"})})
    assert answer_question("What should we do next?", unrelated).text == answer.text


ROUTINE = record(result={"probability": 0.03, "uncertainty": 0.01, "diagnosis": "benign", "risk_band": "low",
                          "concepts": {"diameter_mm": 4.1}})
NEXT_QUESTIONS = [
    "What should happen next?",
    "Should I refer?",
    "What's the next step?",
    "Does this need a dermatologist?",
    "Is it urgent?",
]


@pytest.mark.parametrize("question", NEXT_QUESTIONS)
def test_what_should_happen_next_is_answered_from_the_disposition(question):
    urgent = answer_question(question, high_risk_trained())
    assert "disposition" in urgent.intents
    assert "What should happen next: Urgent referral" in urgent.text
    why = f"Why: {disposition.REASON_TEXT['high_probability']}; {disposition.REASON_TEXT['diameter_over_6mm']}."
    assert why in urgent.text
    assert urgent.cited[:2] == ["result.disposition", "result.disposition_reasons"]

    routine = answer_question(question, ROUTINE)
    assert "What should happen next: Routine (safety-netting advice)" in routine.text
    assert f"Safety netting: {disposition.SAFETY_NETTING}" in routine.text
    assert "result.safety_netting" in routine.cited

    untrained = answer_question(question, low_risk_untrained())
    assert untrained.text.startswith("UNTRAINED MODEL")
    assert "What should happen next: Clinician review" in untrained.text
    assert clinical.NOT_ASSESSABLE in untrained.text
    assert {"model.weights", "result.disposition", "result.disposition_reasons"} <= set(untrained.cited)
    for phrase in ("routine", "urgent", "no concern", "low uncertainty"):
        assert phrase not in untrained.text.lower(), phrase


def test_a_review_answer_gives_every_reason():
    answer = answer_question("Should this be referred?", TRAINED)
    assert answer.intents == ["disposition"]
    assert TRAINED.result is not None and TRAINED.result.disposition == "clinician_review"
    for code in TRAINED.result.disposition_reasons:
        assert disposition.REASON_TEXT[code] in answer.text


def test_untrained_answers_give_no_uncertainty_level():
    for question in ("How certain is it?", "What is the probability?", "what should happen next"):
        text = answer_question(question, low_risk_untrained()).text.lower()
        assert "low uncertainty" not in text and "no concern" not in text
    assert "low uncertainty" in answer_question("How certain is it?", ROUTINE).text


def test_treatment_question_quotes_the_dispositions_plan():
    answer = answer_question("Which cream should I prescribe?", ROUTINE)
    assert answer.intents == ["plan"]
    assert "no treatment advice of its own" in answer.text
    assert clinical.DISPOSITION_PLAN["routine"] in answer.text and disposition.SAFETY_NETTING in answer.text
    urgent = answer_question("Should we do a biopsy?", high_risk_trained())
    assert clinical.DISPOSITION_PLAN["urgent_referral"] in urgent.text
    assert "result.disposition" in urgent.cited


def test_unmeasured_topic_is_said_plainly():
    answer = answer_question("Does it itch or bleed?", TRAINED)
    assert answer.outside_scope
    assert "outside what it measured" in answer.text
    assert answer.cited == []


def test_growth_question_answers_size_and_says_change_unmeasured():
    answer = answer_question("Has it grown in size?", TRAINED)
    assert answer.intents == ["diameter", "not_measured"]
    assert "142 pixels" in answer.text and "change over time" in answer.text
    assert not answer.outside_scope


def test_unrelated_question_is_outside_scope():
    answer = answer_question("What's the weather tomorrow?", TRAINED)
    assert answer.outside_scope and answer.intents == ["outside"]
    assert "outside what this analysis measured" in answer.text
    assert answer.cited == []


def test_rejected_analysis_has_no_findings_and_relays_advice():
    rejection = {"code": "blurry", "detail": "blur score 12.0 below 60.0", "advice": "Retake it in focus."}
    rejected = record(status="rejected", result=None, rejection=rejection)
    answer = answer_question("Is it melanoma?", rejected)
    assert answer.intents == ["status"]
    assert "no findings" in answer.text and "blur score 12.0" in answer.text
    assert "Retake it in focus." in answer.text
    assert "rejection.code" in answer.cited
    assert "melanoma" not in answer.text.lower()


def test_unfinished_analysis_has_nothing_to_answer_from():
    answer = answer_question("risk?", RECORD.model_copy(update={"status": "processing", "result": None}))
    assert "not finished" in answer.text and answer.cited == ["status"]


def test_every_intent_is_named_and_question_is_normalised():
    assert len(set(INTENT_NAMES)) == len(INTENT_NAMES)
    assert normalise_question("  is it\n\tbad?\x00 ") == "is it bad?\ufffd"
