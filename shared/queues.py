"""Queue and task names. These strings are public: queued messages carry them, so a
rename strands work (tests/shared/test_queues.py snapshots them)."""

from __future__ import annotations

import enum


class Queue(enum.StrEnum):
    analyze_interactive = "analyze.interactive"
    analyze_bulk = "analyze.bulk"
    reports = "reports"
    webhooks = "webhooks"
    maintenance = "maintenance"
    ingest = "ingest"


class TaskName(enum.StrEnum):
    analyze = "dermasentinel.analysis.run"
    build_report = "dermasentinel.reports.build"
    dispatch_event = "dermasentinel.webhooks.dispatch_event"
    deliver_webhook = "dermasentinel.webhooks.deliver"
    dispatch_due = "dermasentinel.webhooks.dispatch_due"
    sweep = "dermasentinel.maintenance.sweep"
    purge = "dermasentinel.maintenance.purge"
    drift_check = "dermasentinel.maintenance.drift_check"
    ingest_upload = "dermasentinel.uploads.ingest"
    ingest_archive = "dermasentinel.batches.ingest_archive"  # issue 25: a batch's archive, unpacked
    fhir_heartbeats = "dermasentinel.fhir.heartbeats"  # issue 23: FHIR Subscriptions' heartbeats


ANALYSIS_QUEUES: tuple[Queue, ...] = (Queue.analyze_interactive, Queue.analyze_bulk)

# The queues each worker role consumes (`dermasentinel worker --role`): gpu runs the models,
# cpu the image ingest, reports and the sweeper, io the webhook sends; all is every queue.
ROLE_QUEUES: dict[str, tuple[Queue, ...]] = {
    "gpu": ANALYSIS_QUEUES,
    "cpu": (Queue.ingest, Queue.reports, Queue.maintenance),
    "io": (Queue.webhooks,),
    "all": (*ANALYSIS_QUEUES, Queue.ingest, Queue.reports, Queue.maintenance, Queue.webhooks),
}


def queue_list(queues: tuple[Queue, ...]) -> str:
    """Queue names as Celery's ``--queues`` option takes them."""
    return ",".join(queue.value for queue in queues)


def analysis_queue(priority: str) -> Queue:
    return Queue.analyze_bulk if priority == "bulk" else Queue.analyze_interactive
