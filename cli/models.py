"""Installing operator-provided checkpoints, after proving they load."""

from __future__ import annotations

import shutil
from pathlib import Path


def import_checkpoint(checkpoint: Path, kind: str, model_dir: Path) -> tuple[Path, str]:
    """Load CHECKPOINT into a fresh model (raising, with the keys named, if it does not fit),
    then copy it atomically to MODEL_DIR/{kind}.pth. Returns the target and its sha256."""
    from worker.pipeline.models import FusionNet, build_scalpel, load_checkpoint

    model = build_scalpel() if kind == "scalpel" else FusionNet()
    info = load_checkpoint(model, checkpoint)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / f"{kind}.pth"
    tmp = target.with_suffix(".pth.tmp")
    shutil.copyfile(checkpoint, tmp)
    tmp.replace(target)
    return target, info.sha256
