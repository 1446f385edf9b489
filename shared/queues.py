"""Queue and task names. These strings are public: queued messages carry them, so a
rename strands work (tests/shared/test_queues.py snapshots them)."""

from __future__ import annotations

import enum


class Queue(str, enum.Enum):
    analyze_interactive = "analyze.interactive"
    analyze_bulk = "analyze.bulk"
    reports = "reports"
    webhooks = "webhooks"
    maintenance = "maintenance"
    ingest = "ingest"


class TaskName(str, enum.Enum):
    analyze = "dermasentinel.analysis.run"
    build_report = "dermasentinel.reports.build"
    dispatch_event = "dermasentinel.webhooks.dispatch_event"
    deliver_webhook = "dermasentinel.webhooks.deliver"
    dispatch_due = "dermasentinel.webhooks.dispatch_due"
    sweep = "dermasentinel.maintenance.sweep"
    purge = "dermasentinel.maintenance.purge"
    ingest_upload = "dermasentinel.uploads.ingest"


def analysis_queue(priority: str) -> Queue:
    return Queue.analyze_bulk if priority == "bulk" else Queue.analyze_interactive
