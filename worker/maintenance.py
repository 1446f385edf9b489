"""The sweeper: Postgres is the truth, so anything the broker lost is found and re-sent.

Every kind of work whose wake-up can be lost is covered: analyses (lost messages, jobs
of dead or stuck workers, jobs whose backoff ended), reports (PDF + FHIR, and with them
their ``analysis.report_ready`` event) and batch completion here; outbox events and
webhook deliveries by ``worker.webhooks.dispatch_due``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import redis.exceptions
from celery import Celery
from psycopg.errors import LockNotAvailable
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from shared import lifecycle, liveness
from shared.clock import utcnow
from shared.context import AppContext
from shared.db import session_scope
from shared.jobs import (
    GPU_WORKERS_BROKEN,
    GPU_WORKERS_READY,
    broker_redis,
    enqueue_report,
    gpu_worker_census,
    heartbeat_window,
    hung_gpu_workers,
)
from shared.queues import Queue, analysis_queue
from shared.tables import Analysis

log = logging.getLogger(__name__)
RESEND_LIMIT = 200
RELEASE_LOCK_TIMEOUT_MS = 2000  # the longest a release waits on a job's row lock


def broker_queue_length(context: AppContext, queue: str) -> int:
    with context.celery.connection_for_read() as connection:
        # Redis transport: the channel holds a redis-py client (kombu's generic type does not say so).
        return int(connection.default_channel.client.llen(queue))  # type: ignore[attr-defined]


def live_gpu_workers(context: AppContext) -> list[str] | None:
    """Worker processes that reported in lately; None when Redis cannot say (down, or its
    data was lost: a dead worker's entry stays in the census until forgotten, so an
    empty census means the workers have not reported in again yet)."""
    client = broker_redis(context.settings)
    try:
        if not client.exists(GPU_WORKERS_READY, GPU_WORKERS_BROKEN):
            return None
        ready, broken = gpu_worker_census(client, heartbeat_window(context.settings))
    except redis.exceptions.RedisError:
        return None
    finally:
        client.close()
    return ready + broken


def _hung_workers(context: AppContext) -> tuple[set[str], set[str]]:
    """(hung, stopped): pool processes whose main stopped reporting in or that their main saw
    stopped; and the latter alone. Empty when Redis cannot say."""
    client = broker_redis(context.settings)
    try:
        window = heartbeat_window(context.settings)
        return hung_gpu_workers(client, window), liveness.stopped_pools(client, window)
    except redis.exceptions.RedisError:
        return set(), set()
    finally:
        client.close()


def _held_by_hung_workers(session: Session, ids: list[uuid.UUID], hung: set[str]) -> set[uuid.UUID]:
    """Of these jobs, those held by a hung pool process."""
    if not ids or not hung:
        return set()
    rows = session.execute(
        select(Analysis.id).where(Analysis.id.in_(ids), Analysis.claimed_by.in_(sorted(hung)))
    ).scalars()
    return set(rows)


def sweep(context: AppContext) -> dict[str, int]:
    """Re-queue jobs whose worker vanished, fail those out of attempts, re-send wake-ups
    that were lost (analyses and reports), wake jobs whose backoff ended, and finish
    batches whose last item ended without closing them."""
    settings = context.settings
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.stuck_after_seconds)
    resend_cutoff = now - timedelta(seconds=settings.resend_after_seconds)
    counts = {"requeued": 0, "failed": 0, "resent": 0, "retried": 0, "reports_resent": 0, "batches_completed": 0,
              "expired": 0, "ingests_resent": 0, "unpacks_resent": 0}

    # Past their deadline: canceled (expired) before anything below could wake them.
    with session_scope(context.session_factory) as session:
        counts["expired"] = len(lifecycle.expire_due(session, context.celery, settings, now, limit=RESEND_LIMIT * 5))

    live = live_gpu_workers(context)
    hung_workers, stopped = _hung_workers(context)
    if stopped:
        # Issue 26: a stopped pool process's open transaction holds its rows' locks: ended
        # first, or the release below would wait on them until the process runs again.
        try:
            with session_scope(context.session_factory) as session:
                ended = lifecycle.end_transactions_of(session, stopped)
            if ended:
                log.warning("ended %d open transaction(s) of stopped worker process(es) %s", ended, sorted(stopped))
        except SQLAlchemyError as exc:
            log.warning("could not end the transactions of stopped workers (%s)", type(exc).__name__)
    with session_scope(context.session_factory) as session:
        # Never wait long on a job's row: a lock held by a process that does not run (stopped,
        # hung) would stop every sweep duty with it. A job whose row is busy is tried next pass.
        session.execute(text(f"SET LOCAL lock_timeout = '{RELEASE_LOCK_TIMEOUT_MS}ms'"))
        held = lifecycle.stale_claims(session, cutoff)
        if live is not None:
            # A worker that stopped reporting in is gone: its jobs need not wait out the
            # stuck threshold. The grace keeps a Redis restart from looking like a death.
            orphan_cutoff = now - timedelta(seconds=2 * heartbeat_window(settings))
            seen = {c.analysis_id for c in held}
            held += [c for c in lifecycle.orphaned_claims(session, live, orphan_cutoff) if c.analysis_id not in seen]
        hung = _held_by_hung_workers(session, [c.analysis_id for c in held], hung_workers)
        for claim in held:
            # Issue 26: a job whose worker's main process hung (stopped, deadlocked), or whose
            # pool process was stopped, did not cause it: released without spending an attempt,
            # and woken at once (no backoff: the hang was the worker's, and others are there).
            is_hung = claim.analysis_id in hung
            try:
                with session.begin_nested():
                    outcome = lifecycle.release_claim(
                        session, context.celery, settings, claim,
                        reason="the worker processing it stopped responding", transient=is_hung, backoff=not is_hung,
                    )
            except OperationalError as exc:
                if not isinstance(exc.orig, LockNotAvailable):
                    raise
                log.warning("job %s is locked by another transaction; released at a later sweep", claim.analysis_id)
                continue
            if outcome == "queued":
                counts["requeued"] += 1
            elif outcome == "failed":
                counts["failed"] += 1

    with session_scope(context.session_factory) as session:
        for analysis in lifecycle.due_retries(session, now, RESEND_LIMIT):
            lifecycle.requeue(session, context.celery, analysis)
            counts["retried"] += 1

    for priority in ("interactive", "bulk"):
        # Jobs waiting in a busy lane are not lost; only re-send when the lane is empty.
        if broker_queue_length(context, analysis_queue(priority).value) > 0:
            continue
        with session_scope(context.session_factory) as session:
            for analysis in lifecycle.waiting_since(session, priority, resend_cutoff, RESEND_LIMIT):
                lifecycle.requeue(session, context.celery, analysis)
                counts["resent"] += 1

    # Same rule for reports and for direct uploads' ingest: a backlog in the lane is not a
    # lost message.
    counts["reports_resent"] = _resend_missing(
        context, Queue.reports, lifecycle.missing_reports, enqueue_report, resend_cutoff, "report"
    )
    counts["ingests_resent"] = _resend_missing(
        context, Queue.ingest, lifecycle.missing_ingests, lifecycle.enqueue_ingest, resend_cutoff, "ingest"
    )
    counts["unpacks_resent"] = _resend_missing(
        context, Queue.ingest, lifecycle.missing_unpacks, lifecycle.enqueue_unpack, resend_cutoff, "archive unpack"
    )

    with session_scope(context.session_factory) as session:
        for batch_id in lifecycle.unfinished_sealed_batches(session):
            if lifecycle.complete_batch_if_done(session, context.celery, settings, batch_id):
                counts["batches_completed"] += 1

    if any(counts.values()):
        log.info("sweep: %s", counts)
    return counts


def _resend_missing(
    context: AppContext,
    queue: Queue,
    find_missing: Callable[[Session, datetime, int], list[uuid.UUID]],
    enqueue: Callable[[Celery, uuid.UUID], None],
    cutoff: datetime,
    what: str,
) -> int:
    """Re-send the wake-ups of work whose request is older than ``cutoff`` and still not
    done, when its lane in the broker is empty. Returns how many were re-sent."""
    if broker_queue_length(context, queue.value) > 0:
        return 0
    with session_scope(context.session_factory) as session:
        missing = find_missing(session, cutoff, RESEND_LIMIT)
    resent = 0
    for analysis_id in missing:
        try:
            enqueue(context.celery, analysis_id)
        except Exception:
            log.warning("could not re-send the %s wake-up for %s; next sweep tries again", what, analysis_id)
            break
        resent += 1
    return resent


def prune_audit_trail(context: AppContext, now: datetime | None = None) -> dict:
    """``AUDIT_RETENTION_DAYS`` (issue 22, docs/AUDIT.md): audit rows older than that go,
    behind a signed checkpoint per chain; independent of ``RETENTION_DAYS``. A failure is
    logged and tried again at the next run, never in the way of the other purges."""
    from shared import audit

    try:
        return audit.prune(context.session_factory, context.settings, now or utcnow())
    except Exception:
        log.exception("pruning the audit trail failed; the next purge tries again")
        return {"chains": 0, "rows": 0, "skipped": [], "failed": True}


def purge_expired(context: AppContext) -> int:
    """Forget expired idempotency keys and direct uploads nobody submitted in time (their
    objects too); prune the audit trail (``AUDIT_RETENTION_DAYS``); with ``RETENTION_DAYS``
    set, erase final analyses older than that, up to 1000 a run: their rows and every row
    holding their data first, then their images and artifacts
    (``shared.tenant_data.erase_final_before``, the one erasure code)."""
    from sqlalchemy import update

    from shared.storage import IMAGES
    from shared.tables import Analysis, ArchiveState, BatchArchive, Upload
    from shared.tenant_data import erase_final_before

    settings = context.settings
    now = utcnow()
    with session_scope(context.session_factory) as session:
        unused = list(
            session.execute(
                select(Upload).where(Upload.usable_until < now).limit(1000).with_for_update(skip_locked=True)
            ).scalars()
        )
        for upload in unused:
            if upload.used_at is None:
                context.store.delete(IMAGES, upload.object_key)
            session.delete(upload)
    with session_scope(context.session_factory) as session:
        # Issue 25: archives asked for but never sealed go as unused uploads do, with their
        # object (photos with their metadata); the batch can still be sealed without one.
        keep_from = now - timedelta(hours=settings.upload_keep_hours)
        for archive in session.execute(
            select(BatchArchive)
            .where(BatchArchive.state == ArchiveState.awaiting.value, BatchArchive.created_at < keep_from)
            .limit(1000).with_for_update(skip_locked=True)
        ).scalars():
            context.store.delete(IMAGES, archive.object_key)
            session.delete(archive)
    with session_scope(context.session_factory) as session:
        session.execute(
            update(Analysis)
            .where(Analysis.idempotency_expires_at < now)
            .values(idempotency_key=None, idempotency_expires_at=None)
            .execution_options(synchronize_session=False)
        )
    prune_audit_trail(context, now)
    if settings.retention_days <= 0:
        return 0
    return erase_final_before(context, now - timedelta(days=settings.retention_days), limit=1000)


def check_drift(context: AppContext) -> dict[str, int]:
    """Issue 24 (docs/MONITORING.md): measure the monitoring windows, set the gauges this
    worker serves, and open a drift episode (``model.drift_detected``, safety mode with
    ``DRIFT_ACTION=review_all``) where a window crosses a threshold; then judge the open
    canaries (``check_canaries``)."""
    from shared.drift import check_drift as check

    report = check(context)
    return {"checked": report.checked, "opened": len(report.opened), "failed": report.failed,
            "canaries_rolled_back": check_canaries(context)}


def check_canaries(context: AppContext) -> int:
    """Issue 24 (docs/MODELS.md): judge each open canary against its incumbent; roll back (and
    audit) those beyond the declared bounds. On the drift check's beat. Returns how many."""
    from shared.model_rollout import check_canaries as judge_all

    with session_scope(context.session_factory) as session:
        return len(judge_all(session, context.settings))


