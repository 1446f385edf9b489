"""The Celery app for worker and beat processes, and its tasks.

Tasks are thin: they take an id, call a plain function (which the tests call directly)
and are safe to run twice. Retries are only for named transient errors.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

import redis.exceptions
from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_process_shutdown
from minio.error import MinioException

from shared.config import Settings, get_settings
from shared.jobs import (
    INFRASTRUCTURE_ERRORS,
    broker_redis,
    forget_gpu_worker,
    make_celery,
    report_gpu_worker,
    set_worker_identity,
)
from shared.queues import Queue, TaskName
from worker import runtime as runtime_module

log = logging.getLogger(__name__)
TRANSIENT = (*INFRASTRUCTURE_ERRORS, MinioException)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 2, "retry_backoff_max": 60, "retry_jitter": True, "max_retries": 5}
ANALYSIS_QUEUES = (Queue.analyze_interactive.value, Queue.analyze_bulk.value)
# A pool process whose models cannot load hands each message it already took back after
# this pause, so a worker that cannot stop consuming never spins.
STEP_ASIDE_PAUSE_SECONDS = 5.0


class GpuMembership:
    """This pool process's place among the GPU workers: it reports in to Redis every
    ``GPU_HEARTBEAT_SECONDS`` (ready, or unable to load its models) from a daemon thread,
    and stops reporting when the process dies, so readiness and the sweeper can tell a
    consuming worker from a dead or broken one."""

    def __init__(self, settings: Settings, hostname: str):
        self.settings = settings
        self.hostname = hostname
        self.worker_id = f"{hostname}:{os.getpid()}"
        self.ready = True
        self.load_error: str | None = None
        self._stop = threading.Event()
        self._client = broker_redis(settings)

    def start(self) -> None:
        threading.Thread(target=self._run, name="gpu-heartbeat", daemon=True).start()

    def _run(self) -> None:
        while True:
            self.beat()
            if self._stop.wait(self.settings.gpu_heartbeat_seconds):
                return

    def beat(self) -> None:
        try:
            report_gpu_worker(self._client, self.worker_id, ready=self.ready)
        except redis.exceptions.RedisError as exc:
            log.debug("heartbeat not recorded (%s); retrying", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        try:
            forget_gpu_worker(self._client, self.worker_id)
        except redis.exceptions.RedisError:
            pass  # it simply ages out of the census

    def models_unavailable(self, app: Celery, exc: BaseException) -> None:
        """Report not-ready and stop taking analysis jobs, instead of dying and being
        restarted into the same failure over and over."""
        self.ready = False
        self.load_error = type(exc).__name__
        log.error("models could not be loaded (%s: %s); this worker takes no analysis jobs until restarted",
                  type(exc).__name__, str(exc)[:300])
        self.beat()
        for queue in ANALYSIS_QUEUES:
            try:
                app.control.cancel_consumer(queue, destination=[self.hostname], reply=False)
            except Exception as control_exc:  # the pause in the task still prevents a hot loop
                log.warning("could not stop consuming %s (%s)", queue, type(control_exc).__name__)


_membership: GpuMembership | None = None


def gpu_membership() -> GpuMembership | None:
    return _membership


def _serves_analyses(app: Celery) -> bool:
    return any(q in app.amqp.queues.consume_from for q in ANALYSIS_QUEUES)


def create_celery(settings: Settings | None = None, *, preload_models: bool = False) -> Celery:
    settings = settings or get_settings()
    app = make_celery(settings)
    app.conf.update(
        # Loading the models happens while a pool process starts; Celery's default (4 s)
        # killed every replacement process before it could finish, forever.
        worker_proc_alive_timeout=settings.worker_start_timeout_seconds,
        # A worker keeps reconnecting to a broker that is down, however long it takes.
        broker_connection_max_retries=None,
    )
    app.conf.beat_schedule = {
        "sweep": {"task": TaskName.sweep.value, "schedule": settings.sweep_interval_seconds,
                  "options": {"queue": Queue.maintenance.value}},
        "webhooks-dispatch-due": {"task": TaskName.dispatch_due.value,
                                  "schedule": settings.webhook_dispatch_interval_seconds,
                                  "options": {"queue": Queue.webhooks.value}},
        "purge": {"task": TaskName.purge.value, "schedule": 3600.0, "options": {"queue": Queue.maintenance.value}},
    }
    register_tasks(app)

    @worker_process_init.connect(weak=False)
    def _init_process(sender=None, **_):
        global _membership
        runtime_module.reset_after_fork()
        _membership = None
        set_worker_identity(None)
        if not _serves_analyses(app):
            return
        membership = GpuMembership(runtime_module.runtime().settings, str(sender))
        set_worker_identity(membership.worker_id)
        _membership = membership
        if preload_models:
            try:
                # Load both models once per process, before the first job arrives.
                runtime_module.runtime().pipeline  # noqa: B018 (the property builds and caches the models)
            except Exception as exc:  # any failure: this process must live on and say so
                membership.models_unavailable(app, exc)
        membership.start()

    @worker_process_shutdown.connect(weak=False)
    def _shutdown_process(**_):
        if _membership is not None:
            _membership.stop()

    return app


def pipeline_or_step_aside(app: Celery):
    """The process's pipeline; when its models cannot load, hand the message back for a
    worker that has them (and say so in the census) rather than fail the job."""
    membership = gpu_membership()
    if membership is None or membership.ready:
        try:
            return runtime_module.runtime().pipeline
        except Exception as exc:
            if membership is None:
                raise
            membership.models_unavailable(app, exc)
    time.sleep(STEP_ASIDE_PAUSE_SECONDS)
    raise Reject(f"models unavailable here ({membership.load_error})", requeue=True)


def register_tasks(app: Celery) -> None:
    rt = runtime_module.runtime

    @app.task(
        name=TaskName.analyze.value,
        acks_late=True,
        reject_on_worker_lost=True,
        soft_time_limit=900,
        time_limit=960,
        **RETRY,
    )
    def analyze(analysis_id: str) -> int:
        from worker.analysis import run_analysis

        return run_analysis(rt().context, pipeline_or_step_aside(app), uuid.UUID(analysis_id))

    @app.task(name=TaskName.build_report.value, acks_late=True,
              soft_time_limit=120, time_limit=150, **RETRY)
    def build_report(analysis_id: str) -> bool:
        from worker.reports import build_report as build

        return build(rt().context, uuid.UUID(analysis_id))

    @app.task(name=TaskName.dispatch_event.value, acks_late=True,
              soft_time_limit=60, time_limit=90, **RETRY)
    def dispatch_event(event_id: str) -> int:
        from worker.webhooks import dispatch_event as dispatch

        return dispatch(rt().context, event_id)

    @app.task(name=TaskName.deliver_webhook.value, acks_late=True,
              soft_time_limit=60, time_limit=90, **RETRY)
    def deliver_webhook(delivery_id: str) -> str | None:
        from worker.webhooks import deliver_one

        return deliver_one(rt().context, uuid.UUID(delivery_id), client=rt().delivery_client)

    @app.task(name=TaskName.dispatch_due.value, soft_time_limit=60, time_limit=90)
    def dispatch_due() -> dict:
        from worker.webhooks import dispatch_due as wake

        return wake(rt().context)

    @app.task(name=TaskName.sweep.value, soft_time_limit=120, time_limit=150)
    def sweep() -> dict:
        from worker.maintenance import sweep as run

        return run(rt().context)

    @app.task(name=TaskName.purge.value, soft_time_limit=600, time_limit=660)
    def purge() -> int:
        from worker.maintenance import purge_expired

        return purge_expired(rt().context)
