"""Fan-out and delivery state, called as plain functions against real Postgres and a real
loopback receiver."""

from __future__ import annotations

import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update

from shared.analyses import utcnow
from shared.db import session_scope
from shared.events import record_event
from shared.models import WebhookDelivery, WebhookEndpoint
from shared.webhook_signing import generate_secret
from worker.webhooks import deliver_one, dispatch_event


@pytest.fixture
def quiet(context):
    """The same database, with wake-ups sent to a Redis database no worker reads, so a live
    worker elsewhere in the session cannot race these direct calls."""
    from shared.context import AppContext

    base = context.settings.broker_url.rsplit("/", 1)[0]
    ctx = AppContext(context.settings.model_copy(update={"broker_url": f"{base}/15"}))
    yield ctx
    ctx.close()


@pytest.fixture
def failing_receiver():
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            hits.append(self.headers["webhook-id"])
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", hits
    server.shutdown()
    server.server_close()


def _endpoint(context, tenant_id, url, events=()) -> WebhookEndpoint:
    with session_scope(context.session_factory) as session:
        endpoint = WebhookEndpoint(tenant_id=tenant_id, url=url, events=list(events), secret=generate_secret(),
                                   enabled=True)
        session.add(endpoint)
    return endpoint


def _event(context, tenant_id, type_="analysis.succeeded") -> str:
    with session_scope(context.session_factory) as session:
        return record_event(session, None, tenant_id=tenant_id, type=type_, data={"id": "x"})


def _deliveries(context, event_id):
    with context.session_factory() as session:
        return session.execute(select(WebhookDelivery).where(WebhookDelivery.event_id == event_id)).scalars().all()


def _make_due(context, delivery_id):
    with session_scope(context.session_factory) as session:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                        .values(next_attempt_at=utcnow()))


def test_fan_out_honours_filters_and_runs_once(quiet, tenant_key, failing_receiver):
    url, _ = failing_receiver
    wanted = _endpoint(quiet, tenant_key[0], url, ["analysis.succeeded"])
    _endpoint(quiet, tenant_key[0], url, ["batch.completed"])
    everything = _endpoint(quiet, tenant_key[0], url)
    event_id = _event(quiet, tenant_key[0])
    assert dispatch_event(quiet, event_id) == 2
    assert dispatch_event(quiet, event_id) == 0, "a second run creates no second delivery"
    assert {d.endpoint_id for d in _deliveries(quiet, event_id)} == {wanted.id, everything.id}


def test_retries_stop_when_the_schedule_is_exhausted(quiet, tenant_key, failing_receiver):
    url, hits = failing_receiver
    _endpoint(quiet, tenant_key[0], url)
    event_id = _event(quiet, tenant_key[0])
    dispatch_event(quiet, event_id)
    (delivery,) = _deliveries(quiet, event_id)
    schedule_length = len(quiet.settings.webhook_retry_schedule.split(","))
    for _ in range(schedule_length + 1):
        _make_due(quiet, delivery.id)
        deliver_one(quiet, delivery.id)
    (delivery,) = _deliveries(quiet, event_id)
    assert delivery.status == "failed"
    assert delivery.attempt_count == schedule_length + 1
    assert delivery.last_status_code == 503
    assert len(set(hits)) == 1, "every retry carries the same webhook-id"
    _make_due(quiet, delivery.id)
    assert deliver_one(quiet, delivery.id) is None, "a failed delivery is not sent again by itself"


def test_an_endpoint_failing_for_days_is_disabled(quiet, tenant_key, failing_receiver):
    url, _ = failing_receiver
    endpoint = _endpoint(quiet, tenant_key[0], url)
    with session_scope(quiet.session_factory) as session:
        session.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id)
                        .values(failing_since=utcnow() - timedelta(days=quiet.settings.webhook_disable_after_days + 1)))
    event_id = _event(quiet, tenant_key[0])
    dispatch_event(quiet, event_id)
    (delivery,) = _deliveries(quiet, event_id)
    _make_due(quiet, delivery.id)
    assert deliver_one(quiet, delivery.id) == "failed"
    with quiet.session_factory() as session:
        stored = session.get(WebhookEndpoint, endpoint.id)
    assert stored.enabled is False
    assert "failing continuously" in stored.disabled_reason
