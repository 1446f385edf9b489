from shared import clinical
from tests.factories import (
    SCALPEL_SHA,
    bias_warning_dark,
    high_risk_trained,
    low_risk_untrained,
    record,
    rejected_blurry,
)
from worker.reporting.scribe import build_scribe_note


def plan_section(note: str) -> list[str]:
    """The note's PLAN lines, without their bullets."""
    lines = note.split("\nPLAN\n")[1].split("\n\n")[0].splitlines()
    return [line.removeprefix("- ") for line in lines]


def test_same_analysis_gives_the_same_note():
    assert build_scribe_note(high_risk_trained()) == build_scribe_note(high_risk_trained())


def test_high_risk_trained_note_has_sections_values_and_urgent_referral():
    note = build_scribe_note(high_risk_trained())
    lines = note.splitlines()
    assert lines.index("FINDINGS") < lines.index("ASSESSMENT") < lines.index("PLAN")
    assert "UNTRAINED" not in note
    assert "lesion covers 18.4% of the image" in note
    assert "Asymmetry: 0.81 (marked)" in note
    assert "Border irregularity: 0.66 (moderate)" in note
    assert "Color variegation: 0.58 (moderate)" in note
    assert "412 px = 7.4 mm (above the 6 mm ABCD threshold)" in note
    assert "ITA: 38.6° (light)" in note
    assert "malignancy probability 0.91 ± 0.04" in note
    assert "Risk band: HIGH" in note
    assert "Refer urgently to dermatology" in note
    assert "specialist review is required" not in note
    assert SCALPEL_SHA in note
    assert "not a certified medical device" in note


def test_untrained_low_risk_note_says_untrained_first_and_forbids_action():
    note = build_scribe_note(low_risk_untrained())
    assert note.splitlines()[0] == "UNTRAINED MODEL — output is not clinically meaningful"
    assert "Risk band: LOW" in note
    assert "151 px (mm not available" in note
    plan = note.split("\nPLAN\n")[1]
    assert plan.index("Do not act on this output") < plan.index("No AI-flagged concern")
    assert "Weights: untrained" in note
    assert "external reference none" in note


def test_dark_skin_bias_warning_and_high_uncertainty_ask_for_specialist():
    note = build_scribe_note(bias_warning_dark())
    assert "ITA: -41.7° (dark). BIAS WARNING" in note
    assert "Uncertainty: high." in note
    assert "Reliability reduced: skin tone bias warning applies." in note
    assert "specialist review is required whatever the risk band" in note
    assert "interpret with caution" in note
    assert "Refer for routine dermatology review" in note


def test_notes_differ_when_the_risk_band_changes():
    low = record(result={"probability": 0.2, "risk_band": "low", "diagnosis": "benign"})
    assert "No AI-flagged concern" in build_scribe_note(low)
    assert "No AI-flagged concern" not in build_scribe_note(high_risk_trained())


def test_the_plan_is_the_clinical_plan_of_the_record():
    for case in (high_risk_trained(), low_risk_untrained(), bias_warning_dark(),
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
    assert plan.index("Do not act on this output") < plan.index("Refer urgently")
    assert "trained on generated images only" in plan


def test_risk_band_range_follows_the_model_threshold():
    medium = {"probability": 0.42, "risk_band": "medium", "diagnosis": "melanoma"}
    tuned = record(model={"threshold": 0.3}, result=medium)
    assert "Risk band: MEDIUM (probability 0.30–0.80)." in build_scribe_note(tuned)
