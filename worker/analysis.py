"""Running claimed analyses through the pipeline and recording their outcomes.

Plain functions: the Celery task calls ``run_analysis``, and so do the tests.

The worker is an engine with three overlapping lanes (docs/ENGINE.md): while batch k is on
the networks (this thread), batch k+1 is claimed, fetched from S3 and decoded (the prefetch
lane) and batch k-1 is post-processed (ABCD, ITA, artifacts) and written (the finish lane).
Each lane spreads its per-image work over a small thread pool; decoding, OpenCV, NumPy, S3
and Postgres calls release the GIL. Claims and fencing are ``shared.lifecycle``'s, unchanged:
every outcome is written with its claim's attempt, so a fenced-off job writes nothing.

Issue 26: a pass claimed ahead that holds an interactive job does not wait for the bulk pass
on the networks: between that pass's images (``Pipeline.infer``'s ``between``) the engine runs
it, hands it to a finish lane of its own (``engine-finish-interactive``, so its writes do not
queue behind a bulk pass's), claims the next pass ahead in its place, and resumes the bulk pass.

Each batch is loaded on the pipeline the process's ``ModelSwitch`` hands out
(``worker/model_switch.py``: the registry's active models, switched without a restart), runs
start to finish on it, and its results record that pipeline's models.

Issue 24 (docs/MODELS.md): with a canary open, the claims whose analysis id hashes into its
share run as a second part of the same pass on the canary's pipeline, and their results record
the canary (``model.rollout``); with a shadow open, after a pass's results are stored, the ones
its hash selects are offered to the process's shadow lane (``worker/shadow.py``), which runs
the candidate only while the GPU lane is not behind.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minio.error import S3Error
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared import clinical, drift, lifecycle, model_rollout, tenant_data, tracing, vlm
from shared.clock import iso, utcnow
from shared.config import Settings
from shared.context import AppContext
from shared.db import session_scope
from shared.jobs import JobNotRun, sends_together
from shared.lifecycle import Claim
from shared.logs import current_request_id, log_context
from shared.metrics import ANALYSES_FINISHED, StageClock, observe_pass, observe_result_times, observe_stage
from shared.schemas.analyses import (
    AnalysisInputsOut,
    AnalysisRecord,
    AnalysisResult,
    ImageInfo,
    ModelCaption,
    ModelInfo,
)
from shared.storage import ARTIFACTS, IMAGES, artifact_key
from shared.tables import AnalysisStatus
from worker.after_passes import AFTER_PASSES, ReportsLater, trim_soon
from worker.model_switch import Arm, model_switch
from worker.reporting.scribe import build_scribe_note
from worker.shadow import shadow_jobs, shadow_lane

if TYPE_CHECKING:  # the pipeline imports torch: loaded only where it runs
    from worker.pipeline.pipeline import Finding, Outcome, Pipeline, PreparedBatch

log = logging.getLogger(__name__)

# One task keeps claiming follow-up batches for at most this long, well inside the task's
# soft time limit (900 s), so a long backlog is served by a warm pipeline but no task
# runs unbounded.
DRAIN_SECONDS = 120.0
MASK_NAME, MASK_TYPE = "mask.png", "image/png"
# The stage after the networks (``shared.schemas.Stage``): findings, overlay and result written.
STAGE_REPORTING = "reporting"
# Which tenants are in safety mode (issue 24): read per tenant at most every SAFETY_MODE_CACHE_SECONDS.
_SAFETY_MODE = drift.SafetyModeCache()
OVERLAY_NAME, OVERLAY_TYPE = "overlay.jpg", "image/jpeg"
# Issue 27: a claim moves its jobs to the first stage (``segmentation``) with a fresh heartbeat;
# a pass that reaches that stage within this many seconds of its claim does not write it again.
FRESH_CLAIM_SECONDS = 1.0


@dataclass
class _Batch:
    claims: list[Claim]
    prepared: PreparedBatch | None = None  # the pipeline's prepared inputs
    pipeline: Pipeline | None = None  # the pipeline that prepared it, and runs and records it
    error: Exception | None = None
    finished_early: int = 0  # jobs recorded while loading (their image was gone)
    load_s: float = 0.0  # seconds: fetch + prepare, networks, post-process + write
    infer_s: float = 0.0
    # Issue 25: (stage, start, end) in epoch ns, the pass's stages as each job's trace shows them.
    marks: list[tuple[str, int, int]] = field(default_factory=list)
    rollout: str | None = None  # "canary" for the part of a pass that runs on the canary
    canary: _Batch | None = None  # the claims the canary's hash chose, run as a second part
    shadow: Arm | None = None  # the open shadow when the pass was loaded
    backlog: bool = False  # the pass came full: the shadow lane is behind
    claimed: float = field(default_factory=time.monotonic)  # when its claims were made (about)

    @property
    def parts(self) -> list[_Batch]:
        return [self] + ([self.canary] if self.canary is not None else [])

    @property
    def all_claims(self) -> list[Claim]:
        return [claim for part in self.parts for claim in part.claims]


def run_analysis(context: AppContext, pipeline: Pipeline, analysis_id: uuid.UUID) -> int:
    """Claim this job (and the most urgent others, up to the batch size), run them, and while
    batches come full (a backlog) keep claiming and running the next ones (up to
    DRAIN_SECONDS), with fetch/decode and post-process/write overlapped with the networks.
    Returns how many jobs this call finished. A message for a job this process has itself
    recorded final (a pass claims up to ``GPU_BATCH_SIZE`` jobs, and a drain many more, each
    with a message of its own still queued) returns at once, with no database statement."""
    if analysis_id in _FINISHED_HERE:
        return 0
    settings = context.settings
    with session_scope(context.session_factory) as session:
        claims = lifecycle.claim_batch(
            session, analysis_id, settings.gpu_batch_size, celery=context.celery, settings=settings
        )
    if not claims:
        return 0
    threads = settings.host_threads
    with (
        ThreadPoolExecutor(threads, thread_name_prefix="engine-host") as host,
        ThreadPoolExecutor(1, thread_name_prefix="engine-prefetch") as prefetch_lane,
        ThreadPoolExecutor(1, thread_name_prefix="engine-finish") as finish_lane,
        ThreadPoolExecutor(1, thread_name_prefix="engine-finish-interactive") as interactive_lane,
    ):
        engine = _Engine(context, pipeline, analysis_id, host)
        with AFTER_PASSES.passes():
            return engine.drain(claims, prefetch_lane, finish_lane, interactive_lane)


class _Engine:
    def __init__(
        self, context: AppContext, pipeline: Pipeline, analysis_id: uuid.UUID, host: ThreadPoolExecutor
    ) -> None:
        self.context = context
        self.pipeline = pipeline
        self.analysis_id = analysis_id
        self.host = host
        self.switch = model_switch(context, pipeline)
        self.fill_seconds = (_fill_ms(context.settings, pipeline)) / 1000.0
        self.request_id = current_request_id()  # the task's own; pool threads do not inherit it

    def drain(
        self, first: list[Claim], prefetch_lane: ThreadPoolExecutor, finish_lane: ThreadPoolExecutor,
        interactive_lane: ThreadPoolExecutor | None = None,
    ) -> int:
        """Run ``first`` and, while passes come full, the passes claimed ahead of it. Issue 26:
        between the images of a pass without interactive jobs, the pass claimed ahead runs
        first if it holds one (``_preempt``), and a pass holding interactive jobs is finished on
        ``interactive_lane``, not behind the bulk passes' post-processing and writes."""
        self._deadline = time.monotonic() + DRAIN_SECONDS
        self._prefetch_lane = prefetch_lane
        self._lanes = (finish_lane, interactive_lane or finish_lane)
        self._upcoming: Future[_Batch] = prefetch_lane.submit(self._load, _Batch(first))
        self._writes: list[tuple[list[Claim], Future[int]]] = []
        self._failure: Exception | None = None
        self._finished = 0
        self._preempted_s = 0.0  # seconds of the current pass spent on the passes that preempted it
        while self._failure is None:
            try:
                batch = self._upcoming.result()
            except Exception as exc:  # claiming failed: nothing was claimed
                self._failure = exc
                break
            self._finished += sum(part.finished_early for part in batch.parts)
            if batch.error is not None:  # already released by the prefetch lane
                self._failure = batch.error
                break
            if not batch.all_claims:
                break
            # Claim ahead only while there is a backlog (this batch came full): a light queue is
            # served message by message as before, and rows held queued elsewhere are not raced.
            backlog = batch.backlog = len(batch.all_claims) >= self.context.settings.gpu_batch_size
            self._upcoming = prefetch_lane.submit(
                self._claim_and_load, backlog and time.monotonic() < self._deadline
            )
            self._run(batch, between=None if _holds_interactive(batch.all_claims) else self._preempt)
        finished = self._finished
        failure = self._failure
        for claims, write in self._writes:
            try:
                finished += write.result()
            except Exception as exc:  # a failed write: its unrecorded jobs go back (fenced)
                release(self.context, claims, exc)
                failure = failure or exc
        if failure is not None:
            raise failure
        return finished

    def _run(self, batch: _Batch, between: Callable[[], None] | None) -> None:
        """One pass on the networks (both parts), then handed to its finish lane. A failure
        gives its claims back, and the pass claimed ahead too, and ends the drain."""
        lane = self._lane(batch.all_claims)
        started = time.perf_counter()
        self._preempted_s = 0.0
        clock = StageClock({"segmentation": "gate1", "classification": "gate2"})  # metrics
        stage_marks = _StageMarks(clock.names)  # traces (issue 25)

        def on_stage(stage: str) -> None:
            clock(stage)
            stage_marks(stage)
            self._stage(lane, batch, stage)

        try:
            if batch.claims:
                assert batch.pipeline is not None and batch.prepared is not None  # a loaded batch with claims
                batch.pipeline.infer(batch.prepared, on_stage=on_stage, between=between)
            clock.stop()
            batch.marks += stage_marks.stop()
            observe_pass(len(batch.all_claims), self.context.settings.gpu_batch_size)
        except Exception as exc:
            release(self.context, batch.all_claims, exc)
            self._give_back(exc)
            self._failure = self._failure or exc
            return
        if batch.canary is not None:
            self._infer_canary(batch, lane, between)
        batch.infer_s = time.perf_counter() - started - self._preempted_s
        self._writes.append((batch.all_claims, lane.submit(self._finish, batch)))

    def _preempt(self) -> None:
        """Issue 26: called between the forward passes of a pass without interactive jobs. If
        the pass claimed ahead is loaded and holds an interactive job, it runs now and goes to
        its finish lane, the next pass is claimed ahead in its place, and the current pass
        resumes. The worker holds both passes' claims; each outcome is written with its own
        claim's attempt, as always."""
        upcoming = self._upcoming
        if self._failure is not None or not upcoming.done() or upcoming.exception() is not None:
            return  # a failed claim is the main loop's to see
        ahead = upcoming.result()
        if ahead.error is not None or not _holds_interactive(ahead.all_claims):
            return
        started = time.perf_counter()
        self._finished += sum(part.finished_early for part in ahead.parts)
        ahead.backlog = True  # it interrupted a full pass: the lane is behind (no shadow runs now)
        self._upcoming = _nothing_ahead()
        preempted_s = self._preempted_s
        self._run(ahead, between=None)
        self._preempted_s = preempted_s + time.perf_counter() - started
        if self._failure is None:
            # The next pass is claimed ahead only now, so that loading it does not compete with
            # the interactive pass for the cores; the rest of the bulk pass leaves it the time.
            self._upcoming = self._prefetch_lane.submit(self._claim_and_load, time.monotonic() < self._deadline)
        log.info("engine: an interactive pass of %d job(s) ran between the images of a bulk pass (%.3fs)",
                 len(ahead.all_claims), time.perf_counter() - started)

    def _lane(self, claims: list[Claim]) -> ThreadPoolExecutor:
        """Where a pass is finished: passes holding interactive jobs on their own lane."""
        finish_lane, interactive_lane = self._lanes
        return interactive_lane if _holds_interactive(claims) else finish_lane

    def _host_map(self, claims: list[Claim]) -> Callable[..., Iterator[Any]]:
        """Host work of a pass holding interactive jobs (a few images) runs on its lane's own
        thread: in the shared pool it would queue behind a bulk pass's images (issue 26)."""
        return map if _holds_interactive(claims) else self.host.map

    def _infer_canary(
        self, batch: _Batch, finish_lane: ThreadPoolExecutor, between: Callable[[], None] | None = None
    ) -> None:
        """The canary's part of the pass. Its failure is its own: those jobs go back (an attempt
        spent, like any failed pass), the active models' part is recorded as usual."""
        part = batch.canary
        assert part is not None and part.pipeline is not None and part.prepared is not None
        marks = _StageMarks({"segmentation": "gate1", "classification": "gate2"})  # traces (issue 25)

        def on_stage(stage: str) -> None:
            marks(stage)
            self._stage(finish_lane, part, stage)

        try:
            part.pipeline.infer(part.prepared, on_stage=on_stage, between=between)
            part.marks += marks.stop()
        except Exception as exc:
            log.warning("canary pass of %d job(s) failed (%s)", len(part.claims), type(exc).__name__)
            release(self.context, part.claims, exc)
            batch.canary = None

    def _give_back(self, exc: Exception) -> None:
        """The batch claimed ahead goes back to the queue after a failure of the one before."""
        upcoming, self._upcoming = self._upcoming, _nothing_ahead()
        try:
            ahead = upcoming.result()
        except Exception:  # its claim failed: nothing to give back
            return
        if ahead.all_claims and ahead.error is None:
            # They never ran: giving them back spends no attempt, whatever the failure was.
            release(self.context, ahead.all_claims, JobNotRun(f"the pass before failed: {type(exc).__name__}"))

    def _claim_and_load(self, keep_going: bool) -> _Batch:
        if not keep_going:
            return _Batch([])
        limit = self.context.settings.gpu_batch_size
        claims = self._claim(limit)
        if claims and len(claims) < limit and self.fill_seconds > 0:
            # Batch fill window (like Triton's max_queue_delay): a moment for more jobs to land.
            time.sleep(self.fill_seconds)
            claims += self._claim(limit - len(claims))
        return self._load(_Batch(claims))

    def _claim(self, limit: int) -> list[Claim]:
        with session_scope(self.context.session_factory) as session:
            return lifecycle.claim_batch(
                session, self.analysis_id, limit, celery=self.context.celery, settings=self.context.settings
            )

    def _load(self, batch: _Batch) -> _Batch:
        """Fetch the images and prepare them (decode, quality gate, network inputs); the claims
        the open canary's hash chooses go to a second part, prepared on the canary's pipeline."""
        if not batch.claims:
            return batch
        started = time.perf_counter()
        try:
            # Between passes: the models this batch runs on, switched first if the active
            # versions (or the rollouts) changed.
            routing = self.switch.routing()
            batch.shadow = routing.shadow
            canary = routing.canary
            if canary is not None:
                chosen = {c.analysis_id for c in batch.claims
                          if model_rollout.selected(c.analysis_id, canary.fraction, model_rollout.CANARY)}
                if chosen:
                    batch.canary = _Batch([c for c in batch.claims if c.analysis_id in chosen],
                                          rollout=model_rollout.CANARY)
                    batch.claims = [c for c in batch.claims if c.analysis_id not in chosen]
                    self._prepare(batch.canary, canary.pipeline)
            self._prepare(batch, routing.main)
            batch.load_s = time.perf_counter() - started
        except Exception as exc:  # handed to the network thread, which releases and re-raises
            batch.error = exc
            release(self.context, batch.all_claims, exc)
        return batch

    def _prepare(self, batch: _Batch, pipeline: Pipeline) -> None:
        from worker.pipeline.pipeline import LesionInput

        batch.pipeline = pipeline
        if not batch.claims:
            return
        started = time.perf_counter()
        started_ns = time.time_ns()
        # One image (or None) per claim, in order.
        hosted = self._host_map(batch.claims)
        images = list(hosted(self._fetch, batch.claims))
        # A job whose stored image is gone fails on its own; it must not take the rest
        # of the pass (and their attempts) down with it.
        missing = [c for c, data in zip(batch.claims, images, strict=True) if data is None]
        for claim in missing:
            self._record_outcome(claim, _MissingImage(), pipeline, batch.rollout, batch.marks)
        kept = [(c, data) for c, data in zip(batch.claims, images, strict=True) if data is not None]
        if missing:
            batch.claims = [c for c, _ in kept]
            batch.finished_early += len(missing)
            if not batch.claims:
                return
        fetched = time.perf_counter()
        observe_stage("fetch", fetched - started)
        fetched_ns = time.time_ns()
        batch.marks.append(("fetch", started_ns, fetched_ns))
        items = [
            LesionInput(image=data, age=c.age, sex=c.sex, site=c.site, pixel_spacing_mm=c.pixel_spacing_mm)
            for c, data in kept
        ]
        batch.prepared = pipeline.prepare(items, map=hosted)
        observe_stage("decode", time.perf_counter() - fetched)
        batch.marks.append(("decode", fetched_ns, time.time_ns()))

    def _fetch(self, claim: Claim) -> bytes | None:
        """The claim's stored image, or None when the store says it does not exist."""
        try:
            return self.context.store.get(IMAGES, claim.image_key)
        except S3Error as exc:
            if exc.code in MISSING_OBJECT_CODES:
                return None
            raise

    def _stage(self, finish_lane: ThreadPoolExecutor, part: _Batch, stage: str) -> None:
        # Off the network thread; fenced, so a late stage update after the outcome is a no-op.
        claims = part.claims
        if stage == lifecycle.FIRST_STAGE and time.monotonic() - part.claimed < FRESH_CLAIM_SECONDS:
            return  # the claim wrote this stage and a heartbeat a moment ago (issue 27)

        def write() -> None:
            with session_scope(self.context.session_factory) as session:
                lifecycle.set_stage(session, claims, stage)

        finish_lane.submit(write)

    def _finish(self, batch: _Batch) -> int:
        started = time.perf_counter()
        finished = 0
        recorded: list[tuple[Claim, Outcome, int]] = []
        for part in batch.parts:
            if not part.claims:
                continue
            written = self._finish_part(part)
            finished += sum(n for _, _, n in written)
            if part.rollout is None:
                recorded = written
        batch.prepared = None
        trim_soon()  # the batch's images and tensors, back to the OS (off the network thread), once passes pause
        log.info(
            "engine: %d jobs; fetch+prepare %.3fs, networks %.3fs, post-process+write %.3fs (overlapped)",
            len(batch.all_claims), batch.load_s, batch.infer_s, time.perf_counter() - started,
        )
        if batch.shadow is not None and batch.pipeline is not None:
            # Issue 24: only now, with the results stored, and only if the GPU lane is not behind.
            jobs = shadow_jobs(batch.shadow, recorded, batch.pipeline.registry.provenance().version)
            shadow_lane().offer(self.context, batch.shadow, jobs, backlog=batch.backlog)
        return finished

    def _finish_part(self, part: _Batch) -> list[tuple[Claim, Outcome, int]]:
        pipeline, prepared = part.pipeline, part.prepared
        assert pipeline is not None and prepared is not None  # only batches that ran get here
        # Live progress (issue 25): the jobs with a finding to write are now at their last stage.
        # On this lane, after the pass's earlier stage writes; one short transaction per pass. A
        # progress marker only, as those are: the outcome's own write below decides the pass.
        reporting = [part.claims[item.index] for item in prepared.items]
        if reporting:
            try:
                with session_scope(self.context.session_factory) as session:
                    lifecycle.set_stage(session, reporting, STAGE_REPORTING)
            except SQLAlchemyError as exc:
                log.warning("engine: the reporting stage was not recorded (%s)", type(exc).__name__)
        started = time.perf_counter()
        started_ns = time.time_ns()
        hosted = self._host_map(part.claims)
        outcomes = pipeline.complete(prepared, map=hosted)
        written = time.perf_counter()
        observe_stage("artifacts", written - started)
        part.marks.append(("artifacts", started_ns, time.time_ns()))

        def prepare(pair: tuple[Claim, Outcome]) -> _Write | Exception:
            try:
                return self._write_for(*pair, pipeline, part.rollout, part.marks)
            except Exception as exc:  # this job's own: the others are still written, then it is raised
                return exc

        # One outcome per claim, in order: a count mismatch is a pipeline bug, and recording
        # outcomes against the wrong claims would be worse than failing the pass.
        pairs = list(zip(part.claims, outcomes, strict=True))
        # Issue 26: interactive results are written ahead of the bulk ones they share a batch with.
        pairs.sort(key=lambda pair: pair[0].priority != "interactive")
        # Each job's artifacts are stored (on the pass's threads), then the pass's outcomes are
        # written in one transaction (issue 27), a savepoint per job (``record_outcomes``).
        prepared_writes = list(hosted(prepare, pairs))
        writes = [write for write in prepared_writes if isinstance(write, _Write)]
        counts = record_outcomes(self.context, writes)
        failed = next((exc for exc in prepared_writes if isinstance(exc, Exception)), None)
        if failed is not None:
            raise failed  # the pass's claims go back: fenced, so only the unwritten ones
        observe_stage("write", time.perf_counter() - written)
        part.prepared = None
        return [(claim, outcome, count) for (claim, outcome), count in zip(pairs, counts, strict=True)]

    def _record_outcome(
        self, claim: Claim, outcome: Outcome | _MissingImage, pipeline: Pipeline, rollout: str | None = None,
        marks: list[tuple[str, int, int]] | None = None,
    ) -> int:
        """One job's outcome, written on its own (a job whose image is gone)."""
        (count,) = record_outcomes(self.context, [self._write_for(claim, outcome, pipeline, rollout, marks)])
        return count

    def _write_for(
        self, claim: Claim, outcome: Outcome | _MissingImage, pipeline: Pipeline, rollout: str | None = None,
        marks: list[tuple[str, int, int]] | None = None,
    ) -> _Write:
        """The job's outcome ready to write: its artifacts stored, its row's columns built."""
        from worker.pipeline.pipeline import Finding, Rejection

        # Each outcome under its own ids; the request id only for the task's own analysis.
        request_id = self.request_id if claim.analysis_id == self.analysis_id else None
        provenance = pipeline.registry.provenance()
        if rollout is not None:  # issue 24: the result says a canary answered it
            provenance = provenance.model_copy(update={"rollout": rollout})
        write = _Write(claim, AnalysisStatus.failed, {"model": _stored(provenance)}, request_id=request_id,
                       marks=list(marks or []))
        with write.logged():
            if isinstance(outcome, Finding):
                _store_finding(self.context, write, outcome, provenance)
            elif isinstance(outcome, Rejection):
                write.status = AnalysisStatus.rejected
                write.columns["rejection"] = {"code": outcome.code, "detail": outcome.detail, "scores": outcome.scores}
            else:
                write.columns["error"] = {"code": outcome.code, "detail": outcome.detail}
        return write


MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "NoSuchBucket"})


class _FinishedHere:
    """The ids of the last ``size`` jobs this process recorded final. Issue 27: every job has
    its own Celery message, and a pass claims up to ``GPU_BATCH_SIZE`` of them (a drain many
    more), so most messages of a backlog arrive for jobs this process has already finished;
    each used to cost a transaction of four statements (its own row, its expiry, both lanes)
    to find nothing. A final status is never left again (only ``release_claim`` re-queues, and
    only a ``processing`` row of the releasing claim), so such a message needs no database.
    Every other queued job still has a message of its own (or the sweeper's), so skipping
    these does not leave one unserved. Bounded (oldest out first), process-local: a message
    for a job another process finished takes the database path as before."""

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._ids: OrderedDict[uuid.UUID, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, analysis_id: uuid.UUID) -> None:
        with self._lock:
            self._ids[analysis_id] = None
            if len(self._ids) > self.size:
                self._ids.popitem(last=False)

    def __contains__(self, analysis_id: object) -> bool:
        with self._lock:
            return analysis_id in self._ids


_FINISHED_HERE = _FinishedHere()


def _holds_interactive(claims: list[Claim]) -> bool:
    return any(claim.priority == "interactive" for claim in claims)


def _nothing_ahead() -> Future[_Batch]:
    ahead: Future[_Batch] = Future()
    ahead.set_result(_Batch([]))
    return ahead


