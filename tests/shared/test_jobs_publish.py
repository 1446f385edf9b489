"""Wake-ups held back until a block ends go out together, and a broker that is away costs the
caller a logged warning, never an error or a hang (issue 27)."""

from __future__ import annotations

import time
import uuid

import pytest

from devstack import free_port
from shared.jobs import make_celery, send, sends_together
from shared.queues import Queue, TaskName
from tests.conftest import unread_broker


@pytest.fixture
def broker(settings):
    """A Redis database no worker reads, emptied after the test."""
    with unread_broker(settings, 12) as (quiet, client):
        app = make_celery(quiet)
        yield app, client
        app.close()


def test_wake_ups_sent_in_a_block_reach_the_broker_together_when_it_ends(broker):
    app, client = broker
    ids = [str(uuid.uuid4()) for _ in range(3)]
    with sends_together():
        for analysis_id in ids:
            send(app, TaskName.build_report, Queue.reports, analysis_id)
        send(app, TaskName.dispatch_event, Queue.webhooks, "msg_1")
        with sends_together():  # a nested block publishes with the outer one
            send(app, TaskName.dispatch_event, Queue.webhooks, "msg_2")
        assert client.llen(Queue.reports.value) == 0 and client.llen(Queue.webhooks.value) == 0
    assert client.llen(Queue.reports.value) == 3 and client.llen(Queue.webhooks.value) == 2
    send(app, TaskName.build_report, Queue.reports, ids[0])  # outside a block: at once, as before
    assert client.llen(Queue.reports.value) == 4


def test_wake_ups_of_a_block_that_raised_still_go_out(broker):
    app, client = broker
    with pytest.raises(RuntimeError), sends_together():
        send(app, TaskName.build_report, Queue.reports, str(uuid.uuid4()))  # committed before the error
        raise RuntimeError("after the commit")
    assert client.llen(Queue.reports.value) == 1


def test_a_broker_that_is_away_at_the_end_of_a_block_is_logged_not_raised(settings, caplog):
    dead = make_celery(settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"}))
    started = time.monotonic()
    try:
        with sends_together():
            send(dead, TaskName.build_report, Queue.reports, str(uuid.uuid4()))
    finally:
        dead.close()
    assert time.monotonic() - started < 30, "a publish to a dead broker must fail fast, not hang"
    assert "the sweeper will retry it" in caplog.text
