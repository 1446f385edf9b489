from shared import clinical
from shared.clinical import disposition
from tests.factories import (
    SCALPEL_SHA,
    bias_warning_dark,
    high_risk_trained,
    low_risk_untrained,
    record,
    rejected_blurry,
)
from worker.reporting.scribe import build_scribe_note


def section(note: str, name: str) -> list[str]:
    """A section's lines, without their bullets."""
    lines = note.split(f"\n{name}\n")[1].split("\n\n")[0].splitlines()
    return [line.removeprefix("- ") for line in lines]


def plan_section(note: str) -> list[str]:
    """The note's PLAN lines, without their bullets."""
    return section(note, "PLAN")


ROUTINE = {"probability": 0.03, "uncertainty": 0.01, "diagnosis": "benign", "risk_band": "low",
                          "concepts": {"diameter_mm": 4.1}}


def test_same_analysis_gives_the_same_note():
    assert build_scribe_note(high_risk_trained()) == build_scribe_note(high_risk_trained())


def test_high_risk_trained_note_has_sections_values_and_urgent_referral():
    note = build_scribe_note(high_risk_trained())
    lines = note.splitlines()
    assert lines.index("FINDINGS") < lines.index("ASSESSMENT") < lines.index("DISPOSITION") < lines.index("PLAN")
    assert "UNTRAINED" not in note
    assert "lesion covers 18.4% of the image" in note
    assert "Asymmetry: 0.81 (marked)" in note
    assert "Border irregularity: 0.66 (moderate)" in note
    assert "Color variegation: 0.58 (moderate)" in note
    assert "412 px = 7.4 mm (above the 6 mm ABCD threshold)" in note
    assert "ITA: 38.6° (light)" in note
    assert "malignancy probability 0.91 ± 0.04" in note
    assert "Risk band: HIGH" in note
    assert section(note, "DISPOSITION") == [
        "Urgent referral.",
        "Reason: the melanoma probability reaches the model's high-risk operating point.",
        "Reason: the lesion is wider than 6 mm (the ABCD rule's D).",
    ]
    assert plan_section(note)[0].startswith("Refer urgently to dermatology")
    assert "specialist review is required" not in note
    assert SCALPEL_SHA in note
    assert "not a certified medical device" in note


def test_untrained_low_risk_note_says_untrained_first_and_forbids_action():
    note = build_scribe_note(low_risk_untrained())
    assert note.splitlines()[0] == "UNTRAINED MODEL — output is not clinically meaningful"
    assert "Risk band: LOW" in note
    assert "151 px (mm not available" in note
    assert plan_section(note) == [clinical.do_not_act("untrained"), clinical.NOT_ASSESSABLE]
    assert "Weights: untrained" in note
    assert "external reference none" in note


def test_untrained_note_says_the_findings_cannot_be_assessed_and_never_reassures():
    # Before issue 21 it said "Do not act on this output" and then "No AI-flagged concern" and
    # "Uncertainty: low" (the untrained model returns ~0.49 for every image).
    note = build_scribe_note(low_risk_untrained())
    assert "- The findings cannot be assessed: the model's weights are untrained" in note
    assert "Uncertainty: cannot be assessed from weights that are not trained." in note
    assert "Risk band: LOW (probability 0.50 or below); not clinically meaningful." in note
    for phrase in ("no concern", "no ai-flagged concern", "uncertainty: low", "low uncertainty", "routine", "urgent"):
        assert phrase not in note.lower(), phrase
    disposition_lines = section(note, "DISPOSITION")
    assert disposition_lines[0] == "Clinician review."
    assert f"Reason: {disposition.REASON_TEXT['weights_not_trained']}." in disposition_lines
    # The reasons read off untrained output mean as little as the output: not given.
    assert not any("rule-out" in line or "decision threshold" in line for line in disposition_lines)


def test_dark_skin_bias_warning_and_high_uncertainty_ask_for_specialist():
    note = build_scribe_note(bias_warning_dark())
    assert "ITA: -41.7° (dark). BIAS WARNING" in note
    assert "Uncertainty: high." in note
    assert "Reliability reduced: skin tone bias warning applies." in note
    assert "specialist review is required whatever the risk band" in note
    assert "interpret with caution" in note
    assert plan_section(note)[0] == clinical.DISPOSITION_PLAN["clinician_review"]
    reasons = section(note, "DISPOSITION")
    assert reasons[0] == "Clinician review."
    for code in ("brown_or_dark_skin", "high_uncertainty", "weakly_evidenced_site", "above_rule_out"):
        assert f"Reason: {disposition.REASON_TEXT[code]}." in reasons


