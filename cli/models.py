"""Installing operator-provided checkpoints, after proving they load."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def import_checkpoint(checkpoint: Path, kind: str, model_dir: Path) -> tuple[Path, str]:
    from worker.pipeline.models import build_fusion, build_scalpel, load_checkpoint

    model = build_scalpel() if kind == "scalpel" else build_fusion()
    load_checkpoint(model, checkpoint)  # raises, naming missing/unexpected keys, if it doesn't fit
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / f"{kind}.pth"
    tmp = target.with_suffix(".pth.tmp")
    shutil.copyfile(checkpoint, tmp)
    tmp.replace(target)
    return target, hashlib.sha256(target.read_bytes()).hexdigest()
