"""`dermasentinel models import` installs only checkpoints that load, in the original's format."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from shared.config import get_settings
from worker.pipeline.networks import build_scalpel


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    """MODEL_DIR for the command, with the cached settings re-read around it."""
    folder = tmp_path / "models"
    monkeypatch.setenv("DERMASENTINEL_MODEL_DIR", str(folder))
    get_settings.cache_clear()
    yield folder
    get_settings.cache_clear()


def import_checkpoint(path, kind):
    return CliRunner().invoke(cli, ["models", "import", str(path), "--kind", kind])


def test_original_format_checkpoint_is_installed(tmp_path, model_dir):
    scalpel = build_scalpel()
    original = tmp_path / "best_scalpel.pth"
    # The original saved {"model_state_dict": {"model.<key>": tensor}}.
    torch.save({"model_state_dict": {f"model.{k}": v for k, v in scalpel.state_dict().items()}}, original)
    result = import_checkpoint(original, "scalpel")
    assert result.exit_code == 0, result.output
    assert (model_dir / "scalpel.pth").read_bytes() == original.read_bytes()
    assert "sha256" in result.output


def test_checkpoint_that_does_not_fit_is_refused_and_not_installed(tmp_path, model_dir):
    wrong = tmp_path / "fusion.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(1)}, wrong)
    result = import_checkpoint(wrong, "fusion")
    assert result.exit_code != 0
    assert "was not installed" in result.output
    assert "encoder.conv1.weight" in result.output  # the unexpected key is named
    assert not (model_dir / "fusion.pth").exists()


def test_the_command_names_the_registry_s_model_kinds():
    from cli.main import MODEL_KINDS
    from shared.model_registry import MODEL_KINDS as REGISTRY_KINDS

    assert MODEL_KINDS == REGISTRY_KINDS


def test_a_file_that_is_no_checkpoint_is_refused_in_one_line_that_says_so(tmp_path, model_dir):
    """Issue 25: not torch's "Unsupported operand 110" or its paragraph about weights_only."""
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint\n")
    result = import_checkpoint(text, "fusion")
    assert result.exit_code == 1
    assert "is not a PyTorch checkpoint (a file written by torch.save)" in result.output
    assert "operand" not in result.output and "weights_only" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "is empty" in import_checkpoint(empty, "fusion").output
    assert not (model_dir / "fusion.pth").exists()
