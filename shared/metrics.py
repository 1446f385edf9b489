"""Prometheus metrics of every role (docs/OBSERVABILITY.md).

Workers count what they do in their own process; a Celery worker's pool processes write to
files in a per-worker directory (prometheus_client's multiprocess mode, set up by
``worker.celery_app.prepare_metrics_dir`` before this module is imported) and the worker's
main process serves them on ``METRICS_PORT``. What no single worker knows (queue depth per
lane, oldest queued job, jobs by state) is read from Redis and Postgres by the API's
``/metrics`` (``BacklogCollector``): a few cheap reads under short timeouts, cached briefly,
so scrapes under load neither pile up nor hold the database.

Instrumenting code is one line: ``with stage_timer("gate1"):``, ``IMAGES_PROCESSED.inc(n)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import text
from sqlalchemy.engine import Engine

from shared.queues import Queue

if TYPE_CHECKING:
    from shared.config import Settings

log = logging.getLogger(__name__)

# Engine stages, in order (docs/ENGINE.md): fetch from S3, decode + quality gate, gate 1
# (segmentation), gate 2 (classification), artifacts (ABCD, ITA, mask and overlay), write.
STAGES = ("fetch", "decode", "gate1", "gate2", "artifacts", "write")
_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_PASS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_FILL_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)

STAGE_SECONDS = Histogram(
    "dermasentinel_stage_seconds", "Time one GPU pass spent in each engine stage (the whole pass, not per image)",
    ["stage"], buckets=_STAGE_BUCKETS,
)
GPU_PASS_SIZE = Histogram(
    "dermasentinel_gpu_pass_jobs", "Jobs in one pass through the networks", buckets=_PASS_BUCKETS,
)
GPU_PASS_FILL = Histogram(
    "dermasentinel_gpu_pass_fill_ratio", "Jobs in one pass divided by GPU_BATCH_SIZE", buckets=_FILL_BUCKETS,
)
IMAGES_PROCESSED = Counter(
    "dermasentinel_images_processed_total", "Images that went through the networks (rate() is images/s)",
)
ANALYSES_FINISHED = Counter(
    "dermasentinel_analyses_finished_total", "Analyses whose outcome a worker recorded, by final status",
    ["status"],
)
REPORT_RENDER_SECONDS = Histogram(
    "dermasentinel_report_render_seconds", "Rendering one report (PDF and FHIR bundle)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
WEBHOOK_DELIVERIES = Counter(
    "dermasentinel_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, failed, refused, skipped)", ["outcome"],
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "dermasentinel_webhook_delivery_seconds", "One webhook attempt, from connect to the receiver's answer",
    ["outcome"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
INGESTS = Counter(
    "dermasentinel_ingests_total", "Direct uploads validated by a worker, by outcome (accepted, rejected, skipped)",
    ["outcome"],
)
TASKS = Counter(
    "dermasentinel_tasks_total", "Celery tasks run, by task name and outcome (success, failure, retry)",
    ["task", "outcome"],
)
# Issue 26: broker messages a worker could not read, dropped (logged, acknowledged) instead of ending it.
MALFORMED_MESSAGES = Counter(
    "dermasentinel_malformed_messages_total",
    "Malformed broker messages acknowledged and dropped, by where they were caught (transport, consumer, task)",
    ["where"],
)
TASK_SECONDS = Histogram(
    "dermasentinel_task_seconds", "Celery task run time, by task name", ["task"], buckets=_STAGE_BUCKETS,
)

# Operations (issue 25, docs/OBSERVABILITY.md): what a user waits, by lane (interactive, bulk)
# and the model version that answered ("none" when no model ran). Observed by the GPU worker
# as it records each outcome: submitted → claimed (queue wait) and submitted → recorded.
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
                 4 * 3600.0, 12 * 3600.0)
QUEUE_WAIT_SECONDS = Histogram(
    "dermasentinel_queue_wait_seconds", "Submitted (or given back) to claimed by a GPU worker, per attempt",
    ["lane", "model_version"], buckets=_WAIT_BUCKETS,
)
TIME_TO_RESULT_SECONDS = Histogram(
    "dermasentinel_time_to_result_seconds", "Submitted to final outcome recorded (end to end), by final status",
    ["lane", "model_version", "status"], buckets=_WAIT_BUCKETS,
)


def observe_result_times(lane: str | None, model_version: str | None, status: str,
                         submitted: datetime | None, claimed: datetime | None, recorded: datetime) -> None:
    """Queue wait and time to result of one recorded outcome (labels bounded: two lanes, the
    registry's versions, five statuses)."""
    lane, version = lane or "unknown", model_version or "none"
    if submitted is None:
        return
    if claimed is not None:
        QUEUE_WAIT_SECONDS.labels(lane, version).observe(max(0.0, (claimed - submitted).total_seconds()))
    TIME_TO_RESULT_SECONDS.labels(lane, version, status).observe(max(0.0, (recorded - submitted).total_seconds()))


# Monitoring (issue 24, docs/MONITORING.md): set by the drift check (`dermasentinel.maintenance.
# drift_check`, a cpu worker) per (tenant name, model version) with a final result lately, at
# most MONITOR_MAX_SERIES pairs; in a worker's multiprocess files the most recent value wins.
_MONITOR_LABELS = ["tenant", "model_version"]
DRIFT_PSI = Gauge(
    "dermasentinel_drift_psi", "PSI of the window's probabilities against the model's reference",
    _MONITOR_LABELS, multiprocess_mode="mostrecent",
)
DRIFT_KS = Gauge(
    "dermasentinel_drift_ks", "Kolmogorov-Smirnov statistic of the window's probabilities against the reference",
    _MONITOR_LABELS, multiprocess_mode="mostrecent",
)
DRIFT_SKIN_GROUP_PSI = Gauge(
    "dermasentinel_drift_skin_group_psi", "PSI of the window's ITA skin-group mix against the reference's mix",
    _MONITOR_LABELS, multiprocess_mode="mostrecent",
)
DRIFT_DETECTED = Gauge(
    "dermasentinel_drift_detected", "1 while a drift episode of this tenant and version is open (not cleared)",
    _MONITOR_LABELS, multiprocess_mode="mostrecent",
)
MONITOR_REJECTION_RATE = Gauge(
    "dermasentinel_monitor_rejection_rate", "Share of the window's final results a clinical gate rejected",
    _MONITOR_LABELS, multiprocess_mode="mostrecent",
)
MONITOR_FAILURE_RATE = Gauge(
    "dermasentinel_monitor_failure_rate", "Share of the window's final results that failed",
    _MONITOR_LABELS, multiprocess_mode="mostrecent",
)
MONITOR_WINDOW_RESULTS = Gauge(
    "dermasentinel_monitor_window_results", "Final results in the monitoring window", _MONITOR_LABELS,
    multiprocess_mode="mostrecent",
)
SAFETY_MODE = Gauge(
    "dermasentinel_safety_mode", "1 while the tenant is in safety mode (every result clinician_review, reason drift)",
    ["tenant"], multiprocess_mode="mostrecent",
)
DRIFT_EVENTS = Counter(
    "dermasentinel_drift_events_total", "Drift episodes opened (one model.drift_detected event each), by action",
    ["action"],
)
MONITOR_GAUGES = (DRIFT_PSI, DRIFT_KS, DRIFT_SKIN_GROUP_PSI, DRIFT_DETECTED, MONITOR_REJECTION_RATE,
                  MONITOR_FAILURE_RATE, MONITOR_WINDOW_RESULTS)


@contextmanager
def stage_timer(stage: str) -> Iterator[None]:
    """Time one engine stage of a pass: ``with stage_timer("gate1"): ...``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)


def observe_stage(stage: str, seconds: float) -> None:
    STAGE_SECONDS.labels(stage).observe(seconds)


class StageClock:
    """A callback for stage notifications (``on_stage("segmentation")``): each call closes the
    stage that was running and opens the next; ``stop()`` closes the last one. ``names`` maps
    the notifier's stage names to ours (``{"segmentation": "gate1"}``)."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.names = names or {}
        self.stage: str | None = None
        self.started = 0.0

    def __call__(self, stage: str) -> None:
        self.stop()
        self.stage, self.started = self.names.get(stage, stage), time.perf_counter()

    def stop(self) -> None:
        if self.stage is not None:
            observe_stage(self.stage, time.perf_counter() - self.started)
            self.stage = None


def observe_pass(jobs: int, batch_size: int) -> None:
    """One pass through the networks: its size, how full it was, and its images."""
    GPU_PASS_SIZE.observe(jobs)
    GPU_PASS_FILL.observe(jobs / max(1, batch_size))
    IMAGES_PROCESSED.inc(jobs)


# ---------------------------------------------------------------- the backlog, for the API

# Live states only: they are few rows and sit in one partial index (ix_analyses_active).
# Finished analyses are counted by the workers as they finish (ANALYSES_FINISHED).
_BACKLOG_SQL = text(
    "SELECT status, priority, count(*), "
    "EXTRACT(EPOCH FROM (clock_timestamp() - min(created_at))) "
    "FROM analyses WHERE status IN ('queued', 'processing') GROUP BY status, priority"
)
# Issue 25: receivers (webhooks, FHIR, DICOMweb, Subscriptions) failing now: enabled endpoints
# whose deliveries keep failing (failing_since is set at the first failure and cleared by a
# success). A few rows per tenant; read with the backlog, under the same timeouts.
_FAILING_ENDPOINTS_SQL = text(
    "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM (clock_timestamp() - min(failing_since))), 0) "
    "FROM webhook_endpoints WHERE enabled AND failing_since IS NOT NULL"
)


class BacklogCollector:
    """Queue depth per lane (Redis LLEN), jobs by live state and the oldest queued job's age
    per priority (Postgres), read at scrape time under ``timeout`` seconds each and cached
    for ``cache_seconds``, so many scrapes at once cost one read."""

    def __init__(self, settings: Settings, *, timeout: float = 0.5, cache_seconds: float = 2.0) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, list] | None = None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        # One reader at a time; the others take the last answer rather than queue up more reads.
        acquired = self._lock.acquire(timeout=self.timeout * 4) if self._cached is None else self._lock.acquire(False)
        if not acquired:
            yield from self._cached[1] if self._cached else []
            return
        try:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.cache_seconds:
                self._cached = (now, self._read())
            families = self._cached[1]
        finally:
            self._lock.release()
        yield from families

    def _read(self) -> list:
        up = GaugeMetricFamily("dermasentinel_backlog_source_up",
                               "Whether the last read of each backlog source answered in time", labels=["source"])
        depth = GaugeMetricFamily("dermasentinel_queue_depth",
                                  "Messages waiting in each broker queue (lane)", labels=["queue"])
        jobs = GaugeMetricFamily("dermasentinel_jobs", "Analyses in each live state, by priority",
                                 labels=["state", "priority"])
        oldest = GaugeMetricFamily("dermasentinel_oldest_queued_job_age_seconds",
                                   "Age of the oldest queued analysis, by priority (0 when none)",
                                   labels=["priority"])
        failing = GaugeMetricFamily("dermasentinel_endpoints_failing",
                                    "Enabled delivery endpoints (every kind) whose deliveries fail now")
        failing_for = GaugeMetricFamily("dermasentinel_endpoint_failing_seconds",
                                        "How long the longest-failing enabled endpoint has failed (0 when none)")
        up.add_metric(["redis"], float(self._read_queues(depth)))
        up.add_metric(["database"], float(self._read_jobs(jobs, oldest, failing, failing_for)))
        return [up, depth, jobs, oldest, failing, failing_for]

    def _read_queues(self, family: GaugeMetricFamily) -> bool:
        from shared.jobs import broker_redis

        client = None
        try:
            client = broker_redis(self.settings, timeout=self.timeout)
            with client.pipeline(transaction=False) as pipe:
                for queue in Queue:
                    pipe.llen(queue.value)
                lengths = pipe.execute()
        except Exception as exc:  # a scrape reports the source as down, it never fails
            log.warning("queue depth unavailable (%s)", type(exc).__name__)
            return False
        finally:
            if client is not None:
                client.close()
        for queue, length in zip(Queue, lengths, strict=True):
            family.add_metric([queue.value], float(length))
        return True

    def engine(self) -> Engine:
        # Its own single connection: a scrape never waits behind requests for the API's pool.
        if self._engine is None:
            from sqlalchemy import create_engine

            self._engine = create_engine(
                self.settings.database_url, pool_size=1, max_overflow=0, pool_timeout=self.timeout,
                pool_pre_ping=True, connect_args={"connect_timeout": max(1, int(self.timeout * 4))},
            )
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _read_jobs(self, jobs: GaugeMetricFamily, oldest: GaugeMetricFamily, failing: GaugeMetricFamily,
                   failing_for: GaugeMetricFamily) -> bool:
        try:
            with self.engine().connect() as connection, connection.begin():
                connection.execute(text(f"SET LOCAL statement_timeout = {int(self.timeout * 1000)}"))
                connection.execute(text(f"SET LOCAL lock_timeout = {int(self.timeout * 1000)}"))
                rows = connection.execute(_BACKLOG_SQL).all()
                endpoints, seconds = connection.execute(_FAILING_ENDPOINTS_SQL).one()
        except Exception as exc:
            log.warning("job counts unavailable (%s)", type(exc).__name__)
            return False
        counts = {(state, priority): 0 for state in ("queued", "processing") for priority in ("interactive", "bulk")}
        ages = {"interactive": 0.0, "bulk": 0.0}
        for state, priority, count, age in rows:
            counts[(state, priority)] = count
            if state == "queued":
                ages[priority] = max(0.0, float(age or 0.0))
        for (state, priority), count in counts.items():
            jobs.add_metric([state, priority], float(count))
        for priority, age in ages.items():
            oldest.add_metric([priority], age)
        failing.add_metric([], float(endpoints))
        failing_for.add_metric([], max(0.0, float(seconds or 0.0)))
        return True


