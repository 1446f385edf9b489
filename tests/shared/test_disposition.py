"""The disposition rules (issue 21): what should happen next, never a confident answer from
weights that are not trained."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.clinical import disposition as d

CLEAN = d.DispositionInputs(
    probability=0.03, uncertainty=0.01, ita_degrees=45.0, blur_score=300.0, coverage=0.2,
    age=45, sex="female", site="torso", weights="trained", threshold=None, rule_out_threshold=0.08,
    blur_threshold=100.0, min_coverage=0.01,
)


def test_a_clean_low_probability_from_trained_weights_is_routine_with_safety_netting() -> None:
    decision = d.decide(CLEAN)
    assert decision.disposition == "routine"
    assert decision.reasons == ["below_rule_out"]
    assert decision.safety_netting and "3 months" in decision.safety_netting


def test_a_high_probability_from_trained_weights_is_an_urgent_referral() -> None:
    decision = d.decide(replace(CLEAN, probability=0.93))
    assert decision.disposition == "urgent_referral" and decision.reasons == ["high_probability"]
    assert decision.safety_netting is None


@pytest.mark.parametrize("weights", ["untrained", "synthetic", None, "something-new"])
@pytest.mark.parametrize("probability", [0.01, 0.5, 0.99])
def test_weights_that_are_not_trained_always_get_a_clinician(weights: str | None, probability: float) -> None:
    decision = d.decide(replace(CLEAN, weights=weights, probability=probability))
    assert decision.disposition == "clinician_review"
    assert decision.reasons[0] == "weights_not_trained"
    assert decision.safety_netting is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ita_degrees": 5.0}, "brown_or_dark_skin"),
        ({"ita_degrees": -45.0}, "brown_or_dark_skin"),
        ({"uncertainty": 0.2}, "high_uncertainty"),
        ({"blur_score": 110.0}, "borderline_quality"),
        ({"coverage": 0.015}, "borderline_quality"),
        ({"site": "palms/soles"}, "weakly_evidenced_site"),
        ({"site": "oral/genital"}, "weakly_evidenced_site"),
        ({"age": 12}, "age_under_18"),
        ({"age": None}, "missing_metadata"),
        ({"sex": "unknown"}, "missing_metadata"),
        ({"site": "unknown"}, "missing_metadata"),
        ({"diameter_mm": 7.4}, "diameter_over_6mm"),
    ],
)
def test_any_review_reason_keeps_a_low_probability_from_being_routine(change: dict, reason: str) -> None:
    decision = d.decide(replace(CLEAN, **change))
    assert decision.disposition == "clinician_review"
    assert reason in decision.reasons


def test_between_the_rule_out_and_the_urgent_threshold_is_review_that_says_so() -> None:
    decision = d.decide(replace(CLEAN, probability=0.3))
    assert decision.disposition == "clinician_review" and decision.reasons == ["above_rule_out"]
    near = d.decide(replace(CLEAN, probability=0.55))
    assert near.reasons == ["near_threshold", "above_rule_out"]


def test_the_rule_out_threshold_is_the_models_and_defaults_conservatively() -> None:
    assert d.decide(replace(CLEAN, probability=0.09, rule_out_threshold=0.12)).disposition == "routine"
    assert d.decide(replace(CLEAN, probability=0.09, rule_out_threshold=None)).disposition == "routine"
    assert d.decide(replace(CLEAN, probability=0.11, rule_out_threshold=None)).disposition == "clinician_review"


def test_a_validated_threshold_above_the_band_moves_the_urgent_point() -> None:
    assert d.urgent_threshold(0.85) == 0.85
    assert d.decide(replace(CLEAN, probability=0.84, threshold=0.85)).disposition == "clinician_review"
    assert d.decide(replace(CLEAN, probability=0.86, threshold=0.85)).disposition == "urgent_referral"


def test_an_urgent_referral_still_lists_the_review_reasons() -> None:
    decision = d.decide(replace(CLEAN, probability=0.95, ita_degrees=-40.0, age=None))
    assert decision.disposition == "urgent_referral"
    assert decision.reasons == ["high_probability", "brown_or_dark_skin", "missing_metadata"]


def test_every_reason_code_has_its_sentence() -> None:
    codes = {d.REASON_HIGH_PROBABILITY, d.REASON_BELOW_RULE_OUT, *d.REVIEW_REASON_CODES}
    assert codes == set(d.REASON_TEXT)
