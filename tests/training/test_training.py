"""`train fusion` on synthetic lesions: the protocol, the original checkpoint format, the card."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import pytest
import torch

from training.data import DataError
from training.train import TrainConfig, train_fusion
from worker.pipeline.model_set import ModelSet, ModelSource
from worker.pipeline.networks import FusionNet, load_checkpoint

from .conftest import TINY


def _patients(csv_path, names):
    with open(csv_path, newline="") as handle:
        rows = {row["image_name"]: row["patient_id"] for row in csv.DictReader(handle)}
    return {rows[name] for name in names}


def test_no_patient_is_on_both_sides_and_the_split_is_recorded(trained_fusion, synthetic_data):
    split = trained_fusion.card["split"]
    assert set(split["train_patients"]).isdisjoint(split["validation_patients"])
    assert split["train_images"] + split["validation_images"] == 96
    assert split["method"].startswith("StratifiedGroupKFold") and split["seed"] == 42
    # Both classes on the validation side (stratified), so AUC is defined.
    assert trained_fusion.card["metrics"]["validation"]["auc"] is not None


def test_loss_falls_and_held_out_patients_are_separated(trained_fusion):
    history = trained_fusion.history
    assert [h["epoch"] for h in history] == list(range(1, 11))
    losses = [h["train_loss"] for h in history]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
    assert all(h["images_per_second"] > 0 for h in history)
    # Validation patients never seen in training: the target.
    assert trained_fusion.card["metrics"]["validation"]["auc"] >= 0.9


def test_checkpoint_is_in_the_original_format_with_card_and_calibration(trained_fusion):
    payload = torch.load(trained_fusion.checkpoint, map_location="cpu", weights_only=True)
    assert set(payload["model_state_dict"]) == set(FusionNet().state_dict())  # what the original loads
    info = load_checkpoint(FusionNet(), trained_fusion.checkpoint)
    assert info.version == "synthetic-test-1"
    card = json.loads(trained_fusion.card_path.read_text())
    assert card == info.card  # embedded and beside it: the same card
    assert card["training_data"]["synthetic"] is True and len(card["training_data"]["fingerprint"]) == 64
    assert card["hyperparameters"]["pretrained"] is False and card["hyperparameters"]["seed"] == 42
    calibration = card["calibration"]
    assert calibration["chosen_on"] == "validation" and calibration["target_sensitivity"] == 0.95
    assert 0 < calibration["threshold"] < 1 and calibration["temperature"] > 0
    assert calibration["sensitivity"] >= 0.95  # the threshold reaches the target on validation
    # The rule-out threshold: the highest reaching the rule-out sensitivity (default 0.95), never
    # above the operating threshold when its target is at least as high.
    assert calibration["rule_out_sensitivity"] == 0.95 and calibration["rule_out_sensitivity_reached"] >= 0.95
    assert 0 < calibration["rule_out_threshold"] <= calibration["threshold"]
    assert calibration["rule_out_npv"] is None or 0 <= calibration["rule_out_npv"] <= 1


def test_the_pipeline_loads_it_as_synthetic_with_its_operating_point(trained_fusion):
    registry = ModelSet.load(None, device="cpu", backend="torch",
                                  fusion_source=ModelSource(trained_fusion.checkpoint))
    provenance = registry.provenance()
    calibration = trained_fusion.card["calibration"]
    assert provenance.weights == "synthetic"
    assert provenance.fusion is not None and provenance.fusion.version == "synthetic-test-1"
    assert provenance.threshold == calibration["threshold"]
    assert provenance.operating_point is not None and provenance.operating_point.model_dump(exclude_unset=True) == {
        "threshold": calibration["threshold"], "temperature": calibration["temperature"],
        "target_sensitivity": 0.95, "chosen_on": "validation",
        "rule_out_threshold": calibration["rule_out_threshold"], "rule_out_sensitivity": 0.95,
    }
    assert provenance.training_data is not None and "synthetic" in provenance.training_data
    # Temperature folded into the last layer: logits are the trained ones divided by T.
    plain = FusionNet().eval()
    load_checkpoint(plain, trained_fusion.checkpoint)
    image, meta = torch.zeros(2, 3, 32, 32), torch.zeros(2, 11)
    with torch.inference_mode():
        expected = plain(image, meta) / calibration["temperature"]
        calibrated = registry.fusion(image.contiguous(memory_format=torch.channels_last), meta)
        assert torch.allclose(calibrated, expected, atol=1e-5)


def test_training_resumes_after_the_last_finished_epoch(trained_fusion, synthetic_data, tmp_path):
    folder, csv_path = synthetic_data
    out = tmp_path / "resumed"
    shutil.copytree(trained_fusion.checkpoint.parent, out)
    config = TrainConfig(out_dir=out, version="synthetic-test-1", **{**TINY, "epochs": 11})
    resumed = train_fusion(folder / "images", csv_path, dataclasses.replace(config, resume=True))
    assert [h["epoch"] for h in resumed.history] == list(range(1, 12))
    assert resumed.history[:10] == trained_fusion.history  # the first ten epochs are not redone


def test_scalpel_trains_with_dice_and_its_checkpoint_loads_in_the_pipeline(tmp_path):
    from training.synthetic import write_synthetic_dataset
    from training.train import train_scalpel
    from worker.pipeline.networks import build_scalpel

    write_synthetic_dataset(tmp_path / "data", patients=4, images_per_patient=4, size=64, seed=1)
    config = TrainConfig(out_dir=tmp_path / "out", version="scalpel-test", **{**TINY, "epochs": 1})
    result = train_scalpel(tmp_path / "data" / "images", tmp_path / "data" / "masks", config)
    validation = result.card["metrics"]["validation"]
    assert 0.0 <= validation["dice"] <= 1.0 and 0.0 <= validation["jaccard"] <= validation["dice"] + 1e-9
    assert "calibration" not in result.card and result.card["kind"] == "scalpel"
    assert load_checkpoint(build_scalpel(), result.checkpoint).version == "scalpel-test"
    registry = ModelSet.load(None, device="cpu", backend="torch",
                                  scalpel_source=ModelSource(result.checkpoint, version="scalpel-test"))
    scalpel = registry.provenance().scalpel
    assert registry.segmenter == "unet" and scalpel is not None and scalpel.version == "scalpel-test"
    assert registry.provenance().weights == "untrained"  # Fusion is still untrained: say so


def test_unlabelled_rows_are_refused_before_training(synthetic_data, tmp_path):
    folder, csv_path = synthetic_data
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[5]["target"] = ""
    partly_labelled = tmp_path / "partly.csv"
    with open(partly_labelled, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "run"
    with pytest.raises(DataError, match=f"1 of {len(rows)} rows have no target \\(first: {rows[5]['image_name']}\\)"):
        train_fusion(folder / "images", partly_labelled, TrainConfig(out_dir=out, **TINY))
    assert not (out / "best_fusion.pth").exists()


def test_the_rule_out_threshold_is_the_highest_reaching_its_sensitivity():
    import numpy as np

    from training.scores import confusion_at
    from training.train import _calibration

    targets = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    logits = np.array([3.0, 1.0, -1.0, -2.5, 0.5, -0.5, -1.5, -3.0, -3.5, -4.0])
    calibration = _calibration({"_logits": logits, "_targets": targets}, 0.75, 1.0)
    probabilities = 1 / (1 + np.exp(-logits / calibration["temperature"]))
    rule_out = calibration["rule_out_threshold"]
    assert calibration["rule_out_sensitivity"] == 1.0 and calibration["rule_out_sensitivity_reached"] == 1.0
    # Every melanoma is at or above it, and the next lower score (a benign one) is below it.
    lowest_melanoma = probabilities[targets == 1].min()
    assert probabilities[probabilities < lowest_melanoma].max() < rule_out < lowest_melanoma
    assert rule_out < calibration["threshold"]  # 100% sensitivity needs a lower threshold than 75%
    assert calibration["rule_out_npv"] == confusion_at(targets, probabilities, rule_out, positive_at_threshold=True).npv
    assert calibration["rule_out_npv"] == 1.0  # nothing ruled out is a melanoma


def test_the_calibration_records_the_validation_reference_for_monitoring():
    """Issue 24: until `evaluate --record-reference` records the pipeline's own, monitoring
    compares a version's results with its validation fold's calibrated probabilities."""
    import numpy as np

    from shared.schemas.monitoring import Reference
    from training.train import _calibration

    targets = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    logits = np.array([3.0, 1.0, -1.0, -2.5, 0.5, -0.5, -1.5, -3.0, -3.5, -4.0])
    calibration = _calibration({"_logits": logits, "_targets": targets}, 0.75, 1.0)
    reference = Reference.model_validate(calibration["reference"])
    probabilities = 1 / (1 + np.exp(-logits / calibration["temperature"]))
    assert reference.source == "validation" and reference.count == 10
    assert reference.probability_quantiles[0] == pytest.approx(probabilities.min())
    assert reference.probability_quantiles[100] == pytest.approx(probabilities.max())
    assert reference.probability_quantiles[50] == pytest.approx(float(np.median(probabilities)))


def test_a_rule_out_sensitivity_below_the_target_is_refused(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    result = CliRunner().invoke(cli, [
        "train", "fusion", "--images", str(tmp_path), "--csv", __file__, "--out", str(tmp_path / "out"),
        "--target-sensitivity", "0.95", "--rule-out-sensitivity", "0.9",
    ])
    assert result.exit_code == 2 and "--rule-out-sensitivity 0.9 is below --target-sensitivity 0.95" in result.output
    with pytest.raises(ValueError, match="rule_out_sensitivity 0.9 is below"):
        train_fusion(tmp_path, tmp_path / "x.csv", TrainConfig(out_dir=tmp_path, rule_out_sensitivity=0.9))
