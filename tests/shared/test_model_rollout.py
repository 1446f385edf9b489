"""Issue 24's rollout arithmetic, without services: which analyses a canary or shadow takes (a
stable hash of the id), when a canary departs from its incumbent beyond its bounds, and the
agreement statistics `models compare` prints."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from shared.config import Settings
from shared.model_rollout import (
    CANARY,
    SHADOW,
    CanaryBounds,
    Said,
    Window,
    agreement,
    compare_pairs,
    judge,
    selected,
    share_of,
)

BOUNDS = CanaryBounds.of(Settings(_env_file=None))  # defaults: 50 results, +0.02 failures, PSI 0.25, KS 0.2


def test_the_same_analysis_is_always_chosen_alike_and_the_share_is_the_fraction():
    ids = [uuid.UUID(int=n * 7919 + 13) for n in range(20_000)]
    chosen = [i for i in ids if selected(i, 0.10, CANARY)]
    assert abs(len(chosen) / len(ids) - 0.10) < 0.01
    # Stable: a retried job (same id) lands on the same side, in any process.
    assert chosen == [i for i in ids if selected(uuid.UUID(str(i)), 0.10, CANARY)]
    assert share_of(ids[0], CANARY) == share_of(uuid.UUID(bytes=ids[0].bytes), CANARY)
    # A larger share keeps every job a smaller one took (raising 10 % to 20 % adds jobs, moves none back).
    assert set(chosen) <= {i for i in ids if selected(i, 0.20, CANARY)}
    # The shadow's draw is independent of the canary's: about 10 % of the canary's jobs are shadowed too.
    both = [i for i in chosen if selected(i, 0.10, SHADOW)]
    assert 0.07 < len(both) / len(chosen) < 0.13
    assert not any(selected(i, 0.0, CANARY) for i in ids[:1000])
    assert all(selected(i, 1.0, CANARY) for i in ids[:1000])


def _window(rng: np.random.Generator, n: int, *, beta=(2.0, 6.0), failed=0.0, blurry=0.05) -> Window:
    statuses, rejections, probabilities = [], [], []
    for _ in range(n):
        draw = rng.random()
        if draw < failed:
            statuses.append("failed")
            rejections.append(None)
        elif draw < failed + blurry:
            statuses.append("rejected")
            rejections.append("blurry")
        else:
            statuses.append("succeeded")
            rejections.append(None)
            probabilities.append(float(rng.beta(*beta)))
    return Window(statuses, rejections, probabilities)


def test_a_canary_like_its_incumbent_stays_and_too_few_results_decide_nothing():
    rng = np.random.default_rng(3)
    incumbent = _window(rng, 400)
    verdict = judge(_window(rng, 400), incumbent, BOUNDS)
    assert verdict.decided and not verdict.roll_back and verdict.reasons == []
    assert verdict.probability_psi is not None and verdict.probability_psi < BOUNDS.max_psi
    # However bad, 20 results are not enough to judge (the bound is 50).
    early = judge(_window(rng, 20, failed=0.5), incumbent, BOUNDS)
    assert not early.decided and not early.roll_back


@pytest.mark.parametrize(("canary", "crossed"), [
    ({"failed": 0.10}, "failure rate"),
    ({"blurry": 0.40}, "rejection mix PSI"),
    ({"beta": (4.0, 3.0)}, "probability PSI"),
])
def test_a_canary_beyond_a_bound_is_rolled_back_with_the_bound_named(canary, crossed):
    rng = np.random.default_rng(5)
    verdict = judge(_window(rng, 400, **canary), _window(rng, 400), BOUNDS)
    assert verdict.decided and verdict.roll_back
    assert any(reason.startswith(crossed) for reason in verdict.reasons), verdict.reasons


def test_a_shift_in_probabilities_crosses_ks_with_a_tighter_bound():
    rng = np.random.default_rng(7)
    tight = BOUNDS.model_copy(update={"max_psi": 10.0, "max_ks": 0.05})
    verdict = judge(_window(rng, 400, beta=(2.6, 6.0)), _window(rng, 400), tight)
    assert verdict.roll_back and [r.split(" ")[:2] for r in verdict.reasons] == [["probability", "KS"]]


def _said(p: float | None, disposition: str | None, group: str | None = "light", status: str = "succeeded",
          rejection: str | None = None) -> Said:
    return Said("v", status, p, disposition, rejection, group)


def test_compare_gives_delta_quantiles_and_agreement_overall_and_per_skin_group():
    pairs = [
        (_said(0.30, "routine"), _said(0.20, "routine")),  # |Δp| 0.10, agree
        (_said(0.50, "clinician_review"), _said(0.20, "routine")),  # 0.30, disagree
        (_said(0.10, "routine", "dark"), _said(0.10, "routine", "dark")),  # 0.00, agree
        (_said(None, None, "dark", "rejected", "blurry"), _said(0.40, "clinician_review", "dark")),  # not scored
    ]
    found = compare_pairs(pairs, "id", "v2")
    overall = found.overall
    assert (overall.cases, overall.scored) == (4, 3)
    assert overall.abs_delta_p50 == pytest.approx(0.10)
    assert overall.abs_delta_max == pytest.approx(0.30)
    assert overall.abs_delta_p95 == pytest.approx(np.quantile([0.0, 0.1, 0.3], 0.95))
    assert overall.mean_delta == pytest.approx(0.40 / 3)
    assert overall.disposition_agreement == pytest.approx(2 / 3) and overall.dispositions_agreeing == 2
    assert overall.outcome_agreement == pytest.approx(3 / 4)
    assert list(found.by_skin_group) == ["light", "dark"]  # lightest first, as the ITA groups go
    dark = found.by_skin_group["dark"]
    assert (dark.cases, dark.scored, dark.abs_delta_max, dark.disposition_agreement) == (2, 1, 0.0, 1.0)
    empty = agreement([])
    assert empty.cases == 0 and empty.abs_delta_p50 is None and empty.disposition_agreement is None