# ---------------------------------------------------------------- traces (issue 25)

class _StageMarks:
    """The networks' stage notifications as (stage, start, end) marks in epoch ns."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.open: tuple[str, int] | None = None
        self.marks: list[tuple[str, int, int]] = []

    def __call__(self, stage: str) -> None:
        self.stop()
        self.open = (self.names.get(stage, stage), time.time_ns())

    def stop(self) -> list[tuple[str, int, int]]:
        if self.open is not None:
            self.marks.append((*self.open, time.time_ns()))
            self.open = None
        return self.marks


@contextmanager
def _job_trace(claim: Claim, marks: list[tuple[str, int, int]]) -> Iterator[None]:
    """One job's spans in the trace stored with it (``analyses.traceparent``): its queue wait,
    the pass's stages, and the recording of its outcome, which is current while the outcome
    and its event are written (so the event, and each delivery, continue this trace)."""
    attributes = {"dermasentinel.lane": claim.priority or "", "dermasentinel.attempt": claim.attempt}
    tracing.record_span("queue wait", parent=claim.traceparent, start=claim.created_at, end=claim.started_at,
                        attributes=attributes)
    with tracing.span("analysis", parent=claim.traceparent, start=claim.started_at, attributes=attributes):
        for stage, started, ended in marks:
            tracing.record_span(stage, start=started, end=ended)
        with tracing.span("record outcome"):
            yield


@dataclass(frozen=True)
class _MissingImage:
    code: str = "image_missing"
    detail: str = "the stored image no longer exists (deleted or purged); submit the image again"


def _fill_ms(settings: Settings, pipeline: Pipeline) -> float:
    if settings.batch_fill_ms is not None:
        return settings.batch_fill_ms
    return 5.0 if pipeline.registry.device.type == "cuda" else 0.0


def _store_finding(context: AppContext, write: _Write, finding: Finding, provenance: ModelInfo) -> None:
    """Store the finding's mask and overlay, and make ``write`` its ``succeeded`` outcome."""
    claim = write.claim
    mask_key = artifact_key(claim.tenant_id, claim.analysis_id, MASK_NAME)
    overlay_key = artifact_key(claim.tenant_id, claim.analysis_id, OVERLAY_NAME)
    context.store.put(ARTIFACTS, mask_key, finding.mask_png, MASK_TYPE)
    context.store.put(ARTIFACTS, overlay_key, finding.overlay_jpeg, OVERLAY_TYPE)
    write.artifacts = [(ARTIFACTS, mask_key), (ARTIFACTS, overlay_key)]
    result = finding.result
    if _SAFETY_MODE.active(context.session_factory, claim.tenant_id, context.settings.safety_mode_cache_seconds):
        # Issue 24: the tenant is in safety mode after a drift (docs/MONITORING.md).
        result = drift.under_safety_mode(result)
    record = _finished_record(claim, result, provenance)
    note = build_scribe_note(record, caption=_model_caption(context, claim))
    result = result.model_copy(update={"scribe_note": note})
    write.status = AnalysisStatus.succeeded
    write.columns.update(result=result.model_dump(mode="json", exclude={"uncertainty_level"}),
                         mask_key=mask_key, overlay_key=overlay_key)


