"""Checkpoints in the original project's format, the resumable training state, and model cards.

A released checkpoint is ``{"model_state_dict": {...}, "version", "epoch", "model_card"}``:
the original's loader and ours both take ``model_state_dict``; the card (plain JSON values)
rides along so that ``models import`` and ``MODEL_DIR`` know what the weights are, and is
also written beside it as ``<name>.card.json``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import torch

CARD_SCHEMA = "dermasentinel.model-card/1"
STATE_FILE = "last.pth"  # everything needed to resume after the last finished epoch


def code_version() -> str | None:
    """The git commit of this checkout, if it is one (with ``+dirty`` for local changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def environment() -> dict:
    return {"python": platform.python_version(), "torch": str(torch.__version__), "platform": platform.platform()}


def utc_stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _atomic_save(payload: object, path: Path) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def save_release(module: torch.nn.Module, path: Path, *, version: str, epoch: int, card: dict | None) -> None:
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload = {"model_state_dict": state, "version": version, "epoch": epoch}
    if card is not None:
        payload["model_card"] = card
    _atomic_save(payload, path)


def write_card(card: dict, checkpoint: Path) -> Path:
    path = checkpoint.with_name(checkpoint.stem + ".card.json")
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(card, indent=2, sort_keys=False))
    os.replace(partial, path)
    return path


def save_state(folder: Path, state: dict) -> None:
    _atomic_save(state, folder / STATE_FILE)


def load_state(folder: Path) -> dict | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
