"""Queued messages carry task names: renaming one strands work already in the broker."""

import pytest

from shared.config import Settings
from shared.queues import Queue, TaskName

SNAPSHOT = {
    "dermasentinel.analysis.run": "analyze.interactive",
    "dermasentinel.reports.build": "reports",
    "dermasentinel.webhooks.dispatch_event": "webhooks",
    "dermasentinel.webhooks.deliver": "webhooks",
    "dermasentinel.webhooks.dispatch_due": "webhooks",
    "dermasentinel.maintenance.sweep": "maintenance",
    "dermasentinel.maintenance.purge": "maintenance",
    "dermasentinel.maintenance.drift_check": "maintenance",
    "dermasentinel.uploads.ingest": "ingest",
    "dermasentinel.batches.ingest_archive": "ingest",
    "dermasentinel.fhir.heartbeats": "webhooks",
}


@pytest.fixture(scope="module")
def app():
    from worker.celery_app import create_celery

    return create_celery(Settings(_env_file=None, broker_url="redis://127.0.0.1:1/0"))


def test_registered_task_names_and_queues_are_stable(app):
    ours = {name for name in app.tasks if name.startswith("dermasentinel.")}
    assert ours == set(SNAPSHOT)
    routes = {name: app.amqp.router.route({}, name)["queue"].name for name in ours}
    assert routes == SNAPSHOT
    assert {t.value for t in TaskName} == set(SNAPSHOT)


def test_queue_names_are_the_contract():
    assert [q.value for q in Queue] == [
        "analyze.interactive", "analyze.bulk", "reports", "webhooks", "maintenance", "ingest",
    ]


def test_analysis_task_survives_worker_loss(app):
    task = app.tasks["dermasentinel.analysis.run"]
    assert task.acks_late and task.reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["queue_order_strategy"] == "priority"


def test_worker_roles_consume_every_queue_and_only_known_ones():
    from cli.main import ROLES
    from shared.queues import ROLE_QUEUES

    consumed = {role: set(ROLES[role][0].split(",")) for role in ROLES}
    assert consumed["all"] == {q.value for q in Queue}
    assert set().union(*(consumed[role] for role in ("gpu", "cpu", "io"))) == consumed["all"]
    assert consumed["gpu"] == {"analyze.interactive", "analyze.bulk"}
    assert set(ROLE_QUEUES) == set(ROLES)
