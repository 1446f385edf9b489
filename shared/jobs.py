"""The Celery app as both the API (producer) and the workers see it.

The broker only carries wake-ups: every message names a row in Postgres, and the sweeper
re-sends any that were lost. Producers send by task name, so the API never imports the
worker code.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Protocol, cast

import kombu.exceptions
import redis
import redis.exceptions
import sqlalchemy.exc
import urllib3.exceptions
from celery import Celery
from kombu import Queue as KombuQueue
from minio.error import InvalidResponseError, S3Error, ServerError

from shared import liveness
from shared.config import SettingMissing, Settings
from shared.logs import REQUEST_ID_HEADER, current_request_id
from shared.queues import Queue, TaskName, analysis_queue

log = logging.getLogger(__name__)

# A publish that failed because the broker is away: expected during an outage, not a bug.
BROKER_DOWN = (kombu.exceptions.OperationalError, redis.exceptions.ConnectionError,
               redis.exceptions.TimeoutError, OSError)

# Where each task goes unless the sender names a queue (analyses name their lane).
TASK_ROUTES = {
    TaskName.analyze.value: {"queue": Queue.analyze_interactive.value},
    TaskName.build_report.value: {"queue": Queue.reports.value},
    TaskName.dispatch_event.value: {"queue": Queue.webhooks.value},
    TaskName.deliver_webhook.value: {"queue": Queue.webhooks.value},
    TaskName.dispatch_due.value: {"queue": Queue.webhooks.value},
    TaskName.sweep.value: {"queue": Queue.maintenance.value},
    TaskName.purge.value: {"queue": Queue.maintenance.value},
    TaskName.drift_check.value: {"queue": Queue.maintenance.value},
    TaskName.ingest_upload.value: {"queue": Queue.ingest.value},
    TaskName.ingest_archive.value: {"queue": Queue.ingest.value},
    TaskName.fhir_heartbeats.value: {"queue": Queue.webhooks.value},
}


def make_celery(settings: Settings) -> Celery:
    if not settings.broker_url:
        raise SettingMissing("DERMASENTINEL_BROKER_URL is not set; run `dermasentinel up` or point it at Redis")
    app = Celery("dermasentinel", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_queues=[KombuQueue(q.value, routing_key=q.value) for q in Queue],
        task_default_queue=Queue.maintenance.value,
        task_routes=TASK_ROUTES,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.broker_connect_timeout_seconds,
        # Publishing happens after the commit, and a wake-up that cannot be sent is logged
        # and re-sent by the sweeper, so a dead broker may cost a caller one short retry,
        # never a long hang.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5,
                                   "interval_max": 0.5},
        broker_transport_options={
            # Consume queues strictly in the order the worker lists them, so interactive
            # work always goes before bulk on a shared GPU worker.
            "queue_order_strategy": "priority",
            # Unacked messages of a worker that died come back after this long; the
            # sweeper covers anything beyond it.
            "visibility_timeout": 3600,
            "socket_connect_timeout": settings.broker_connect_timeout_seconds,
            # Without it a publish on a half-open connection waits forever.
            "socket_timeout": settings.broker_socket_timeout_seconds,
        },
        timezone="UTC",
        enable_utc=True,
    )
    return app


class HeldSend(NamedTuple):
    """A wake-up held back by ``sends_together``."""

    app: Celery
    task: str
    queue: str
    args: list[str]
    headers: dict[str, Any] | None


# Those held in this thread.
_held = threading.local()


class SendsLater(Protocol):
    """Takes the wake-ups for ``queues`` that a ``sends_together`` block held, to publish them
    (``publish_held``) when it chooses: issue 27, report requests held while the analysis
    worker's passes run (``worker/after_passes.py``)."""

    queues: frozenset[str]

    def hold(self, sends: list[HeldSend]) -> None: ...


def send(app: Celery, task: TaskName, queue: Queue, *args: str) -> None:
    # The request id rides in a message header, not an argument: task signatures stay as they
    # are, and messages queued without it run as before (docs/OBSERVABILITY.md).
    request_id = current_request_id()
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    held: list[HeldSend] | None = getattr(_held, "sends", None)
    if held is not None:
        held.append(HeldSend(app, task.value, queue.value, list(args), headers))
        return
    app.send_task(task.value, args=list(args), queue=queue.value, routing_key=queue.value, headers=headers)