# ---------------------------------------------------------------- issue 26: a sweeper that never waits

# When the sweeper last finished a pass (unix seconds), in the broker's Redis: for operators,
# the benchmark, and anyone asking whether it still runs.
SWEEPER_LAST_RUN = "dermasentinel:sweeper:last"
# How many passes have finished (a counter: benchmarks/cluster.py tells a sweep it saw by it).
SWEEPER_PASSES = "dermasentinel:sweeper:passes"


class SweepLoop:
    """The sweeper in a thread of its own in the beat process, every ``SWEEP_INTERVAL_SECONDS``.

    As a message on the maintenance queue it waited behind every ingest and report message a
    CPU worker had queued (3–3.5 minutes during a 2,000-job burst: no orphan release, lost
    wake-up re-send or deadline expiry for that long). Here it waits for nothing: one pass at a
    time, the next starting an interval after the last one ended; a pass that fails (Postgres
    away) is logged and the loop goes on. Beat is a single process, so passes never overlap."""

    def __init__(self, context: Callable[[], AppContext], interval: float):
        self._context = context
        self.interval = interval
        self._stop = threading.Event()
        self.passes = 0

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="sweeper", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)

    def run_once(self) -> dict[str, int] | None:
        try:
            context = self._context()
            counts = sweep(context)
        except Exception as exc:  # any failure: the next pass tries again
            log.warning("sweep failed (%s); the next one runs in %.0f s", type(exc).__name__, self.interval)
            return None
        self.passes += 1
        try:
            client = broker_redis(context.settings)
            try:
                with client.pipeline(transaction=False) as pipe:
                    pipe.set(SWEEPER_LAST_RUN, f"{time.time():.3f}")
                    pipe.incr(SWEEPER_PASSES)
                    pipe.execute()
            finally:
                client.close()
        except redis.exceptions.RedisError:
            pass  # a courtesy record; the sweep itself is done
        return counts
