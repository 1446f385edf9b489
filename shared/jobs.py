"""The Celery app as both the API (producer) and the workers see it.

The broker only carries wake-ups: every message names a row in Postgres, and the sweeper
re-sends any that were lost. Producers send by task name, so the API never imports the
worker code.
"""

from __future__ import annotations

import uuid

from celery import Celery
from kombu import Queue as KombuQueue

from shared.config import Settings
from shared.queues import Queue, TaskName, analysis_queue


# Where each task goes unless the sender names a queue (analyses name their lane).
TASK_ROUTES = {
    TaskName.analyze.value: {"queue": Queue.analyze_interactive.value},
    TaskName.build_report.value: {"queue": Queue.reports.value},
    TaskName.dispatch_event.value: {"queue": Queue.webhooks.value},
    TaskName.deliver_webhook.value: {"queue": Queue.webhooks.value},
    TaskName.dispatch_due.value: {"queue": Queue.webhooks.value},
    TaskName.sweep.value: {"queue": Queue.maintenance.value},
    TaskName.purge.value: {"queue": Queue.maintenance.value},
}


def make_celery(settings: Settings) -> Celery:
    if not settings.broker_url:
        raise RuntimeError("DERMASENTINEL_BROKER_URL is not set; run `dermasentinel up` or point it at Redis")
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
        broker_transport_options={
            # Consume queues strictly in the order the worker lists them, so interactive
            # work always goes before bulk on a shared GPU worker.
            "queue_order_strategy": "priority",
            # Unacked messages of a worker that died come back after this long; the
            # sweeper covers anything beyond it.
            "visibility_timeout": 3600,
        },
        timezone="UTC",
        enable_utc=True,
    )
    return app


def send(app: Celery, task: TaskName, queue: Queue, *args: str) -> None:
    app.send_task(task.value, args=list(args), queue=queue.value, routing_key=queue.value)


def enqueue_analysis(app: Celery, analysis_id: uuid.UUID, priority: str) -> None:
    send(app, TaskName.analyze, analysis_queue(priority), str(analysis_id))


def enqueue_report(app: Celery, analysis_id: uuid.UUID) -> None:
    send(app, TaskName.build_report, Queue.reports, str(analysis_id))


def enqueue_event_dispatch(app: Celery, event_id: str) -> None:
    send(app, TaskName.dispatch_event, Queue.webhooks, event_id)


def enqueue_delivery(app: Celery, delivery_id: uuid.UUID) -> None:
    send(app, TaskName.deliver_webhook, Queue.webhooks, str(delivery_id))
