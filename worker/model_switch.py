"""Switching a GPU worker to newly activated models without a restart (docs/MODELS.md).

When the engine (``worker/analysis.py``) loads a batch, it asks the process's ``ModelSwitch``
for the pipeline to run it on. The switch reads the registry's active versions (at most every
``MODEL_CHECK_SECONDS``) and, if they changed, builds a pipeline on the new checkpoints; each
batch runs start to finish on the pipeline it was loaded with, and its results record that
pipeline's models. Kept apart from the lanes so that how models change and how batches flow
can each be read (and changed) alone.

Issue 24: the switch also reads the open shadow and canary of the Fusion model
(``shared.model_rollout``) and builds a pipeline for each (the active models with that Fusion
checkpoint instead): ``routing()`` hands out all three. A rollout whose checkpoint cannot be
built is left out (logged); the active models keep serving.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from shared import model_registry, model_rollout
from shared.context import AppContext
from shared.db import session_scope
from shared.memory import release_freed_memory
from shared.model_registry import ActiveModel

if TYPE_CHECKING:  # the pipeline imports torch: loaded only where it runs
    from worker.pipeline.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    """A canary or shadow: its pipeline, its rollout and the share of jobs it takes."""

    pipeline: Pipeline
    rollout_id: uuid.UUID
    model_id: uuid.UUID
    version: str
    fraction: float


@dataclass(frozen=True)
class Routing:
    """What a pass runs on: the active models, and the open canary and shadow if any."""

    main: Pipeline
    canary: Arm | None = None
    shadow: Arm | None = None


class ModelSwitch:
    """Keeps one process's pipeline on the model registry's active versions.

    ``base`` is the pipeline the process started with (``MODEL_DIR`` checkpoints, or seeded
    untrained weights): it serves whenever no model is active, and lends its options, device
    and backend to the pipelines built for active models. Checkpoints are fetched from the
    object store once and cached under ``DATA_DIR/models`` by sha256.
    """

    def __init__(self, context: AppContext, base: Pipeline) -> None:
        self.context = context
        self._base = weakref.ref(base)  # kept alive by its owner (the runtime, a test)
        self.current = base
        self.routed = Routing(base)
        self.active_key: tuple[tuple[str, str], ...] = ()
        self.checked_at = float("-inf")
        self.last_switch_seconds: float | None = None
        self._lock = threading.Lock()

    def pipeline(self) -> Pipeline:
        """The pipeline for the next pass (switched first, if the active models changed)."""
        return self.routing().main

    def routing(self) -> Routing:
        """The pipelines for the next pass: the active models', and the open canary's and
        shadow's (switched first, if the active models or the rollouts changed)."""
        with self._lock:
            interval = self.context.settings.model_check_seconds
            if time.monotonic() - self.checked_at < interval:
                return self.routed
            self.checked_at = time.monotonic()
            try:
                with session_scope(self.context.session_factory) as session:
                    active = model_registry.active_models(session)
                    rollouts = model_rollout.open_for_workers(session)
            except Exception as exc:  # the database is away: keep serving the models held
                log.warning("models: could not read the active versions (%s); keeping the current ones",
                            type(exc).__name__)
                return self.routed
            key = tuple(sorted((kind, str(model.id)) for kind, model in active.items()))
            switched = key != self.active_key
            if switched:
                started = time.perf_counter()
                try:
                    pipeline = self._build(active) if active else self._base_pipeline()
                except Exception:  # a broken checkpoint must not stop the worker: keep the old models
                    log.exception("models: could not switch to %s; keeping the current ones", _names(active))
                    return self.routed
                self.current, self.active_key = pipeline, key
                self.last_switch_seconds = time.perf_counter() - started
                log.info("models: switched to %s in %.2f s (download, load, backend build)",
                         _names(active) or "the built-in models", self.last_switch_seconds)
            self.routed = Routing(
                self.current,
                canary=self._arm(rollouts.get(model_rollout.CANARY), active, self.routed.canary, switched),
                shadow=self._arm(rollouts.get(model_rollout.SHADOW), active, self.routed.shadow, switched),
            )
            return self.routed

    def _arm(self, rollout: model_rollout.OpenRollout | None, active: dict[str, ActiveModel], held: Arm | None,
             switched: bool) -> Arm | None:
        """The pipeline of an open rollout: the one held when nothing but its share changed."""
        if rollout is None:
            return None
        if held is not None and not switched and held.rollout_id == rollout.id:
            return replace(held, fraction=rollout.fraction)
        try:
            pipeline = self._build({**active, rollout.model.kind: rollout.model})
        except Exception:  # a broken candidate must not stop the active models
            log.exception("models: could not build the %s of %s %s; left out", rollout.mode, rollout.model.kind,
                          rollout.model.version)
            return None
        log.info("models: %s of %s %s on %.0f%% of jobs", rollout.mode, rollout.model.kind, rollout.model.version,
                 rollout.fraction * 100)
        return Arm(pipeline, rollout.id, rollout.model.id, rollout.model.version, rollout.fraction)

    def _base_pipeline(self) -> Pipeline:
        base = self._base()
        if base is None:  # its owner let it go: this switch serves a pipeline no longer in use
            raise RuntimeError("the base pipeline of this model switch is gone")
        return base

    def _build(self, active: dict[str, ActiveModel]) -> Pipeline:
        from worker.pipeline.model_set import ModelSet, ModelSource
        from worker.pipeline.pipeline import Pipeline

        base = self._base_pipeline()
        settings = self.context.settings

        def source(kind: str) -> ModelSource | None:
            """The active model of ``kind``, its checkpoint fetched once into DATA_DIR/models."""
            model = active.get(kind)
            if model is None:
                return None
            return ModelSource.registered(
                model, model_registry.cached_checkpoint(self.context.store, model, settings.data_dir)
            )

        registry = ModelSet.load(
            settings.model_dir,
            device=str(base.registry.device),
            segmenter=settings.segmenter,
            seed=base.registry.fusion_seed if base.registry.fusion_seed is not None else settings.fusion_seed,
            backend=base.registry.backend,
            scalpel_source=source("scalpel"),
            fusion_source=source("fusion"),
            ir_cache_dir=base.options.ir_cache_dir,
        )
        pipeline = Pipeline(registry, base.options)
        release_freed_memory()
        return pipeline


_switches: weakref.WeakKeyDictionary[Pipeline, ModelSwitch] = weakref.WeakKeyDictionary()
_switches_lock = threading.Lock()


def model_switch(context: AppContext, base: Pipeline) -> ModelSwitch:
    """The process's switch for the pipeline it started with (one per base pipeline)."""
    with _switches_lock:
        switch = _switches.get(base)
        if switch is None:
            switch = _switches[base] = ModelSwitch(context, base)
        return switch


def _names(active: dict[str, ActiveModel]) -> str:
    return ", ".join(f"{kind} {model.version}" for kind, model in sorted(active.items()))