def _stored(provenance: ModelInfo) -> dict[str, Any]:
    """The provenance as the row keeps it: what the model set recorded, nulls included (the API
    answers with these keys), without what readers derive (``banner``, ``shared.lifecycle``)."""
    return provenance.model_dump(mode="json", exclude_unset=True)


def _finished_record(claim: Claim, result: AnalysisResult, provenance: ModelInfo) -> AnalysisRecord:
    """The record the scribe note is written from, before the row is: the claim's inputs and
    this pass' result and provenance (the same types the stored row is read back as)."""
    return AnalysisRecord(
        id=claim.analysis_id,
        external_id=claim.external_id,
        batch_id=None,
        status=AnalysisStatus.succeeded.value,
        stage=None,
        priority="interactive",
        attempt=claim.attempt,
        created_at=iso(utcnow()),
        started_at=None,
        completed_at=None,
        inputs=AnalysisInputsOut(
            age=claim.age, sex=claim.sex, site=claim.site, pixel_spacing_mm=claim.pixel_spacing_mm
        ),
        image=ImageInfo(content_type=None, width=None, height=None, sha256=None),
        result=result.model_copy(update={"uncertainty_level": clinical.uncertainty_level(result.uncertainty)}),
        rejection=None,
        error=None,
        deadline_at=None,
        cancel_reason=None,
        weights=provenance.weights,
        model=provenance.model_copy(update={"banner": clinical.weights_banner(provenance.weights)}),
    )


