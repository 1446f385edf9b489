"""A small Fusion model trained once per session on synthetic lesions: CPU, 64 px, 10 epochs,
72 training images of 18 patients (about a minute on 2 cores; deterministic for a seed)."""

from __future__ import annotations

import os

import pytest

from training.synthetic import write_synthetic_dataset
from training.train import TrainConfig, train_fusion

# Small enough for the suite on a shared 2-core CPU, large enough that held-out synthetic
# patients are separated well (see test_training.py for the targets).
TINY = {"image_size": 64, "epochs": 10, "batch_size": 16, "learning_rate": 1e-3, "folds": 4, "patience": 10,
        "threads": 1, "progress": False}


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    csv_path = write_synthetic_dataset(folder, patients=24, images_per_patient=4, size=64, seed=0)
    return folder, csv_path


@pytest.fixture(scope="session")
def trained_fusion(synthetic_data, tmp_path_factory):
    folder, csv_path = synthetic_data
    out = tmp_path_factory.mktemp("fusion-run")
    return train_fusion(folder / "images", csv_path, TrainConfig(out_dir=out, version="synthetic-test-1", **TINY))


@pytest.fixture
def run_evaluate(tmp_path, monkeypatch):
    """``dermasentinel ARGS`` in-process with only what an evaluation needs: torch on the CPU,
    2 TTA views, a scratch DATA_DIR, no other DERMASENTINEL_ setting."""
    from click.testing import CliRunner

    from cli.main import cli
    from shared.config import get_settings

    for name in [n for n in os.environ if n.startswith("DERMASENTINEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DERMASENTINEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DERMASENTINEL_BACKEND", "torch")
    monkeypatch.setenv("DERMASENTINEL_DEVICE", "cpu")
    monkeypatch.setenv("DERMASENTINEL_TTA_VIEWS", "2")
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(cli, list(args))
    get_settings.cache_clear()