def test_the_plan_follows_the_disposition():
    urgent = build_scribe_note(high_risk_trained())
    review = build_scribe_note(record(result={"probability": 0.2, "risk_band": "low", "diagnosis": "benign"}))
    routine = build_scribe_note(record(result=ROUTINE))
    assert plan_section(urgent) == [clinical.DISPOSITION_PLAN["urgent_referral"]]
    assert plan_section(review)[0] == clinical.DISPOSITION_PLAN["clinician_review"]
    assert plan_section(routine) == [clinical.DISPOSITION_PLAN["routine"], disposition.SAFETY_NETTING]
    assert section(review, "DISPOSITION")[0] == "Clinician review."
    for note in (urgent, review, routine):
        assert "No AI-flagged concern" not in note


def test_a_routine_note_gives_the_safety_netting_in_its_disposition():
    note = build_scribe_note(record(result=ROUTINE))
    assert section(note, "DISPOSITION") == [
        "Routine (safety-netting advice).",
        f"Reason: {disposition.REASON_TEXT['below_rule_out']}.",
        f"Safety netting: {disposition.SAFETY_NETTING}",
    ]
    assert "Uncertainty: low." in note  # trained weights: the level is meant


def test_a_result_stored_without_a_disposition_is_never_routine():
    legacy = record(result={**ROUTINE, "disposition": None, "disposition_reasons": [], "safety_netting": None})
    note = build_scribe_note(legacy)
    assert section(note, "DISPOSITION") == ["Clinician review.", clinical.DISPOSITION_NOT_RECORDED]
    assert "Routine" not in note
    old_high = record(result={"disposition": None, "disposition_reasons": []})
    assert section(build_scribe_note(old_high), "DISPOSITION")[0] == "Urgent referral."


def test_the_plan_is_the_clinical_plan_of_the_record():
    for case in (high_risk_trained(), low_risk_untrained(), bias_warning_dark(), record(result=ROUTINE),
                 record(result={"probability": 0.2, "risk_band": "low", "diagnosis": "benign", "uncertainty": 0.09})):
        assert case.result is not None
        assert plan_section(build_scribe_note(case)) == clinical.plan_for(case.result, case.model)


def test_a_wide_low_risk_lesion_is_sent_for_clinical_review():
    wide = record(result={"probability": 0.2, "risk_band": "low", "diagnosis": "benign"})  # 7.4 mm
    assert clinical.DIAMETER_ADVICE in plan_section(build_scribe_note(wide))
    narrow = record(result={"probability": 0.2, "risk_band": "low", "diagnosis": "benign",
                            "concepts": {"diameter_mm": clinical.DIAMETER_THRESHOLD_MM}})
    assert clinical.DIAMETER_ADVICE not in plan_section(build_scribe_note(narrow))
    assert "(at or below the 6 mm ABCD threshold)" in build_scribe_note(narrow)


def test_rejected_note_says_why_and_what_to_do():
    note = build_scribe_note(rejected_blurry())
    assert "Image rejected by the quality gate (blurry)" in note
    assert "blur score 12.3 is below the minimum 40.0" in note
    assert "Retake the photo in focus" in note
    assert "Risk band" not in note


def test_synthetic_weights_note_says_so_first_and_forbids_action():
    note = build_scribe_note(record(model={"weights": "synthetic"}))
    assert note.splitlines()[0] == "MODEL TRAINED ON SYNTHETIC IMAGES ONLY — output is not clinically meaningful"
    plan = note.split("\nPLAN\n")[1]
    assert plan.index("Do not act on this output") < plan.index("Clinician review because")
    assert "trained on generated images only" in plan
    # A probability of 0.91 from synthetic weights is not an urgent referral.
    assert "urgent" not in note.lower() and section(note, "DISPOSITION")[0] == "Clinician review."


def test_risk_band_range_follows_the_model_threshold():
    medium = {"probability": 0.42, "risk_band": "medium", "diagnosis": "melanoma"}
    tuned = record(model={"threshold": 0.3}, result=medium)
    assert "Risk band: MEDIUM (probability 0.30–0.80)." in build_scribe_note(tuned)