def _model_caption(context: AppContext, claim: Claim) -> ModelCaption | None:
    """With ``VQA_MODEL_DIR``, a local vision-language model's caption for the scribe note,
    labelled as the model's (issue 15). Nothing when none is configured or it fails: the
    note never depends on it."""
    directory = context.settings.vqa_model_dir
    if directory is None:
        return None
    try:
        model = vlm.load(Path(directory))
        text = model.caption(context.store.get(IMAGES, claim.image_key))
    except Exception as exc:  # a broken model directory must not fail the analysis
        log.warning("vision-language caption failed: %s", type(exc).__name__)
        return None
    return ModelCaption(text=text, model=model.name, label=vlm.MODEL_LABEL)


@dataclass
class _Write:
    """One job's outcome ready to write: ``lifecycle.finish``'s columns, and the artifacts stored
    for it (removed again if its tenant was erased while the pass ran, issue 22)."""

    claim: Claim
    status: AnalysisStatus
    columns: dict[str, Any]
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    request_id: str | None = None
    marks: list[tuple[str, int, int]] = field(default_factory=list)  # the pass's stages (traces)

    def logged(self) -> AbstractContextManager[None]:
        return log_context(analysis_id=self.claim.analysis_id, tenant_id=self.claim.tenant_id,
                           request_id=self.request_id)


