"""Checkpoints into service: install one into ``MODEL_DIR``, register one in the model registry
(docs/MODELS.md), or fetch a registered one for ``evaluate``, each only after proving the file
loads into the network it claims to be; and store an evaluation against the registered models it
evaluated (issue 24).

``dermasentinel models`` (cli/main.py) and ``evaluate`` (training/cli.py) call these; the
registry's SQL is ``shared.model_registry``'s. Torch is imported only where a checkpoint is
loaded, so listing or activating models stays light.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import model_registry
from shared.config import Settings
from shared.context import AppContext
from shared.db import session_scope
from shared.model_registry import ModelCard, RegisteredModel
from shared.schemas.analyses import ModelInfo
from shared.schemas.monitoring import Reference

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.schemas.evaluation import EvaluationReport
    from worker.pipeline.model_set import ModelSource
    from worker.pipeline.networks import CheckpointInfo

CARD_SUFFIX = ".card.json"


def check_checkpoint(checkpoint: Path, kind: str) -> CheckpointInfo:
    """Load CHECKPOINT into a fresh model of ``kind``, raising (with the keys named) if it does
    not fit; its sha256, version and embedded card come back."""
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


def find_card(checkpoint: Path, card_path: Path | None, embedded: dict[str, Any] | None) -> dict[str, Any] | None:
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


def register_checkpoint(settings: Settings, checkpoint: Path, kind: str, *, card_path: Path | None = None,
                        version: str | None = None, activate: bool = False) -> tuple[RegisteredModel, bool]:
    """Prove CHECKPOINT loads, store it in the object store and add it to the registry as a
    candidate (or the active model with ``activate``). The version is ``version``, else the
    card's, else the one training wrote into the checkpoint, else the registry's next
    ``<kind>-N``. Returns (the registered model, whether it was new)."""
    info = check_checkpoint(checkpoint, kind)
    card = find_card(checkpoint, card_path, info.card)
    named = version or ModelCard.of(card).version or (None if info.version.startswith("sha256-") else info.version)
    context = AppContext(settings)
    try:
        context.store.ensure_buckets()
        with session_scope(context.session_factory) as session:
            row, created = model_registry.register(
                session, context.store, kind=kind, data=checkpoint.read_bytes(), sha256=info.sha256,
                version=named, card=card,
            )
            if activate:
                model_registry.activate(session, kind, str(row.id))
            return model_registry.describe(row), created
    finally:
        context.close()


def registered_source(settings: Settings, kind: str, ref: str) -> ModelSource:
    """A registered model (``active``, a version, an id or a sha256 prefix) as the
    ``ModelSource`` workers build from it: its checkpoint fetched into DATA_DIR/models and
    checked against its sha256, with its version, card and operating point."""
    from worker.pipeline.model_set import ModelSource

    context = AppContext(settings)
    try:
        with context.session_factory() as session:
            model = model_registry.resolve(session, kind, ref)
        path = model_registry.cached_checkpoint(context.store, model, settings.data_dir)
    finally:
        context.close()
    return ModelSource.registered(model, path)


def store_evaluation(settings: Settings, report: EvaluationReport, kinds: tuple[str, ...]) -> list[tuple[str, str]]:
    """Store ``report`` against each registered model of ``kinds`` it evaluated (issue 24), with
    an audit row per model on the system chain (``model.evaluate``). Returns (kind, version)
    of each. The model card of each shows it from now on."""
    from shared import audit

    stored: list[tuple[str, str]] = []
    context = AppContext(settings)
    try:
        with session_scope(context.session_factory) as session:
            for kind in kinds:
                checkpoint = getattr(report.model, kind, None) if report.model is not None else None
                if checkpoint is None or checkpoint.registry_id is None:
                    raise model_registry.NotStorable(f"the report names no registered {kind} model")
                kept = model_registry.store_evaluation(session, checkpoint.registry_id, report)
                row = model_registry.get_model(session, checkpoint.registry_id)
                assert row is not None  # store_evaluation found it
                auc = report.overall.metrics.get("auc") if report.overall is not None else None
                audit.append(session, audit.AuditEntry(
                    None, audit.operator_actor(), "model.evaluate", "model", str(row.id),
                    detail={"kind": kind, "version": row.version,
                            "evaluation_set": {"name": kept.evaluation_set.name, "sha256": kept.evaluation_set.sha256},
                            "images": report.images, "evaluated": report.evaluated,
                            "auc": None if auc is None or auc.value is None else round(auc.value, 4)},
                ))
                stored.append((kind, row.version))
    finally:
        context.close()
    return stored


@contextlib.contextmanager
def registry_session(settings: Settings) -> Iterator[Session]:
    """A unit of work on the registry: committed when the block ends without an error."""
    context = AppContext(settings)
    try:
        with session_scope(context.session_factory) as session:
            yield session
    finally:
        context.close()


def record_reference(settings: Settings, model: ModelInfo, reference: Reference) -> str:
    """Store ``reference`` as the monitoring reference of the evaluated model (issue 24), keyed
    by the version its results name (``model.version``): a registered model, a MODEL_DIR
    checkpoint or seeded untrained weights alike. Returns that version."""
    from shared.monitoring import record_reference as store

    version = model.version or (model.fusion.version if model.fusion is not None else None)
    if not version:
        raise ValueError("the evaluated model names no version; its reference cannot be recorded")
    sha256 = model.fusion.sha256 if model.fusion is not None else None
    with registry_session(settings) as session:
        store(session, version, reference, sha256)
    return version