@contextmanager
def sends_together(later: SendsLater | None = None) -> Iterator[None]:
    """Hold back the wake-ups ``send`` is asked for in this thread inside the block (those of
    after-commit hand-offs: their rows are already committed) and publish them when the block
    ends, however it ends, on one pooled producer and, on Redis, in one pipeline round trip
    (issue 27: a lone ``send_task`` acquires a producer and builds a Redis client per message).
    Those for ``later``'s queues are handed to ``later`` instead. Like any post-commit
    hand-off, a publish that fails is logged, never raised: the sweeper re-sends lost
    wake-ups. Nested blocks publish with the outermost one (and its ``later``)."""
    if getattr(_held, "sends", None) is not None:
        yield
        return
    _held.sends = []
    try:
        yield
    finally:
        held: list[HeldSend] = _held.sends
        _held.sends = None
        if later is not None and (kept := [entry for entry in held if entry.queue in later.queues]):
            held = [entry for entry in held if entry.queue not in later.queues]
            later.hold(kept)
        if held:
            publish_held(held)


def publish_held(held: list[HeldSend]) -> None:
    """Publish held wake-ups on one producer (logged, never raised: ``run_hand_off``)."""
    def publish() -> None:
        for app in dict.fromkeys(entry.app for entry in held):  # one app in practice
            with app.producer_or_acquire() as producer, producer.batch():
                for owner, name, queue, args, headers in held:
                    if owner is app:
                        app.send_task(name, args=args, queue=queue, routing_key=queue, headers=headers,
                                      producer=producer)

    run_hand_off(publish)


def run_hand_off(callback: Callable[[], None]) -> None:
    """Run a post-commit hand-off (a wake-up for rows already committed): logged, never raised.
    The sweeper re-sends lost wake-ups, so a broker hiccup must not turn a durable success into
    an error for the caller. One line when the broker is away: during an outage every
    submission lands here, and a full traceback each time (~1,500 lines rendered) costs the API
    more than the failed publish itself."""
    try:
        callback()
    except BROKER_DOWN as exc:
        log.warning("post-commit hand-off failed (%s: broker unavailable); the sweeper will retry it",
                    type(exc).__name__)
    except Exception:
        log.exception("post-commit hand-off failed; the sweeper will retry it")


def enqueue_analysis(app: Celery, analysis_id: uuid.UUID, priority: str) -> None:
    send(app, TaskName.analyze, analysis_queue(priority), str(analysis_id))


def enqueue_report(app: Celery, analysis_id: uuid.UUID) -> None:
    send(app, TaskName.build_report, Queue.reports, str(analysis_id))


def enqueue_event_dispatch(app: Celery, event_id: str) -> None:
    send(app, TaskName.dispatch_event, Queue.webhooks, event_id)


def enqueue_delivery(app: Celery, delivery_id: uuid.UUID) -> None:
    send(app, TaskName.deliver_webhook, Queue.webhooks, str(delivery_id))


# ---------------------------------------------------------------- what counts as transient

class JobNotRun(Exception):
    """Claimed jobs given back before they ran (e.g. the batch claimed ahead of one that
    failed): nothing they did went wrong, so giving them back spends no attempt."""


# Errors of the infrastructure, not of the job: a pass that meets one gives its jobs back
# without spending their attempts (shared.lifecycle.release_claim, docs/FAULTS.md).
INFRASTRUCTURE_ERRORS = (
    JobNotRun,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    urllib3.exceptions.HTTPError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)
# S3 error codes that describe the store's state, not the object asked for.
TRANSIENT_S3_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
    "XMinioServerNotInitialized", "XMinioStorageFull", "OperationTimedOut",
})


