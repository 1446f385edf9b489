"""The Celery app for worker and beat processes, and its tasks.

Tasks are thin: they take an id, call a plain function (which the tests call directly)
and are safe to run twice. Retries are only for named transient errors.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import redis.exceptions
from celery import Celery
from celery.exceptions import Reject
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from minio.error import MinioException

from shared import liveness
from shared.config import Settings, get_settings
from shared.fhir_subscriptions import HEARTBEAT_CHECK_SECONDS
from shared.jobs import (
    INFRASTRUCTURE_ERRORS,
    broker_redis,
    forget_gpu_worker,
    make_celery,
    report_gpu_worker,
    set_worker_identity,
)
from shared.queues import ANALYSIS_QUEUES, Queue, TaskName
from worker import poison
from worker import runtime as runtime_module

if TYPE_CHECKING:
    from worker.pipeline.pipeline import Pipeline

log = logging.getLogger(__name__)
TRANSIENT = (*INFRASTRUCTURE_ERRORS, MinioException)
RETRY: dict[str, Any] = {
    "autoretry_for": TRANSIENT, "retry_backoff": 2, "retry_backoff_max": 60, "retry_jitter": True, "max_retries": 5,
}
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
        # Issue 26: which main process this pool process belongs to (itself under --pool solo).
        parent = liveness.main_id(self.hostname, _main_pid or os.getppid())
        try:
            liveness.record_parent(self._client, self.worker_id, parent)
        except redis.exceptions.RedisError:
            pass  # without it the census counts this process on its own heartbeat, as before
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
                app.control.cancel_consumer(queue.value, destination=[self.hostname], reply=False)
            except Exception as control_exc:  # the pause in the task still prevents a hot loop
                log.warning("could not stop consuming %s (%s)", queue.value, type(control_exc).__name__)


_membership: GpuMembership | None = None
# Issue 26: the worker's main process (set before its pool forks) and its heartbeat thread.
_main_pid: int | None = None
_main_heartbeat: liveness.MainHeartbeat | None = None

# Each task's first argument, as the id it names in log lines.
_TASK_ARGUMENT = {
    TaskName.analyze.value: "analysis_id",
    TaskName.build_report.value: "analysis_id",
    TaskName.ingest_upload.value: "analysis_id",
    TaskName.ingest_archive.value: "archive_id",
    TaskName.dispatch_event.value: "event_id",
    TaskName.deliver_webhook.value: "delivery_id",
}
# Periodic wake-ups: their "received"/"succeeded" lines would flood the log every few
# seconds; they log themselves when they did something.
PERIODIC_TASKS = frozenset({TaskName.dispatch_due.value, TaskName.sweep.value, TaskName.fhir_heartbeats.value,
                            TaskName.drift_check.value})
_ROUTINE_LINES = ("Scheduler: Sending due task", "Task %(name)s[%(id)s] received",
                  "Task %(name)s[%(id)s] succeeded")


def prepare_metrics_dir(settings: Settings, role: str) -> None:
    """Give this worker (its main process and its pool processes) a fresh directory for
    prometheus_client's multiprocess files, under DATA_DIR/metrics. Must run before
    prometheus_client is imported: the library picks its storage at import. Folders left by
    workers that are gone are removed."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prepare_metrics_dir must run before prometheus_client is imported")
    root = settings.data_dir / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    for folder in root.glob("*-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not liveness.pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    directory = root / f"{role}-{os.getpid()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    # The library's own switch; read by it alone, at import.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def serve_metrics(settings: Settings) -> int | None:
    """Serve every process's figures of this worker on METRICS_PORT (0: any free port)."""
    if settings.metrics_port is None:
        return None
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:  # a worker started without prepare_metrics_dir: only this process's figures
        from prometheus_client import REGISTRY as registry
    # Issue 25: GPU utilisation and memory where NVML finds a GPU (none: no series).
    from shared.metrics import NvmlCollector

    gpus = NvmlCollector.create()
    if gpus is not None:
        registry.register(gpus)
    server, _ = start_http_server(settings.metrics_port, registry=registry)
    port = server.server_port
    log.info("worker metrics on port %d", port)
    return port


class _QuietRoutine(logging.Filter):
    """Celery's per-message lines for the periodic wake-ups go to DEBUG-only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_ROUTINE_LINES):
            return True
        if any(task in record.getMessage() for task in PERIODIC_TASKS):
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def _connect_observability(settings: Settings) -> None:
    """Logging, task context and task metrics for worker and beat processes (docs/OBSERVABILITY.md)."""

    @setup_logging.connect(weak=False, dispatch_uid="dermasentinel-logging")
    def _logging(loglevel: object = None, **_: object) -> None:
        from shared.logs import configure_logging

        configure_logging(settings, level=loglevel if isinstance(loglevel, str) else None)
        quiet = _QuietRoutine()
        for name in ("celery.beat", "celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).addFilter(quiet)

    @worker_init.connect(weak=False, dispatch_uid="dermasentinel-metrics-server")
    def _metrics_server(**_: object) -> None:
        serve_metrics(settings)

    @task_prerun.connect(weak=False, dispatch_uid="dermasentinel-task-context")
    def _task_started(
        task_id: str | None = None, task: Any = None, args: Any = None, kwargs: object = None, **_: object
    ) -> None:
        # Celery's signal passes the Task and its positional arguments (typed loosely by celery-types).
        from structlog.contextvars import bind_contextvars, clear_contextvars

        from shared.logs import REQUEST_ID_HEADER

        clear_contextvars()
        request = task.request
        request_id = getattr(request, REQUEST_ID_HEADER, None) or (request.headers or {}).get(REQUEST_ID_HEADER)
        ids = {"task": task.name, "task_id": task_id, "request_id": request_id}
        argument = _TASK_ARGUMENT.get(task.name)
        if argument and args and isinstance(args[0], str) and len(args[0]) <= 64:  # issue 26: ids only
            ids[argument] = args[0]
        bind_contextvars(**{k: str(v) for k, v in ids.items() if v})
        request.dermasentinel_started = time.perf_counter()

    @task_postrun.connect(weak=False, dispatch_uid="dermasentinel-task-done")
    def _task_done(task: Any = None, state: str | None = None, **_: object) -> None:
        from structlog.contextvars import clear_contextvars

        from shared.metrics import TASK_SECONDS, TASKS

        started = getattr(task.request, "dermasentinel_started", None)
        if started is not None:
            TASK_SECONDS.labels(task.name).observe(time.perf_counter() - started)
        outcome = {"SUCCESS": "success", "RETRY": "retry", "FAILURE": "failure"}.get(str(state), "other")
        TASKS.labels(task.name, outcome).inc()
        clear_contextvars()


def gpu_membership() -> GpuMembership | None:
    return _membership


def _serves_analyses(app: Celery) -> bool:
    return any(queue.value in app.amqp.queues.consume_from for queue in ANALYSIS_QUEUES)


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
    # ---- issue 26: malformed broker messages never stop a worker (worker/poison.py) ----
    app.conf.worker_consumer = poison.CONSUMER
    app.Task.Request = poison.REQUEST  # every task registered below checks its arguments' fit
    if settings.broker_url.startswith(("redis://", "rediss://")):
        app.conf.broker_transport = poison.TRANSPORT

    @worker_init.connect(weak=False, dispatch_uid="dermasentinel-main-heartbeat")
    def _main_alive(sender: Any = None, **_: object) -> None:
        global _main_pid, _main_heartbeat
        _main_pid = os.getpid()
        _main_heartbeat = liveness.MainHeartbeat(
            broker_redis(settings), settings.data_dir, str(getattr(sender, "hostname", "worker")),
            settings.gpu_heartbeat_seconds,
        )
        _main_heartbeat.start()

    @worker_shutdown.connect(weak=False, dispatch_uid="dermasentinel-main-heartbeat-stop")
    def _main_gone(**_: object) -> None:
        if _main_heartbeat is not None and os.getpid() == _main_pid:
            _main_heartbeat.stop()
    # ---- end issue 26 ----
    app.conf.beat_schedule = {
        "sweep": {"task": TaskName.sweep.value, "schedule": settings.sweep_interval_seconds,
                  "options": {"queue": Queue.maintenance.value}},
        "webhooks-dispatch-due": {"task": TaskName.dispatch_due.value,
                                  "schedule": settings.webhook_dispatch_interval_seconds,
                                  "options": {"queue": Queue.webhooks.value}},
        "purge": {"task": TaskName.purge.value, "schedule": 3600.0, "options": {"queue": Queue.maintenance.value}},
        "fhir-heartbeats": {"task": TaskName.fhir_heartbeats.value, "schedule": HEARTBEAT_CHECK_SECONDS,
                            "options": {"queue": Queue.webhooks.value}},
        # Issue 24: monitoring windows, gauges and drift episodes (docs/MONITORING.md).
        "drift-check": {"task": TaskName.drift_check.value, "schedule": settings.drift_check_seconds,
                        "options": {"queue": Queue.maintenance.value}},
    }
    register_tasks(app)
    _connect_observability(settings)
    # Issue 25: traces from the OTEL_* variables (off unless an exporter is named); pool
    # processes inherit the provider (shared/tracing.py).
    from shared.tracing import configure_tracing

    configure_tracing("dermasentinel-worker")

    @worker_process_init.connect(weak=False)
    def _init_process(sender: object = None, **_: object) -> None:
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
    def _shutdown_process(**_: object) -> None:
        if _membership is not None:
            _membership.stop()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            # Its live gauges go; its counters and histograms stay summed into the worker's.
            multiprocess.mark_process_dead(os.getpid())

    return app


def pipeline_or_step_aside(app: Celery) -> Pipeline:
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

    @app.task(name=TaskName.ingest_upload.value, acks_late=True,
              soft_time_limit=60, time_limit=90, **RETRY)
    def ingest_upload(analysis_id: str) -> str | None:
        from worker.ingest import ingest_upload as ingest

        return ingest(rt().context, uuid.UUID(analysis_id))

    # Issue 25: a batch's archive, a slice of time per message (worker.archive_ingest.SLICE_SECONDS).
    @app.task(name=TaskName.ingest_archive.value, acks_late=True,
              soft_time_limit=300, time_limit=330, **RETRY)
    def ingest_archive(archive_id: str) -> str | None:
        from worker.archive_ingest import ingest_archive as unpack

        return unpack(rt().context, uuid.UUID(archive_id))

    @app.task(name=TaskName.fhir_heartbeats.value, soft_time_limit=60, time_limit=90)
    def fhir_heartbeats() -> int:
        from worker.fhir_subscriptions import send_heartbeats

        return send_heartbeats(rt().context)

    @app.task(name=TaskName.purge.value, soft_time_limit=600, time_limit=660)
    def purge() -> int:
        from worker.maintenance import purge_expired

        return purge_expired(rt().context)

    @app.task(name=TaskName.drift_check.value, soft_time_limit=240, time_limit=270)
    def drift_check() -> dict:
        from worker.maintenance import check_drift

        return check_drift(rt().context)
