"""Issue 24: the monitoring statistics on known inputs (PSI, KS, Wilson intervals, the reference's
distribution function), the reading of confirmed outcomes, and what safety mode does to a result.
No service is started (the database tests are tests/shared/test_drift.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from shared import drift, monitoring
from shared.clinical import disposition
from shared.config import Settings
from shared.monitoring import (
    age_band,
    ks_statistic,
    mix_psi,
    outcome_of,
    probability_psi,
    probability_shares,
    psi,
    reference_from,
    wilson,
)
from shared.schemas.monitoring import Reference
from tests import factories

UNIFORM = Reference(source="evaluation", count=100_000, probability_quantiles=list(np.linspace(0.0, 1.0, 101)))


# ---------------------------------------------------------------- Wilson


@pytest.mark.parametrize(("count", "total"), [(8, 10), (0, 10), (10, 10), (50, 100), (3, 7)])
def test_wilson_interval_is_scipys(count, total):
    proportion = wilson(count, total)
    assert proportion.value == pytest.approx(count / total)
    assert proportion.count == count and proportion.total == total
    expected = stats.binomtest(count, total).proportion_ci(confidence_level=0.95, method="wilson")
    assert proportion.ci95 == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_wilson_interval_of_the_textbook_example():
    assert wilson(8, 10).ci95 == pytest.approx((0.4902, 0.9433), abs=1e-4)


def test_wilson_of_nothing_has_no_value_and_no_interval():
    assert wilson(0, 0).value is None and wilson(0, 0).ci95 is None


# ---------------------------------------------------------------- PSI


def test_psi_matches_a_hand_computation():
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5)
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(psi([0.25, 0.75], [0.5, 0.5]))  # symmetric


def test_psi_of_an_empty_bin_is_finite():
    value = psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2])
    assert math.isfinite(value) and value > 0.25


def test_probability_psi_uses_the_references_deciles():
    expected, actual = probability_shares(UNIFORM, [0.05, 0.15, 0.95, 0.96])
    assert expected == pytest.approx([0.1] * 10)
    assert actual == pytest.approx([0.25, 0.25, 0, 0, 0, 0, 0, 0, 0, 0.5])
    assert probability_psi(UNIFORM, list(np.linspace(0.005, 0.995, 100))) == pytest.approx(0.0, abs=1e-9)


def test_mix_psi_over_categories():
    reference = {"light": 50, "tan": 50}
    assert mix_psi(reference, {"light": 25, "tan": 75}, ["light", "tan", "dark"]) == pytest.approx(
        psi([0.5, 0.5, 0.0], [0.25, 0.75, 0.0]))
    assert mix_psi(reference, {}, ["light", "tan"]) is None
    assert mix_psi({}, {"light": 1}, ["light"]) is None


# ---------------------------------------------------------------- KS


def test_ks_against_a_uniform_reference_is_scipys_one_sample_statistic():
    rng = np.random.default_rng(7)
    for sample in (rng.uniform(size=40), rng.beta(2, 5, size=200), np.array([0.5]), np.array([0.2, 0.2, 0.9])):
        assert ks_statistic(UNIFORM, list(sample)) == pytest.approx(stats.kstest(sample, "uniform").statistic,
                                                                      abs=1e-9)


def test_ks_against_a_sampled_reference_approaches_the_two_sample_statistic():
    rng = np.random.default_rng(11)
    reference_sample = rng.beta(2, 5, size=20_000)
    reference = reference_from(reference_sample, source="evaluation")
    window = rng.beta(4, 4, size=300)
    exact = stats.ks_2samp(window, reference_sample).statistic
    # The reference keeps its percentiles only: within a percent of the full sample's answer.
    assert ks_statistic(reference, list(window)) == pytest.approx(exact, abs=0.01)


def test_a_point_mass_in_the_reference_is_not_drift_when_the_window_has_it_too():
    rng = np.random.default_rng(3)
    reference_sample = np.concatenate([np.zeros(300), rng.uniform(0.2, 1.0, size=700)])
    reference = reference_from(reference_sample, source="evaluation")
    window = np.concatenate([np.zeros(60), rng.uniform(0.2, 1.0, size=140)])
    assert ks_statistic(reference, list(window)) < 0.1
    assert probability_psi(reference, list(window)) < 0.1
    # Without the zeros, both see it.
    shifted = rng.uniform(0.2, 1.0, size=200)
    assert ks_statistic(reference, list(shifted)) == pytest.approx(0.3, abs=0.02)


def test_reference_records_quantiles_groups_and_rejections():
    reference = reference_from([0.1, 0.2, 0.3, 0.4, 0.5], source="validation", skin_groups=["light", "light", None],
                               rejections=["blurry", None], images=7)
    assert reference.count == 5 and len(reference.probability_quantiles) == 101
    assert reference.probability_quantiles[0] == 0.1 and reference.probability_quantiles[50] == 0.3
    assert reference.skin_groups == {"light": 2} and reference.rejections == {"blurry": 1} and reference.images == 7
    assert Reference.model_validate(reference.as_json()) == reference
    with pytest.raises(ValueError):
        reference_from([], source="evaluation")


# ---------------------------------------------------------------- drift measures


def test_drift_needs_a_reference_and_enough_results():
    settings = Settings(_env_file=None, drift_min_results=10)
    shifted = [0.9] * 20
    measures = monitoring.drift_measures(settings, UNIFORM, shifted, {})
    assert measures.exceeded == ["psi", "ks"] and measures.results == 20
    assert monitoring.drift_measures(settings, None, shifted, {}).exceeded == []
    few = monitoring.drift_measures(settings, UNIFORM, shifted[:9], {})
    assert few.exceeded == [] and few.psi is not None  # measured, not judged
    with_mix = UNIFORM.model_copy(update={"skin_groups": {"light": 90, "dark": 10}})
    darker = monitoring.drift_measures(settings, with_mix, list(np.linspace(0.01, 0.99, 20)), {"dark": 15, "light": 5})
    assert darker.exceeded == ["skin_group_psi"]


# ---------------------------------------------------------------- confirmed outcomes


@pytest.mark.parametrize(("final_diagnosis", "histopathology", "outcome"), [
    ("melanoma", None, "melanoma"),
    (None, "Superficial spreading melanoma, Breslow 0.4 mm", "melanoma"),
    (None, "Melanoma in situ", "melanoma"),
    ("dysplastic naevus", "mild atypia", "benign"),
    ("melanoma", "compound naevus, no evidence of melanoma", "benign"),  # histopathology decides
    (None, "negative for melanoma", "benign"),
    ("non-melanoma skin cancer (BCC)", None, "benign"),
    ("seborrhoeic keratosis; not a melanoma", None, "benign"),
    ("no melanoma here, but a second lesion: melanoma", None, "melanoma"),
    (None, None, None),
    ("  ", "", None),
])
def test_confirmed_outcome_is_read_from_the_histopathology_first(final_diagnosis, histopathology, outcome):
    assert outcome_of(final_diagnosis, histopathology) == outcome


@pytest.mark.parametrize(("age", "band"), [
    (None, "unknown"), (0, "under 18"), (17, "under 18"), (18, "18-39"), (64, "40-64"), (65, "65 and over"),
])
def test_age_bands(age, band):
    assert age_band(age) == band


# ---------------------------------------------------------------- safety mode


def test_safety_mode_sends_a_routine_result_to_review_with_drift():
    routine = factories.result(probability=0.02, disposition="routine", disposition_reasons=["below_rule_out"],
                               safety_netting=disposition.SAFETY_NETTING)
    reviewed = drift.under_safety_mode(routine)
    assert reviewed.disposition == "clinician_review"
    assert reviewed.disposition_reasons == ["drift"]
    assert reviewed.safety_netting is None
    assert reviewed.probability == routine.probability  # only the disposition changes


def test_safety_mode_keeps_the_reasons_a_reviewer_needs():
    urgent = factories.result(disposition="urgent_referral", disposition_reasons=["high_probability", "near_threshold"])
    reviewed = drift.under_safety_mode(urgent)
    assert reviewed.disposition == "clinician_review"
    assert reviewed.disposition_reasons == ["drift", "high_probability", "near_threshold"]
    # Applied twice, the same.
    assert drift.under_safety_mode(reviewed).disposition_reasons == reviewed.disposition_reasons
    assert disposition.REASON_DRIFT in disposition.REASON_TEXT
    assert disposition.REVIEW_REASON_CODES[0] == disposition.REASON_DRIFT