def record_outcomes(context: AppContext, writes: list[_Write]) -> list[int]:
    """Write a pass's outcomes (``lifecycle.finish_many``: each under its claim's fence, one
    UPDATE and one INSERT of their events for all of them) in one transaction. Should the
    database refuse that (one job's outcome it cannot store), each job is written again in a
    savepoint of its own: the job whose write fails is rolled back alone and the others still
    commit. Their wake-ups go out together once it commits, their report requests once the
    passes pause (``_reports_later``). Returns 1 per job written, 0 per
    job fenced off; a job's write error is raised after the others are written (the pass's
    claims are then given back: fenced, so only that job's is)."""
    recorded: list[tuple[_Write, bool]] = []
    failure: Exception | None = None
    with sends_together(later=_reports_later(context.settings)), session_scope(context.session_factory) as session:
        if len(writes) > 1:
            scopes = [_JobScope(write) for write in writes]
            try:
                with session.begin_nested():
                    written = lifecycle.finish_many(session, context.celery, context.settings, [
                        lifecycle.FinalOutcome(write.claim, write.status, write.columns, scope.context)
                        for write, scope in zip(writes, scopes, strict=True)
                    ])
                recorded = list(zip(writes, written, strict=True))
            except SQLAlchemyError as exc:
                log.warning("a pass's %d outcomes could not be written together (%s); writing each on its own",
                            len(writes), type(exc).__name__)
            finally:
                for scope in scopes:
                    scope.close()
        for write in writes if not recorded else []:
            with _recording(write):
                if len(writes) == 1:  # nothing else to protect: no savepoint
                    recorded.append((write, _finish(context, session, write)))
                    continue
                try:
                    with session.begin_nested():
                        recorded.append((write, _finish(context, session, write)))
                except SQLAlchemyError as exc:
                    log.warning("analysis %s: its outcome could not be written (%s); the pass's others are",
                                write.claim.analysis_id, type(exc).__name__)
                    failure = failure or exc
    counts = {id(write): int(done) for write, done in recorded}
    for write, done in recorded:
        with write.logged():
            _recorded(context, write, done)
    if failure is not None:
        raise failure
    return [counts[id(write)] for write in writes]