# ---------------------------------------------------------------- GPUs, through NVML (issue 25)

class NvmlCollector:
    """Utilisation and memory of each GPU this host's NVIDIA driver reports, read at scrape time
    (nvidia-ml-py). ``create()`` gives None where there is no driver or no GPU: no series, no
    error (a CPU host, the API, the test machines)."""

    def __init__(self, nvml: Any, count: int) -> None:
        self.nvml = nvml
        self.count = count

    @classmethod
    def create(cls, nvml: Any = None) -> NvmlCollector | None:
        try:
            if nvml is None:
                import pynvml  # the nvidia-ml-py distribution

                nvml = pynvml
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:  # no library, no driver, no device: simply nothing to report
            log.debug("no GPU metrics (%s)", type(exc).__name__)
            return None
        return cls(nvml, count) if count > 0 else None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        utilization = GaugeMetricFamily("dermasentinel_gpu_utilization_ratio",
                                        "Share of the last sample period a kernel ran on the GPU (NVML)",
                                        labels=["gpu"])
        used = GaugeMetricFamily("dermasentinel_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"])
        total = GaugeMetricFamily("dermasentinel_gpu_memory_total_bytes", "GPU memory in all (NVML)", labels=["gpu"])
        for index in range(self.count):
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU fallen off the bus: its series go, the scrape answers
                log.warning("GPU %d unreadable (%s)", index, type(exc).__name__)
                continue
            utilization.add_metric([str(index)], float(rates.gpu) / 100.0)
            used.add_metric([str(index)], float(memory.used))
            total.add_metric([str(index)], float(memory.total))
        yield from (utilization, used, total)