def is_infrastructure_error(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from) is the infrastructure's fault."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, S3Error):
            if exc.code in TRANSIENT_S3_CODES:
                return True
        elif isinstance(exc, ServerError):
            if exc.status_code >= 500:
                return True
        elif isinstance(exc, InvalidResponseError):
            return True  # a non-S3 answer (proxy or load balancer page): the store is not there
        elif isinstance(exc, INFRASTRUCTURE_ERRORS):
            return True
        exc = exc.__cause__
    return False


# ---------------------------------------------------------------- GPU worker heartbeats

# Sorted sets in the broker's Redis: member = worker process id, score = last report (unix
# seconds). One for pool processes that hold their models and take analysis jobs, one for
# those whose models could not be loaded. Readiness and the sweeper read them.
GPU_WORKERS_READY = "dermasentinel:gpu-workers:ready"
GPU_WORKERS_BROKEN = "dermasentinel:gpu-workers:broken"
FORGET_AFTER_SECONDS = 3600.0

_worker_id: str | None = None


def set_worker_identity(worker_id: str | None) -> None:
    """Name this process for the claims it makes (``gpu@host:pid``)."""
    global _worker_id
    _worker_id = worker_id


def worker_identity() -> str | None:
    return _worker_id


def heartbeat_window(settings: Settings) -> float:
    """A worker that has not reported for this long is taken for gone."""
    return 3 * settings.gpu_heartbeat_seconds


def broker_redis(settings: Settings, timeout: float | None = None) -> redis.Redis:
    """A plain Redis client on the broker, with short timeouts: for heartbeats and probes."""
    timeout = timeout or settings.broker_connect_timeout_seconds
    return redis.Redis.from_url(settings.broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)


def report_gpu_worker(client: redis.Redis, worker_id: str, *, ready: bool) -> None:
    now = time.time()
    live, other = (GPU_WORKERS_READY, GPU_WORKERS_BROKEN) if ready else (GPU_WORKERS_BROKEN, GPU_WORKERS_READY)
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(live, {worker_id: now})
        pipe.zrem(other, worker_id)
        pipe.zremrangebyscore(live, "-inf", now - FORGET_AFTER_SECONDS)
        pipe.execute()


def forget_gpu_worker(client: redis.Redis, worker_id: str) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.zrem(GPU_WORKERS_READY, worker_id)
        pipe.zrem(GPU_WORKERS_BROKEN, worker_id)
        pipe.hdel(liveness.POOL_PARENTS, worker_id)
        pipe.execute()


def gpu_worker_census(client: redis.Redis, within_seconds: float) -> tuple[list[str], list[str]]:
    """(ready, broken) worker ids that reported within the window, and whose main process
    reports in too (issue 26: a pool process of a stopped main reads no queue)."""
    since = time.time() - within_seconds
    with client.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(GPU_WORKERS_READY, since, "+inf")
        pipe.zrangebyscore(GPU_WORKERS_BROKEN, since, "+inf")
        ready_raw, broken_raw = pipe.execute()
    ready, broken = [m.decode() for m in ready_raw], [m.decode() for m in broken_raw]
    stale = liveness.stale_mains(client, within_seconds)
    stopped = liveness.stopped_pools(client, within_seconds)
    if not stale and not stopped:
        return ready, broken
    parent = liveness.parents(client, ready + broken) if stale else {}

    def live(worker: str) -> bool:
        return worker not in stopped and parent.get(worker) not in stale

    return [w for w in ready if live(w)], [w for w in broken if live(w)]


def hung_gpu_workers(client: redis.Redis, within_seconds: float) -> set[str]:
    """Pool processes whose main process stopped reporting in (hung or stopped), and pool
    processes their main saw stopped (SIGSTOP): not dead of a job. Their jobs are released
    without spending an attempt (issue 26)."""
    stopped = liveness.stopped_pools(client, within_seconds)
    stale = liveness.stale_mains(client, within_seconds)
    if not stale:
        return stopped
    found = cast(list[bytes], client.zrange(GPU_WORKERS_READY, 0, -1)) + cast(
        list[bytes], client.zrange(GPU_WORKERS_BROKEN, 0, -1))
    members = [m.decode() for m in found]
    parent = liveness.parents(client, members)
    return stopped | {w for w in members if parent.get(w) in stale}
