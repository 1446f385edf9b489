"""A small Fusion model trained once per session on synthetic lesions: CPU, 64 px, 10 epochs,
72 training images of 18 patients (about a minute on 2 cores; deterministic for a seed).

In the fast tier (a run that selects no `services` test) the training starts as soon as
collection ends, in a process of its own (`python -c`, one torch thread, the same code, data
and seed), so that it runs on the second core while the other tests run, and the tests that
use it run last; `trained_fusion` waits for it and returns the same `TrainResult`. Otherwise
it trains in this process when first asked for, as before.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from training.synthetic import write_synthetic_dataset
from training.train import TrainConfig, train_fusion

# Small enough for the suite on a shared 2-core CPU, large enough that held-out synthetic
# patients are separated well (see test_training.py for the targets).
TINY = {"image_size": 64, "epochs": 10, "batch_size": 16, "learning_rate": 1e-3, "folds": 4, "patience": 10,
        "threads": 1, "progress": False}
DATA = {"patients": 24, "images_per_patient": 4, "size": 64, "seed": 0}
VERSION = "synthetic-test-1"

_TRAIN = """
import json, pickle, sys
from pathlib import Path
from training.train import TrainConfig, train_fusion
images, csv_path, out, result = map(Path, sys.argv[1:5])
config = TrainConfig(out_dir=out, version=sys.argv[5], **json.loads(sys.argv[6]))
result.write_bytes(pickle.dumps(train_fusion(images, csv_path, config)))
"""


class _HeadStart:
    """The session's training run, started in the background right after collection."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dermasentinel-test-training-"))
        self.data = self.root / "synthetic"
        self.csv_path = write_synthetic_dataset(self.data, **DATA)
        self.out = self.root / "fusion-run"
        self.result_path = self.root / "result.pickle"
        self.log_path = self.root / "train.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _TRAIN, str(self.data / "images"), str(self.csv_path), str(self.out),
                 str(self.result_path), VERSION, json.dumps(TINY)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )

    def result(self, timeout: float = 900.0):
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        assert code == 0, f"training failed ({code}):\n{self.log_path.read_text()[-4000:]}"
        return pickle.loads(self.result_path.read_bytes())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


_HEAD_START: list[_HeadStart] = []


def _uses_model(item) -> bool:
    return "trained_fusion" in getattr(item, "fixturenames", ())


def pytest_collection_finish(session):
    """A run of the fast tier (no `services` test selected) that needs the model trains it in
    the background from now on, and runs the tests that use it last. A run with services
    keeps its order and trains in-process: nothing competes with its timing-sensitive tests."""
    items = session.items
    if _HEAD_START or not any(_uses_model(item) for item in items):
        return
    if any(item.get_closest_marker("services") for item in items):
        return
    _HEAD_START.append(_HeadStart())
    items.sort(key=_uses_model)


def pytest_sessionfinish(session):
    while _HEAD_START:
        _HEAD_START.pop().close()


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    if _HEAD_START:
        return _HEAD_START[0].data, _HEAD_START[0].csv_path
    folder = tmp_path_factory.mktemp("synthetic")
    csv_path = write_synthetic_dataset(folder, **DATA)
    return folder, csv_path


@pytest.fixture(scope="session")
def trained_fusion(synthetic_data, tmp_path_factory):
    if _HEAD_START:
        return _HEAD_START[0].result()
    folder, csv_path = synthetic_data
    out = tmp_path_factory.mktemp("fusion-run")
    return train_fusion(folder / "images", csv_path, TrainConfig(out_dir=out, version=VERSION, **TINY))


@pytest.fixture
def run_evaluate(tmp_path, monkeypatch):
    """``dermasentinel ARGS`` in-process with only what an evaluation needs: torch on the CPU,
    2 TTA views, a scratch DATA_DIR, a 32 px minimum resolution (the synthetic lesions are
    64 px), no other DERMASENTINEL_ setting."""
    from click.testing import CliRunner

    from cli.main import cli
    from shared.config import get_settings

    for name in [n for n in os.environ if n.startswith("DERMASENTINEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DERMASENTINEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DERMASENTINEL_BACKEND", "torch")
    monkeypatch.setenv("DERMASENTINEL_DEVICE", "cpu")
    monkeypatch.setenv("DERMASENTINEL_TTA_VIEWS", "2")
    monkeypatch.setenv("DERMASENTINEL_MIN_IMAGE_SIDE", "32")
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(cli, list(args))
    get_settings.cache_clear()


# ------------------------------------------------------ the model registry (services; issues 14, 24)


def _retire_all(context) -> None:
    from sqlalchemy import update

    from shared.clock import utcnow
    from shared.db import session_scope
    from shared.tables import ModelRollout, ModelVersion

    with session_scope(context.session_factory) as session:
        session.execute(update(ModelVersion).values(status="retired", activated_at=None))
        # Issue 24: and no shadow or canary left running.
        session.execute(update(ModelRollout).where(ModelRollout.ended_at.is_(None))
                        .values(ended_at=utcnow(), ended_reason="stopped", ended_by="tests"))


@pytest.fixture
def registry(context):
    """No model active before or after (the session's worker goes back to its built-in models)."""
    _retire_all(context)
    yield context
    _retire_all(context)


@pytest.fixture
def run_cli(settings, monkeypatch):
    """``dermasentinel ARGS`` in-process against the test stack (its settings in the environment)."""
    from click.testing import CliRunner

    from cli.main import cli
    from shared.config import get_settings

    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DERMASENTINEL_MODEL_DIR", raising=False)
    get_settings.cache_clear()

    def run(*args: str):
        result = CliRunner().invoke(cli, list(args))
        return result

    yield run
    get_settings.cache_clear()
