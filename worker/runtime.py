"""Per-process handles for worker processes: built once, on first use or at process init."""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from typing import TYPE_CHECKING

from shared.config import Settings, get_settings
from shared.context import AppContext
from shared.memory import keep_freed_memory_for_reuse, release_freed_memory

if TYPE_CHECKING:  # imported where used: the pipeline brings torch, which CPU and IO workers never load
    from worker.delivery import DeliveryClient
    from worker.pipeline.pipeline import Pipeline

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = AppContext(settings)
        self._lock = threading.Lock()

    @cached_property
    def delivery_client(self) -> DeliveryClient:
        from worker.delivery import DeliveryClient

        # One pinned client per process keeps connections to busy receivers open.
        return DeliveryClient()

    @cached_property
    def pipeline(self) -> Pipeline:
        # The pipeline is imported here, never at module import, so CPU/IO workers stay light;
        # with OpenVINO and its IR cached, the analysis worker never imports torch either (issue 27).
        import cv2

        from worker.pipeline.model_set import ModelSet, resolve_device
        from worker.pipeline.pipeline import Pipeline, PipelineOptions

        with self._lock:
            settings = self.settings
            options = PipelineOptions.from_settings(settings, resolve_device(settings.device).type)
            registry = ModelSet.load(
                settings.model_dir,
                device=settings.device,
                segmenter=settings.segmenter,
                seed=settings.fusion_seed,
                backend=settings.backend,
                ir_cache_dir=options.ir_cache_dir,
            )
            pipeline = Pipeline(registry, options)
            # The host work runs one image per HOST_THREADS lane beside the networks' own threads;
            # OpenCV's pool under each lane only oversubscribes the cores: on 2 cores it spent
            # 20-90 % more CPU on the overlay and the blur score for no shorter wall time (issue 27,
            # round 8). One thread per OpenCV call, in this process only.
            cv2.setNumThreads(1)
            # Each image allocates the same full-size buffers: they are reused from the heap,
            # not faulted in and zeroed again by the kernel per image (issue 27, round 9); the
            # engine trims the heap once its passes pause (worker/after_passes.py, trim_soon).
            keep_freed_memory_for_reuse()
            del registry  # with OpenVINO the torch copies of the weights are now garbage
            release_freed_memory()
            log.info("models loaded: %s", pipeline.registry.provenance().model_dump(mode="json", exclude_unset=True))
            return pipeline


_runtime: WorkerRuntime | None = None


def runtime() -> WorkerRuntime:
    global _runtime
    if _runtime is None:
        _runtime = WorkerRuntime(get_settings())
    return _runtime


def reset_after_fork() -> None:
    """Connections must not be shared across fork: each child builds its own."""
    global _runtime
    _runtime = None
