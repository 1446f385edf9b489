"""`evaluate`: the same numbers as the official ISIC scorer, and one row per skin group present."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from isic_challenge_scoring import metrics as isic

from tests.training.subsets import write_subset
from training.evaluate import GROUP_ORDER, Prediction, reference_of, rule_out_evidence, rule_out_table, summarise


def _predictions(seed: int, n: int = 300, groups=GROUP_ORDER) -> list[Prediction]:
    rng = np.random.default_rng(seed)
    targets = rng.random(n) < 0.3
    # Informative but imperfect scores, with ties (rounded), as real models give.
    scores = np.clip(np.round(0.35 * targets + rng.normal(0.35, 0.2, n), 3), 0.0, 1.0)
    return [Prediction(f"img{i}", int(t), float(p), skin_group=groups[i % len(groups)])
            for i, (t, p) in enumerate(zip(targets, scores, strict=True))]


def _isic(predictions: list[Prediction], threshold: float) -> tuple[float, float]:
    """The ISIC scorer on the same predictions: AUC on the melanoma probability, balanced
    accuracy from the categories called at the operating threshold."""
    truth = pd.Series([float(p.target) for p in predictions])
    scores = pd.Series([p.probability for p in predictions])
    weights = pd.Series(np.ones(len(predictions)))
    auc = isic.auc(truth, scores, weights)
    called = (scores > threshold).astype(float)
    truth_frame = pd.DataFrame({"MEL": truth, "other": 1.0 - truth})
    called_frame = pd.DataFrame({"MEL": called, "other": 1.0 - called})
    balanced = isic.balanced_multiclass_accuracy(truth_frame, called_frame, weights)
    return float(auc), float(balanced)


@pytest.mark.parametrize("threshold", [0.5, 0.31, 0.62])
def test_auc_and_balanced_accuracy_agree_with_the_isic_scorer(threshold):
    predictions = _predictions(seed=7)
    report = summarise(predictions, threshold, resamples=100)
    auc, balanced = _isic(predictions, threshold)
    assert report.overall is not None
    assert report.overall.metrics["auc"].value == pytest.approx(auc, abs=1e-6)
    assert report.overall.metrics["balanced_accuracy"].value == pytest.approx(balanced, abs=1e-6)
    for row in report.per_skin_group:  # the same agreement inside every skin group
        members = [p for p in predictions if p.skin_group == row.skin_group]
        group_auc, group_balanced = _isic(members, threshold)
        assert row.metrics["auc"].value == pytest.approx(group_auc, abs=1e-6)
        assert row.metrics["balanced_accuracy"].value == pytest.approx(group_balanced, abs=1e-6)


def test_one_row_per_skin_group_present_with_counts_and_intervals():
    present = ("light", "tan", "dark")
    predictions = _predictions(seed=3, n=90, groups=present)
    predictions.append(Prediction("blurred", 1, None, rejection="blurry"))
    report = summarise(predictions, 0.4, resamples=100).as_json()  # as report.json holds it
    rows = report["per_skin_group"]
    assert [r["skin_group"] for r in rows] == ["light", "tan", "dark"]  # lightest first, absent groups absent
    assert [r["count"] for r in rows] == [30, 30, 30]
    assert sum(r["positives"] for r in rows) == report["overall"]["positives"]
    assert "skin_group" not in report["overall"] and "model" not in report
    assert report["evaluated"] == 90 and report["rejected"] == [{"image_name": "blurred", "reason": "blurry"}]
    for row in rows:
        for name in ("auc", "sensitivity", "specificity", "balanced_accuracy", "ece"):
            low, high = row["metrics"][name]["ci95"]
            assert low <= row["metrics"][name]["value"] <= high
            assert "count" not in row["metrics"][name]  # only segmentation metrics count their masks


# Ten cases by hand: (target, probability, skin group, disposition the service gave).
HAND = [
    (1, 0.90, "light", "urgent_referral"),
    (1, 0.60, "dark", "clinician_review"),
    (1, 0.05, "light", "routine"),  # a melanoma ruled out: sent home
    (0, 0.85, "dark", "clinician_review"),
    (0, 0.30, "light", "clinician_review"),
    (0, 0.08, "dark", "routine"),
    (0, 0.02, "light", "routine"),
    (0, 0.50, "dark", "clinician_review"),
    (1, 0.95, "light", "urgent_referral"),
    (0, 0.10, "dark", "clinician_review"),  # exactly at the rule-out threshold: not ruled out
]


def test_rule_out_evidence_agrees_with_a_hand_computation():
    predictions = [Prediction(f"c{i}", t, p, skin_group=g, disposition=d) for i, (t, p, g, d) in enumerate(HAND)]
    evidence = rule_out_evidence(predictions, threshold=0.5, rule_out_threshold=0.1, rule_out_sensitivity=0.95,
                                 resamples=200)
    assert evidence.urgent_threshold == 0.8 and evidence.rule_out_threshold == 0.1
    overall = evidence.overall
    assert (overall.count, overall.positives) == (10, 4)
    # Urgent referral, p > 0.8: called 0.90, 0.85, 0.95 -> TP 2, FP 1; missed 0.60 and 0.05 -> FN 2; TN 5.
    urgent = overall.urgent
    assert urgent.sensitivity.value == pytest.approx(2 / 4) and urgent.specificity.value == pytest.approx(5 / 6)
    assert urgent.ppv.value == pytest.approx(2 / 3) and urgent.npv.value == pytest.approx(5 / 7)
    # Rule-out, p < 0.1: ruled out 0.05 (a melanoma), 0.08, 0.02 -> FN 1, TN 2; the other seven,
    # 0.10 included, are not ruled out -> TP 3, FP 4.
    rule_out = overall.rule_out
    assert rule_out.sensitivity.value == pytest.approx(3 / 4) and rule_out.specificity.value == pytest.approx(2 / 6)
    assert rule_out.npv.value == pytest.approx(2 / 3) and rule_out.ppv.value == pytest.approx(3 / 7)
    for score in (urgent.sensitivity, urgent.specificity, urgent.ppv, urgent.npv, rule_out.sensitivity,
                  rule_out.specificity, rule_out.ppv, rule_out.npv):
        low, high = score.ci95
        assert low is not None and high is not None and low <= score.value <= high
    shares = overall.dispositions
    assert (shares.urgent_referral.count, shares.clinician_review.count, shares.routine.count) == (2, 5, 3)
    assert shares.routine.share == pytest.approx(0.3) and shares.routine_melanomas == 1
    # Per skin group: the dark group has one melanoma, never ruled out, and nothing urgent.
    assert [b.skin_group for b in evidence.per_skin_group] == ["light", "dark"]
    dark = evidence.per_skin_group[1]
    assert (dark.count, dark.positives) == (5, 1)
    assert dark.rule_out.sensitivity.value == 1.0 and dark.rule_out.npv.value == 1.0
    assert dark.urgent.sensitivity.value == 0.0 and dark.urgent.ppv.value == 0.0  # 0.85 is benign
    assert dark.dispositions.urgent_referral.count == 0 and dark.dispositions.routine.share == pytest.approx(0.2)


def test_the_rule_out_evidence_is_in_the_report_and_printed_as_a_table():
    predictions = [Prediction(f"c{i}", t, p, skin_group=g, disposition=d) for i, (t, p, g, d) in enumerate(HAND)]
    report = summarise(predictions, 0.5, resamples=100).as_json()
    assert report["rule_out"]["rule_out_threshold"] == 0.1  # not calibrated: the clinical default
    assert report["rule_out"]["rule_out_sensitivity"] is None
    assert report["rule_out"]["overall"]["rule_out"]["npv"]["value"] == pytest.approx(2 / 3)
    lines = rule_out_table(summarise(predictions, 0.5, resamples=100).rule_out, "trained")
    assert "urgent referral: p > 0.800 (the high-risk operating point)" in lines
    assert "rule-out: p < 0.100 (the default: the model has no calibrated one)" in lines
    npv_rows = [line for line in lines if line.strip().startswith("all")]
    assert len(npv_rows) == 3  # one per threshold, one of dispositions
    assert "0.667 (" in npv_rows[1]  # NPV at rule-out with its interval
    assert npv_rows[2].split()[-4:] == ["20%", "50%", "30%", "1"]


def test_evaluate_command_writes_the_report_for_a_trained_model(trained_fusion, synthetic_data, tmp_path,
                                                                run_evaluate):
    import csv

    folder, csv_path = synthetic_data
    subset = tmp_path / "labels.csv"
    write_subset(csv_path, subset, 4)  # one image per patient: 24 images, every skin group
    result = run_evaluate(
        "evaluate", "--images", str(folder / "images"), "--csv", str(subset), "--masks", str(folder / "masks"),
        "--fusion", str(trained_fusion.checkpoint), "--size", "64", "--bootstrap", "100",
        "--out", str(tmp_path / "eval"),
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["model"]["weights"] == "synthetic" and report["operating_point"]["chosen_on"] == "validation"
    assert report["threshold"] == trained_fusion.card["calibration"]["threshold"]
    assert report["evaluated"] + len(report["rejected"]) == 24
    with open(tmp_path / "eval" / "predictions.csv", newline="") as handle:
        groups = {row["skin_group"] for row in csv.DictReader(handle) if row["skin_group"]}
    assert {row["skin_group"] for row in report["per_skin_group"]} == groups
    assert sum(row["count"] for row in report["per_skin_group"]) == report["evaluated"]
    assert report["overall"]["metrics"]["dice"]["value"] > 0.5  # the classical Gate 1 finds these lesions
    for name in ("reliability.png", "roc.png"):
        assert (tmp_path / "eval" / name).read_bytes().startswith(b"\x89PNG")
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "not a certified medical device" in page and "synthetic" in page and "chosen for sensitivity 0.95" in page
    # The rule-out evidence: both thresholds, per skin group, with intervals, and the dispositions.
    rule_out = report["rule_out"]
    calibration = trained_fusion.card["calibration"]
    assert rule_out["rule_out_threshold"] == calibration["rule_out_threshold"]
    assert rule_out["rule_out_sensitivity"] == 0.95 and rule_out["urgent_threshold"] >= 0.8
    assert [row["skin_group"] for row in rule_out["per_skin_group"]] == [row["skin_group"]
                                                                         for row in report["per_skin_group"]]
    shares = rule_out["overall"]["dispositions"]
    assert shares["clinician_review"]["count"] == report["evaluated"]  # synthetic weights: always review
    assert shares["routine"]["count"] == shares["urgent_referral"]["count"] == 0
    printed = result.output
    assert "weights synthetic: every case is clinician_review" in printed
    chosen = f"rule-out: p < {calibration['rule_out_threshold']:.3f} (chosen for sensitivity 0.95 on validation)"
    assert chosen in printed
    tables = printed.split("urgent referral: p > ")[1]
    for row in rule_out["per_skin_group"]:
        group_rows = [line for line in tables.splitlines() if line.strip().startswith(row["skin_group"] + " ")]
        assert len(group_rows) == 3, (row["skin_group"], tables)  # urgent, rule-out, dispositions
        assert group_rows[1].count("(") >= 1  # an interval where the group has both classes
    assert "Rule-out evidence" in page
    with open(tmp_path / "eval" / "predictions.csv", newline="") as handle:
        assert {row["disposition"] for row in csv.DictReader(handle) if row["probability"]} == {"clinician_review"}


def test_predictions_only_scores_an_unlabelled_folder(trained_fusion, synthetic_data, tmp_path, run_evaluate):
    import csv

    folder, csv_path = synthetic_data
    unlabelled = tmp_path / "test.csv"
    rows = write_subset(csv_path, unlabelled, 12, drop=("target",))  # 8 images, a challenge test set: no labels
    command = ["evaluate", "--images", str(folder / "images"), "--csv", str(unlabelled),
               "--fusion", str(trained_fusion.checkpoint), "--size", "64"]
    refused = run_evaluate(*command, "--out", str(tmp_path / "refused"))
    result = run_evaluate(*command, "--predictions-only", "--out", str(tmp_path / "out"))
    assert refused.exit_code != 0 and "--predictions-only" in refused.output
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["predictions_only"] and "overall" not in report and report["images"] == 8
    assert report["model"]["weights"] == "synthetic"
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [row["image_name"] for row in written] == [row["image_name"] for row in rows]
    scored = [row for row in written if row["probability"]]
    assert len(scored) == report["evaluated"] and all(0.0 <= float(row["probability"]) <= 1.0 for row in scored)
    assert all(row["target"] == "" for row in written)
    assert not (tmp_path / "out" / "roc.png").exists()


def test_the_report_carries_the_monitoring_reference():
    """Issue 24: what monitoring compares a window with: the scored probabilities' quantiles,
    their skin groups, and the rejections (which are not scored)."""
    predictions = _predictions(5, n=120) + [Prediction("blurred", 0, None, rejection="blurry"),
                                            Prediction("empty", 1, None, rejection="no_lesion")]
    reference = reference_of(predictions)
    scores = [p.probability for p in predictions if p.probability is not None]
    assert reference.source == "evaluation" and reference.count == 120 and reference.images == 122
    assert reference.probability_quantiles[0] == min(scores) and reference.probability_quantiles[100] == max(scores)
    assert reference.skin_groups == dict.fromkeys(GROUP_ORDER, 20)
    assert reference.rejections == {"blurry": 1, "no_lesion": 1}
    assert reference_of([Prediction("x", 0, None, rejection="blurry")]) is None
