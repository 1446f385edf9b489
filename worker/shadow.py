"""The shadow lane of a GPU worker process (issue 24; docs/MODELS.md).

After a pass's results are stored (``worker/analysis.py``, the finish lane), the jobs that the
open shadow's hash selects are *offered* here. The lane takes them only when the GPU lane is
not behind, and then runs the candidate on them on its own thread, one image at a time, checking
again before each image and dropping the rest as soon as jobs wait. So a shadow never delays or
changes a stored result: it starts after the result is written, and yields when real work comes.

"Behind" (``lane_behind``): the pass came full (a backlog), more than ``SHADOW_MAX_QUEUED`` jobs
are claimable, or this process's shadow lane is still busy with an earlier offer.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from shared import model_rollout
from shared.clock import utcnow
from shared.context import AppContext
from shared.db import session_scope
from shared.lifecycle import Claim, claimable
from shared.model_rollout import Said
from shared.storage import IMAGES
from shared.tables import Analysis

if TYPE_CHECKING:
    from worker.model_switch import Arm
    from worker.pipeline.pipeline import Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowJob:
    claim: Claim
    active: Said  # what the active model said (already stored)


def said(outcome: Outcome, version: str | None) -> Said | None:
    """A pipeline outcome as the shadow comparison keeps it (None for an item error)."""
    from worker.pipeline.pipeline import Finding, Rejection

    if isinstance(outcome, Finding):
        result = outcome.result
        return Said(version, "succeeded", float(result.probability),
                    str(result.disposition) if result.disposition is not None else None, None,
                    result.equity.skin_group)
    if isinstance(outcome, Rejection):
        return Said(version, "rejected", rejection=outcome.code)
    return None


def lane_behind(context: AppContext) -> bool:
    """More than ``SHADOW_MAX_QUEUED`` jobs are waiting to be claimed (read with a LIMIT)."""
    limit = context.settings.shadow_max_queued
    with context.session_factory() as session:
        waiting = session.scalar(select(func.count()).select_from(
            select(Analysis.id).where(claimable(utcnow())).limit(limit + 1).subquery()))
    return int(waiting or 0) > limit


class ShadowLane:
    """One thread per process; at most one offer running, none queued behind it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._busy = False
        self.skipped = 0  # jobs not shadowed because the lane was behind (tests, logs)
        self.stored = 0

    def offer(self, context: AppContext, arm: Arm, jobs: list[ShadowJob], *, backlog: bool) -> bool:
        """Run the shadow on ``jobs`` later, unless the GPU lane is behind. Returns whether taken."""
        if not jobs:
            return False
        with self._lock:
            if self._busy or backlog:
                self.skipped += len(jobs)
                return False
            self._busy = True
        try:
            behind = lane_behind(context)
        except Exception as exc:  # the shadow is optional: a failed look means no shadow now
            log.warning("shadow: could not read the queue (%s); skipped", type(exc).__name__)
            behind = True
        if behind:
            with self._lock:
                self._busy = False
                self.skipped += len(jobs)
            return False
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="engine-shadow")
            self._executor.submit(self._run, context, arm, jobs)
        return True

    def idle(self) -> bool:
        with self._lock:
            return not self._busy

    def _run(self, context: AppContext, arm: Arm, jobs: list[ShadowJob]) -> None:
        _lowest_priority()
        try:
            for n, job in enumerate(jobs):
                if n and lane_behind(context):
                    with self._lock:
                        self.skipped += len(jobs) - n
                    log.info("shadow: the GPU lane has work waiting; %d shadow run(s) dropped", len(jobs) - n)
                    return
                if run_one(context, arm, job):
                    with self._lock:
                        self.stored += 1
        except Exception:  # a shadow failure never touches the stored results
            log.exception("shadow: run of %s failed", arm.version)
        finally:
            with self._lock:
                self._busy = False


def _lowest_priority() -> None:
    """The shadow thread's own CPU work (decode, pre- and post-processing, whatever of the
    networks runs on the calling thread) yields to the active model's: nice 19 on Linux, where
    a thread has its own nice value. Elsewhere, or when refused, nothing changes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


def run_one(context: AppContext, arm: Arm, job: ShadowJob) -> bool:
    """Run the shadow's pipeline on one stored analysis' image and keep its outcome beside the
    active model's. Returns whether a shadow output was stored."""
    from worker.pipeline.pipeline import LesionInput

    claim = job.claim
    image = context.store.get(IMAGES, claim.image_key)
    (outcome,) = arm.pipeline.run([LesionInput(image=image, age=claim.age, sex=claim.sex, site=claim.site,
                                               pixel_spacing_mm=claim.pixel_spacing_mm)])
    shadow = said(outcome, arm.version) or Said(arm.version, "failed")
    try:
        with session_scope(context.session_factory) as session:
            return model_rollout.store_shadow_output(session, analysis_id=claim.analysis_id,
                                                     tenant_id=claim.tenant_id, model_id=arm.model_id,
                                                     shadow=shadow, active=job.active)
    except IntegrityError:  # the analysis was erased meanwhile
        return False


_LANE: ShadowLane | None = None
_LANE_LOCK = threading.Lock()


def shadow_lane() -> ShadowLane:
    """The process's shadow lane (made on first use)."""
    global _LANE
    with _LANE_LOCK:
        if _LANE is None:
            _LANE = ShadowLane()
        return _LANE


def shadow_jobs(arm: Arm, recorded: list[tuple[Claim, Outcome, int]], version: str | None) -> list[ShadowJob]:
    """The stored outcomes (not fenced off, not failed) whose analysis the shadow's hash selects."""
    jobs = []
    for claim, outcome, written in recorded:
        if not written or not model_rollout.selected(claim.analysis_id, arm.fraction, model_rollout.SHADOW):
            continue
        active = said(outcome, version)
        if active is not None:
            jobs.append(ShadowJob(claim, active))
    return jobs

