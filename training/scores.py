"""Metrics for training, calibration and evaluation: plain numpy/sklearn over arrays.

Definitions follow the ISIC challenge scorer (``isic-challenge-scoring``) so the numbers agree:
AUC is sklearn's ``roc_auc_score``; balanced accuracy is the mean of sensitivity and
specificity at the operating threshold (a probability above it is a melanoma call). PPV and
NPV (``Confusion``) are the rule-out evidence's: at the rule-out threshold a probability below
it is ruled out, as ``shared.clinical.disposition`` decides.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit


def auc(targets: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve as the Mann-Whitney U statistic (ties count half): the same
    value as sklearn's ``roc_auc_score`` (which the ISIC scorer calls), without its overhead
    in the thousands of bootstrap resamples."""
    from scipy.stats import rankdata

    targets = np.asarray(targets).astype(bool)
    positives = int(targets.sum())
    negatives = len(targets) - positives
    if positives == 0 or negatives == 0:
        return None  # undefined with one class
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[targets].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def confusion(targets: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, int]:
    targets = np.asarray(targets).astype(bool)
    called = np.asarray(probabilities) > threshold
    return {
        "tp": int(np.sum(called & targets)), "fn": int(np.sum(~called & targets)),
        "tn": int(np.sum(~called & ~targets)), "fp": int(np.sum(called & ~targets)),
    }


def sensitivity_specificity(
    targets: np.ndarray, probabilities: np.ndarray, threshold: float
) -> tuple[float | None, float | None]:
    counts = confusion(targets, probabilities, threshold)
    positives, negatives = counts["tp"] + counts["fn"], counts["tn"] + counts["fp"]
    sensitivity = counts["tp"] / positives if positives else None
    specificity = counts["tn"] / negatives if negatives else None
    return sensitivity, specificity


@dataclass(frozen=True)
class Confusion:
    """The four counts of one test (a probability called positive or not) against the truth,
    and the rates clinicians read off them; a rate whose denominator is empty is None."""

    tp: int
    fn: int
    tn: int
    fp: int

    @property
    def sensitivity(self) -> float | None:
        return _rate(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float | None:
        return _rate(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> float | None:
        """Positive predictive value: of the cases called positive, the share that are."""
        return _rate(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> float | None:
        """Negative predictive value: of the cases called negative (ruled out), the share that are."""
        return _rate(self.tn, self.tn + self.fn)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def confusion_at(
    targets: np.ndarray, probabilities: np.ndarray, threshold: float, *, positive_at_threshold: bool = False
) -> Confusion:
    """The test "probability above ``threshold``" (the decision and urgent-referral rules), or,
    with ``positive_at_threshold``, "not below it" (the rule-out rule: only a probability below
    the rule-out threshold is ruled out)."""
    targets = np.asarray(targets).astype(bool)
    probabilities = np.asarray(probabilities, dtype=float)
    called = probabilities >= threshold if positive_at_threshold else probabilities > threshold
    return Confusion(
        tp=int(np.sum(called & targets)), fn=int(np.sum(~called & targets)),
        tn=int(np.sum(~called & ~targets)), fp=int(np.sum(called & ~targets)),
    )


def balanced_accuracy(targets: np.ndarray, probabilities: np.ndarray, threshold: float) -> float | None:
    sensitivity, specificity = sensitivity_specificity(targets, probabilities, threshold)
    if sensitivity is None or specificity is None:
        return None
    return (sensitivity + specificity) / 2


def dice_jaccard(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Per-image Dice and Jaccard of two boolean masks (both empty: 1.0)."""
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    intersection = np.logical_and(truth, predicted).sum()
    total = truth.sum() + predicted.sum()
    union = np.logical_or(truth, predicted).sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * intersection / total), float(intersection / union)


def expected_calibration_error(
    targets: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> tuple[float, list[dict[str, Any]]]:
    """ECE over equal-width bins, and the bins (for the reliability diagram)."""
    targets = np.asarray(targets, dtype=float)
    probabilities = np.asarray(probabilities, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1], right=True), 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        confidence: float | None = None
        observed: float | None = None
        if count:
            confidence = float(probabilities[members].mean())
            observed = float(targets[members].mean())
            ece += count / len(targets) * abs(observed - confidence)
        table.append({"from": float(edges[b]), "to": float(edges[b + 1]), "count": count,
                      "mean_probability": confidence, "observed_rate": observed})
    return float(ece), table


def bootstrap_ci(statistic: Callable[..., float | None], arrays: tuple[np.ndarray, ...], resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of ``statistic(*arrays)`` over resampled rows."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    if n == 0:
        return None, None
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        value = statistic(*(a[rows] for a in arrays))
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            values.append(value)
    if len(values) < resamples // 2:  # mostly undefined (e.g. one class in most resamples)
        return None, None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature T minimising the validation log loss of sigmoid(logit / T) (Guo et al. 2017)."""
    logits = np.asarray(logits, dtype=float)
    targets = np.asarray(targets, dtype=float)

    def nll(log_t: float) -> float:
        p = np.clip(expit(logits / math.exp(log_t)), 1e-7, 1 - 1e-7)
        return float(-np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p)))

    found = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(found.x))


def threshold_for_sensitivity(targets: np.ndarray, probabilities: np.ndarray, target_sensitivity: float) -> float:
    """The highest threshold whose sensitivity (probability > threshold) reaches the target:
    midway between the last positive that must be caught and the next lower score."""
    targets = np.asarray(targets).astype(bool)
    probabilities = np.asarray(probabilities, dtype=float)
    positives = np.sort(probabilities[targets])[::-1]
    if len(positives) == 0:
        raise ValueError("the validation fold has no positives: no threshold can be chosen for sensitivity")
    needed = max(1, math.ceil(target_sensitivity * len(positives) - 1e-9))
    lowest_caught = positives[needed - 1]
    below = probabilities[probabilities < lowest_caught]
    threshold = (lowest_caught + below.max()) / 2 if len(below) else lowest_caught / 2
    return float(min(max(threshold, 1e-6), 1 - 1e-6))
