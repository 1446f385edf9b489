"""What a checkpoint is, without torch: the networks' names, a checkpoint's sha256, version and
card (``CheckpointInfo``), and the small JSON that records them in the OpenVINO IR cache.

A worker whose OpenVINO IR is already cached needs nothing from a checkpoint but these facts
(issue 27, docs/ENGINE.md "Memory"): the sha256 is read from the file's bytes, and the version and
the model card that only ``torch.load`` could read are kept, the first time torch loads the
checkpoint, in ``DATA_DIR/engine/checkpoint-{sha256}.json``. The file is named by the sha256 of the
checkpoint's bytes, which determine both, so it never goes stale; ``CHECKPOINT_META_FORMAT`` is
bumped if the way they are read from a checkpoint changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCALPEL_NAME = "scalpel-unet-resnet34"
FUSION_NAME = "fusion-efficientnet-b3-meta"
# Bump when what load_checkpoint reads from a checkpoint (version, card) changes.
CHECKPOINT_META_FORMAT = 1


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    sha256: str
    version: str
    card: dict | None = None  # the model card a training run embedded (``model_card``), if any


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# How a file written by torch.save begins: a zip archive (PyTorch 1.6 on), or a pickle (older).
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")


def unreadable_checkpoint(path: Path, exc: BaseException) -> str:
    """One line on why ``path`` is not a checkpoint torch can load safely, instead of torch's
    own text (issue 25: "Unsupported operand 110", a paragraph about ``weights_only``)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        return f"cannot read {path}: {error.strerror or error}"
    if not head:
        return f"{path} is empty, not a PyTorch checkpoint"
    if not head.startswith(_TORCH_SAVE_MAGIC):
        return (f"{path} is not a PyTorch checkpoint (a file written by torch.save); it begins with {head[:8]!r}. "
                "Give the .pth file that training wrote (e.g. runs/fusion/best_fusion.pth)")
    text = str(exc)
    if "weights_only" in text or "Weights only load failed" in text:
        return (f"{path} holds Python objects other than tensors and would need unsafe unpickling to load; "
                "save the weights alone: torch.save({'model_state_dict': model.state_dict()}, path)")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__).split(". ")[0]
    return f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {first[:200]}); is the file complete?"


def meta_path(cache_dir: Path, sha256: str) -> Path:
    return Path(cache_dir) / f"checkpoint-{sha256}.json"


def read_checkpoint_meta(cache_dir: Path, path: Path, sha256: str) -> CheckpointInfo | None:
    """The checkpoint at ``path`` (whose bytes hash to ``sha256``) as a torch load described it
    into ``cache_dir``; None when it was never described there (or the record is unreadable)."""
    record = meta_path(cache_dir, sha256)
    try:
        meta = json.loads(record.read_text())
        if meta.get("format") != CHECKPOINT_META_FORMAT or meta.get("sha256") != sha256:
            return None
        version, card = meta["version"], meta.get("card")
        if not isinstance(version, str) or not (card is None or isinstance(card, dict)):
            return None
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    return CheckpointInfo(path=Path(path), sha256=sha256, version=version, card=card)


def write_checkpoint_meta(cache_dir: Path, info: CheckpointInfo) -> None:
    """Record what ``torch.load`` read from ``info``'s checkpoint, for a later start that finds
    its IR cached. Skipped (that start loads through torch again) when the card would not come
    back from JSON exactly as torch read it, or the cache is not writable."""
    meta: dict[str, Any] = {"format": CHECKPOINT_META_FORMAT, "sha256": info.sha256, "version": info.version,
                            "card": info.card}
    try:
        text = json.dumps(meta, sort_keys=True, allow_nan=False)
        if json.loads(text) != meta:  # e.g. tuples or non-str keys in the card: provenance would change
            return
    except (TypeError, ValueError):
        return
    record = meta_path(cache_dir, info.sha256)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        # Written under a per-process name, then renamed: a concurrent worker never reads half of it.
        partial = record.with_name(f"{record.stem}.{os.getpid()}.partial.json")
        partial.write_text(text)
        os.replace(partial, record)
    except OSError as exc:
        log.warning("engine: could not record checkpoint %s in %s: %s", info.sha256[:12], cache_dir, exc)