def _reports_later(settings: Settings) -> ReportsLater | None:
    """Issue 27: report requests wait for the passes to pause (``REPORT_HOLD_SECONDS``,
    ``worker/after_passes.py``), so while the lane is busy the next job's result comes first."""
    hold = settings.report_hold_limit
    return ReportsLater(hold) if hold > 0 else None


@contextmanager
def _recording(write: _Write) -> Iterator[None]:
    """While a job's outcome is written: its log ids, and its spans with "record outcome" current."""
    with write.logged(), _job_trace(write.claim, write.marks):
        yield


class _JobScope:
    """One job's log ids and trace spans (``_recording``: its "record outcome" span current)
    held open in a context of its own while a pass's outcomes are written together: what is
    done for the job in ``context`` (its event's trace, its wake-ups' log ids) is the job's, and
    its spans cover the write."""

    def __init__(self, write: _Write) -> None:
        self.context = contextvars.copy_context()
        self._held = ExitStack()

        self.context.run(self._held.enter_context, _recording(write))

    def close(self) -> None:
        self.context.run(self._held.close)


def _finish(context: AppContext, session: Session, write: _Write) -> bool:
    return lifecycle.finish(session, context.celery, context.settings, write.claim, status=write.status,
                            **write.columns)


def _recorded(context: AppContext, write: _Write, done: bool) -> None:
    """After the commit: the job's metrics and log line, or, fenced off, its artifacts' fate."""
    claim = write.claim
    if not done:
        log.info("analysis %s attempt %s was fenced off; outcome dropped", claim.analysis_id, claim.attempt)
        if write.artifacts:
            # Erased (its tenant deleted) while this pass ran: what it wrote goes too (issue 22).
            tenant_data.discard_if_erased(context, claim.analysis_id, write.artifacts)
        return
    _FINISHED_HERE.add(claim.analysis_id)
    ANALYSES_FINISHED.labels(write.status.value).inc()
    observe_result_times(claim.priority, (write.columns.get("model") or {}).get("version"), write.status.value,
                         claim.created_at, claim.started_at, utcnow())  # issue 25
    log.info("analysis %s: %s", claim.analysis_id, write.status.value)


def release(context: AppContext, claims: list[Claim], exc: Exception) -> None:
    """After an error in a pass, give the claimed jobs back. An infrastructure error (S3,
    database, broker) spends none of their attempts: they come back after a backoff. Any
    other error may be the jobs' own doing and counts, up to ``MAX_ATTEMPTS`` (no poison
    loops). The database may be the thing that failed, so giving back is retried for a
    while; what is still held after that is found by the sweeper."""
    from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

    from shared.jobs import is_infrastructure_error

    patience_seconds = 120  # how long to keep trying while the database is away
    transient = is_infrastructure_error(exc)
    reason = f"{type(exc).__name__}: {exc}"[:300]
    log.warning("pass of %d job(s) failed (%s, %s); giving them back",
                len(claims), type(exc).__name__, "infrastructure" if transient else "counts as an attempt")

    @retry(retry=retry_if_exception(is_infrastructure_error), wait=wait_exponential(min=0.5, max=10),
           stop=stop_after_delay(patience_seconds), reraise=True)
    def give_back() -> None:
        with session_scope(context.session_factory) as session:
            for claim in claims:
                lifecycle.release_claim(
                    session, context.celery, context.settings, claim, reason=reason, transient=transient
                )

    give_back()
