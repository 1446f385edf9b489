"""`dermasentinel models import` installs only checkpoints that load, in the original's format."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from cli.main import cli
from worker.pipeline.models import build_scalpel


def test_original_format_checkpoint_is_installed(tmp_path, monkeypatch):
    scalpel = build_scalpel()
    original = tmp_path / "best_scalpel.pth"
    # The original saved {"model_state_dict": {"model.<key>": tensor}}.
    torch.save({"model_state_dict": {f"model.{k}": v for k, v in scalpel.state_dict().items()}}, original)
    model_dir = tmp_path / "models"
    monkeypatch.setenv("DERMASENTINEL_MODEL_DIR", str(model_dir))
    from shared.config import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["models", "import", str(original), "--kind", "scalpel"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert (model_dir / "scalpel.pth").read_bytes() == original.read_bytes()
    assert "sha256" in result.output


def test_checkpoint_that_does_not_fit_is_refused_and_not_installed(tmp_path, monkeypatch):
    wrong = tmp_path / "fusion.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(1)}, wrong)
    model_dir = tmp_path / "models"
    monkeypatch.setenv("DERMASENTINEL_MODEL_DIR", str(model_dir))
    from shared.config import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["models", "import", str(wrong), "--kind", "fusion"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code != 0
    assert "was not installed" in result.output
    assert "encoder.conv1.weight" in result.output  # the unexpected key is named
    assert not (model_dir / "fusion.pth").exists()
