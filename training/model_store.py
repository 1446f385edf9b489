"""Installing operator-provided checkpoints, after proving they load, and the model registry's
commands (docs/MODELS.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CARD_SUFFIX = ".card.json"


def check_checkpoint(checkpoint: Path, kind: str):
    """Load CHECKPOINT into a fresh model, raising (with the keys named) if it does not fit.
    Returns its ``CheckpointInfo`` (sha256, version, embedded card)."""
    from worker.pipeline.networks import FusionNet, build_scalpel, load_checkpoint

    model = build_scalpel() if kind == "scalpel" else FusionNet()
    return load_checkpoint(model, checkpoint)


def import_checkpoint(checkpoint: Path, kind: str, model_dir: Path) -> tuple[Path, str]:
    """Load CHECKPOINT into a fresh model (raising, with the keys named, if it does not fit),
    then copy it atomically to MODEL_DIR/{kind}.pth. Returns the target and its sha256."""
    info = check_checkpoint(checkpoint, kind)
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / f"{kind}.pth"
    tmp = target.with_suffix(".pth.tmp")
    shutil.copyfile(checkpoint, tmp)
    tmp.replace(target)
    return target, info.sha256


def find_card(checkpoint: Path, card_path: Path | None, embedded: dict | None) -> dict | None:
    """The model card: the file given, else ``<checkpoint>.card.json`` beside it, else the
    one a training run embedded in the checkpoint."""
    if card_path is None:
        beside = checkpoint.with_name(checkpoint.stem + CARD_SUFFIX)
        card_path = beside if beside.is_file() else None
    if card_path is not None:
        card = json.loads(card_path.read_text())
        if not isinstance(card, dict):
            raise ValueError(f"{card_path} is not a JSON object")
        return card
    return embedded


def register_checkpoint(settings, checkpoint: Path, kind: str, *, card_path: Path | None = None,
                        version: str | None = None, activate: bool = False) -> tuple[dict, bool]:
    """Prove CHECKPOINT loads, store it in the object store and add it to the registry as a
    candidate (or the active model with ``activate``). Returns (row as JSON, created)."""
    from shared import model_registry
    from shared.context import AppContext
    from shared.db import session_scope

    info = check_checkpoint(checkpoint, kind)
    card = find_card(checkpoint, card_path, info.card)
    context = AppContext(settings)
    try:
        context.store.ensure_buckets()
        with session_scope(context.session_factory) as session:
            row, created = model_registry.register(
                session, context.store, kind=kind, data=checkpoint.read_bytes(), sha256=info.sha256,
                version=version or (card or {}).get("version")
                or (None if info.version.startswith("sha256-") else info.version),
                card=card,
            )
            if activate:
                model_registry.activate(session, kind, str(row.id))
            return model_registry.describe(row), created
    finally:
        context.close()


def registered_source(settings, kind: str, ref: str):
    """A registered model (``active``, a version, an id or a sha256 prefix) as the
    ``ModelSource`` workers build from it: its checkpoint fetched into DATA_DIR/models and
    checked against its sha256, with its version, card and operating point."""
    from shared import model_registry
    from shared.context import AppContext
    from worker.pipeline.model_set import ModelSource

    context = AppContext(settings)
    try:
        with context.session_factory() as session:
            model = model_registry.resolve(session, kind, ref)
        path = model_registry.cached_checkpoint(context.store, model, settings.data_dir)
    finally:
        context.close()
    return ModelSource.registered(model, path)


def registry_session(settings):
    """A unit of work on the registry (commits on success)."""
    import contextlib

    from shared.context import AppContext
    from shared.db import session_scope

    @contextlib.contextmanager
    def scope():
        context = AppContext(settings)
        try:
            with session_scope(context.session_factory) as session:
                yield session
        finally:
            context.close()

    return scope()
