"""The Celery app for worker and beat processes, and its tasks.

Tasks are thin: they take an id, call a plain function (which the tests call directly)
and are safe to run twice. Retries are only for named transient errors.
"""

from __future__ import annotations

import logging
import uuid

import redis.exceptions
import urllib3.exceptions
from celery import Celery
from celery.signals import worker_process_init
from minio.error import S3Error
from sqlalchemy.exc import OperationalError

from shared.config import Settings, get_settings
from shared.jobs import make_celery
from shared.queues import Queue, TaskName
from worker import runtime as runtime_module

log = logging.getLogger(__name__)
TRANSIENT = (OperationalError, S3Error, urllib3.exceptions.HTTPError, redis.exceptions.ConnectionError, ConnectionError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 2, "retry_backoff_max": 60, "retry_jitter": True, "max_retries": 5}


def create_celery(settings: Settings | None = None, *, preload_models: bool = False) -> Celery:
    settings = settings or get_settings()
    app = make_celery(settings)
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
    def _init_process(**_):
        runtime_module.reset_after_fork()
        if preload_models:
            # Load both models once per process, before the first job arrives.
            runtime_module.runtime().pipeline  # noqa: B018 (the property builds and caches the models)

    return app


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

        return run_analysis(rt().context, rt().pipeline, uuid.UUID(analysis_id))

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
