"""Fan-out and delivery state, called as plain functions against real Postgres and a real
loopback receiver."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from devstack import Receiver
from shared.clock import utcnow
from shared.db import session_scope
from shared.events import record_event
from shared.schemas import WebhookTestData
from shared.security import secret_box
from shared.tables import WebhookDelivery, WebhookEndpoint
from shared.webhook_signing import generate_secret
from worker.webhooks import deliver_one, dispatch_event


@pytest.fixture(scope="module")
def quiet(settings):
    """A database of its own (built by the migrations), with wake-ups sent to a Redis
    database no worker reads: the session's live dispatcher sweeps every pending delivery
    of the shared database, and would otherwise lock or lease these between a test's
    direct calls."""
    from shared.context import AppContext
    from shared.migrate import scratch_database

    base = settings.broker_url.rsplit("/", 1)[0]
    with scratch_database(settings.database_url, "dsquiet") as url:
        ctx = AppContext(settings.model_copy(update={"broker_url": f"{base}/15", "database_url": url}))
        yield ctx
        ctx.close()


@pytest.fixture
def tenant_key(quiet):
    """A fresh tenant in the quiet database."""
    from shared.tenants import issue_key

    with session_scope(quiet.session_factory) as session:
        tenant, key = issue_key(session, f"quiet-{uuid.uuid4().hex[:10]}")
    return tenant.id, key


@pytest.fixture
def failing_receiver():
    """A receiver answering 503 to everything: its URL, and the webhook-id of each request."""
    with Receiver(503) as receiver:
        yield receiver.url, receiver.webhook_ids


def _endpoint(context, tenant_id, url, events=()) -> WebhookEndpoint:
    with session_scope(context.session_factory) as session:
        endpoint = WebhookEndpoint(tenant_id=tenant_id, url=url, events=list(events), enabled=True,
                                   secret_encrypted=secret_box(context.settings).seal(generate_secret()))
        session.add(endpoint)
    return endpoint


def _event(context, tenant_id, type_="analysis.succeeded") -> str:
    with session_scope(context.session_factory) as session:
        data = WebhookTestData(endpoint_id=uuid.uuid4(), message="x")
        return record_event(session, None, tenant_id=tenant_id, type=type_, data=data)


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
    schedule_length = len(quiet.settings.webhook_retry_schedule)
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


@pytest.fixture
def ok_receiver():
    """A receiver answering 204 to everything: its URL, and the webhook-id of each request."""
    with Receiver(204) as receiver:
        yield receiver.url, receiver.webhook_ids


def test_a_tenant_at_its_concurrency_limit_waits_and_other_tenants_do_not(quiet, ok_receiver):
    from shared.tenants import issue_key
    from worker.webhooks import _tenant_slots

    url, hits = ok_receiver
    with session_scope(quiet.session_factory) as session:
        busy = issue_key(session, f"busy-{uuid.uuid4().hex[:8]}")[0].id
        calm = issue_key(session, f"calm-{uuid.uuid4().hex[:8]}")[0].id
    deliveries = {}
    for tenant_id in (busy, calm):
        _endpoint(quiet, tenant_id, url)
        event_id = _event(quiet, tenant_id)
        dispatch_event(quiet, event_id)
        (deliveries[tenant_id],) = _deliveries(quiet, event_id)

    slots = _tenant_slots(quiet.settings)
    held = [slots.client.lock(f"dermasentinel:webhook-slot:{busy}:{i}", timeout=30) for i in range(slots.limit)]
    assert all(lock.acquire(blocking=False) for lock in held), "every slot of the busy tenant is taken"
    try:
        assert deliver_one(quiet, deliveries[busy].id) == "deferred"
        assert deliver_one(quiet, deliveries[calm].id) == "delivered"
    finally:
        for lock in held:
            lock.release()
    with quiet.session_factory() as session:
        waiting = session.get(WebhookDelivery, deliveries[busy].id)
    assert waiting.status == "pending" and waiting.attempt_count == 0, "waiting is not a failed attempt"
    assert waiting.next_attempt_at - utcnow() < timedelta(seconds=10)
    assert len(hits) == 1

    _make_due(quiet, deliveries[busy].id)
    assert deliver_one(quiet, deliveries[busy].id) == "delivered", "a free slot lets it through"
    assert len(hits) == 2


def test_no_database_connection_is_held_while_the_receiver_thinks(quiet, tenant_key):
    import socket

    from worker.delivery import DeliveryClient

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    settings = quiet.settings.model_copy(update={"webhook_timeout_seconds": 1.5})
    from shared.context import AppContext

    ctx = AppContext(settings)
    try:
        _endpoint(ctx, tenant_key[0], f"http://127.0.0.1:{silent.getsockname()[1]}/")
        event_id = _event(ctx, tenant_key[0])
        dispatch_event(ctx, event_id)
        (delivery,) = _deliveries(ctx, event_id)
        checked_out = []
        with DeliveryClient() as client:
            sender = threading.Thread(target=lambda: checked_out.append(deliver_one(ctx, delivery.id, client)))
            sender.start()
            silent.settimeout(10)
            connection, _ = silent.accept()  # the worker is connected and waiting for a response
            in_use = ctx.engine.pool.checkedout()
            sender.join()
            connection.close()
        assert in_use == 0, "the send holds no pooled connection"
        assert checked_out == ["pending"]
    finally:
        silent.close()
        ctx.close()


def test_a_delivery_whose_wake_up_or_sender_was_lost_goes_out_once_the_lane_is_empty(quiet, tenant_key, ok_receiver):
    """A worker killed mid-send (or a wake-up lost with the broker) leaves a lease that
    would hold the delivery for two minutes; the dispatcher takes it back as soon as no
    wake-up can be waiting and no send can still be running."""
    import redis

    from shared.context import AppContext
    from worker.webhooks import _claim, dispatch_due, lost_after

    # Leases count as lost after 6 s here; the session's own dispatcher (beat, every 0.5 s)
    # waits 30 s, so it never takes this test's delivery while the test backdates it.
    short = AppContext(quiet.settings.model_copy(update={"resend_after_seconds": 5, "webhook_timeout_seconds": 1.0}))
    assert lost_after(short.settings).total_seconds() + 5 < lost_after(quiet.settings).total_seconds()
    url, hits = ok_receiver
    lane = redis.Redis.from_url(quiet.settings.broker_url)

    def lease_of(delivery_id):
        with quiet.session_factory() as session:
            return session.get(WebhookDelivery, delivery_id).leased_at

    def backdate(delivery_id, seconds):
        with session_scope(quiet.session_factory) as session:
            session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                            .values(leased_at=utcnow() - timedelta(seconds=seconds)))

    try:
        _endpoint(quiet, tenant_key[0], url)
        event_id = _event(quiet, tenant_key[0])
        dispatch_event(quiet, event_id)
        (delivery,) = _deliveries(quiet, event_id)
        assert delivery.leased_at is not None, "a sent wake-up is a lease"

        # A worker takes the wake-up off the lane, claims the delivery and dies before sending.
        lane.delete("webhooks")
        claim = _claim(quiet, delivery.id, lambda tenant_id: True)
        assert claim is not None and not isinstance(claim, str)
        claimed_at = lease_of(delivery.id)
        dispatch_due(short)
        assert lease_of(delivery.id) == claimed_at, "a send that may still be running is left alone"

        too_old = lost_after(short.settings).total_seconds() + 1
        backdate(delivery.id, too_old)
        lane.rpush("webhooks", "someone else's wake-up")
        dispatch_due(short)
        assert utcnow() - lease_of(delivery.id) > timedelta(seconds=too_old - 1), \
            "with wake-ups waiting in the lane, this one may be among them"

        lane.delete("webhooks")
        assert dispatch_due(short)["lost"] >= 1
        assert utcnow() - lease_of(delivery.id) < timedelta(seconds=5), "woken again with a fresh lease"
        assert lane.llen("webhooks") >= 1, "and its wake-up is on the lane"
        assert deliver_one(quiet, delivery.id) == "delivered"
        assert hits == [event_id], "sent once, under the event's webhook-id"
        assert lease_of(delivery.id) is None, "a recorded attempt holds no lease"
    finally:
        lane.delete("webhooks")
        lane.close()
        short.close()


def test_a_receiver_failing_now_is_counted_for_the_endpoint_alert(quiet, tenant_key, failing_receiver):
    """Issue 25: the API's backlog scrape counts enabled endpoints whose deliveries fail, and how
    long the longest has failed (the DermaSentinelEndpointFailing alert reads them)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from shared.metrics import BacklogCollector

    def scraped() -> dict[str, float]:
        registry = CollectorRegistry(auto_describe=False)
        collector = BacklogCollector(quiet.settings, timeout=5.0, cache_seconds=0.0)
        registry.register(collector)
        try:
            text = generate_latest(registry).decode()
        finally:
            collector.close()
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                if line.startswith("dermasentinel_endpoint")}

    # This module's database is shared by its tests: the receivers earlier tests left failing
    # are switched off, so the count starts at 0 whatever ran before.
    with session_scope(quiet.session_factory) as session:
        session.execute(update(WebhookEndpoint).values(enabled=False))
    assert scraped() == {"dermasentinel_endpoints_failing": 0.0, "dermasentinel_endpoint_failing_seconds": 0.0}
    url, _ = failing_receiver
    _endpoint(quiet, tenant_key[0], url)
    event_id = _event(quiet, tenant_key[0])
    dispatch_event(quiet, event_id)
    (delivery,) = _deliveries(quiet, event_id)
    _make_due(quiet, delivery.id)
    assert deliver_one(quiet, delivery.id) == "pending"  # a 503: retried later, failing since now
    failing = scraped()
    assert failing["dermasentinel_endpoints_failing"] == 1.0
    assert 0.0 < failing["dermasentinel_endpoint_failing_seconds"] < 120.0
