"""The fhir-subscription destination (issue 23), called as plain functions against real
Postgres and a real loopback receiver: filters and numbering at fan-out, the notification each
attempt carries, and which Subscriptions are due a heartbeat."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import select, update

from devstack import Receiver
from shared import fhir_subscriptions as fs
from shared.clock import iso, utcnow
from shared.db import session_scope
from shared.events import new_event_id
from shared.security import secret_box
from shared.tables import Event, WebhookDelivery, WebhookEndpoint
from worker.fhir_subscriptions import due_heartbeats, send_heartbeats
from worker.webhooks import deliver_one, dispatch_event

BATCH = str(uuid.uuid4())


@pytest.fixture(scope="module")
def quiet(settings):
    """A database of its own, with wake-ups sent to a Redis database no worker reads (as in
    tests/worker/test_webhook_dispatch.py: the live dispatcher would otherwise take these)."""
    from shared.context import AppContext
    from shared.migrate import scratch_database

    base = settings.broker_url.rsplit("/", 1)[0]
    with scratch_database(settings.database_url, "dsfhirsub") as url:
        ctx = AppContext(settings.model_copy(update={"broker_url": f"{base}/15", "database_url": url}))
        yield ctx
        ctx.close()


@pytest.fixture
def tenant_id(quiet):
    from shared.tenants import issue_key

    with session_scope(quiet.session_factory) as session:
        tenant, _ = issue_key(session, f"fhirsub-{uuid.uuid4().hex[:10]}")
    return tenant.id


def subscribe(context, tenant_id, url, *, topic=fs.ANALYSIS_FINALIZED, filters=(), content="id-only",
              heartbeat=None, headers=(), **columns) -> uuid.UUID:
    config = fs.SubscriptionConfig(topic=topic.url, filters=list(filters),
                                   criteria=[fs.parse_filter(f) for f in filters], content=content,
                                   heartbeat_period=heartbeat)
    with session_scope(context.session_factory) as session:
        endpoint = WebhookEndpoint(
            tenant_id=tenant_id, kind=fs.KIND, url=url, events=list(topic.events),
            secret_encrypted=secret_box(context.settings).seal(fs.seal_headers(list(headers))),
            config=config.model_dump(mode="json"), **{"enabled": True, **columns},
        )
        session.add(endpoint)
        session.flush()
        return endpoint.id


def analysis_event(context, tenant_id, type_="analysis.succeeded", batch_id=BATCH) -> tuple[str, str]:
    analysis_id = str(uuid.uuid4())
    event_id = new_event_id()
    with session_scope(context.session_factory) as session:
        session.add(Event(id=event_id, tenant_id=tenant_id, type=type_, payload={
            "type": type_, "timestamp": iso(utcnow()),
            "data": {"id": analysis_id, "status": "succeeded", "external_id": None, "batch_id": batch_id},
        }))
    return event_id, analysis_id


def deliveries(context, endpoint_id):
    with context.session_factory() as session:
        return session.execute(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.created_at)
        ).scalars().all()


def counter(context, endpoint_id) -> int:
    with context.session_factory() as session:
        return session.get(WebhookEndpoint, endpoint_id).config["events_since_start"]


def test_fan_out_filters_by_batch_and_numbers_each_event_once(quiet, tenant_id):
    wanted = subscribe(quiet, tenant_id, "http://127.0.0.1:9/x", filters=[f"DiagnosticReport?batch={BATCH}"])
    everything = subscribe(quiet, tenant_id, "http://127.0.0.1:9/y")
    reports = subscribe(quiet, tenant_id, "http://127.0.0.1:9/z", topic=fs.REPORT_READY)
    first, _ = analysis_event(quiet, tenant_id)
    other_batch, _ = analysis_event(quiet, tenant_id, batch_id=str(uuid.uuid4()))
    second, _ = analysis_event(quiet, tenant_id, type_="analysis.rejected")
    for event_id in (first, other_batch, second):
        dispatch_event(quiet, event_id)
    assert dispatch_event(quiet, first) == 0, "a second fan-out creates nothing, numbers nothing"
    assert [d.event_id for d in deliveries(quiet, wanted)] == [first, second]
    assert [d.event_id for d in deliveries(quiet, everything)] == [first, other_batch, second]
    assert deliveries(quiet, reports) == [], "another topic's events"
    with quiet.session_factory() as session:
        assert [fs.number_of(session, wanted, e) for e in (first, other_batch, second)] == [1, None, 2]
        assert [fs.number_of(session, everything, e) for e in (first, other_batch, second)] == [1, 2, 3]
    assert counter(quiet, wanted) == 2 and counter(quiet, everything) == 3


def test_an_attempt_posts_the_numbered_notification_with_the_channel_headers(quiet, tenant_id):
    with Receiver(503, 200) as receiver:
        subscription = subscribe(quiet, tenant_id, receiver.url, headers=["Authorization: Bearer ehr-token"])
        dispatch_event(quiet, analysis_event(quiet, tenant_id)[0])  # numbered 1
        event_id, analysis_id = analysis_event(quiet, tenant_id)
        dispatch_event(quiet, event_id)  # numbered 2
        delivery = next(d for d in deliveries(quiet, subscription) if d.event_id == event_id)
        assert deliver_one(quiet, delivery.id) == "pending", "503: retried on the schedule"
        with session_scope(quiet.session_factory) as session:
            session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id)
                            .values(next_attempt_at=utcnow()))
        assert deliver_one(quiet, delivery.id) == "delivered"
        first, second = receiver.requests
    for request in (first, second):
        assert request.headers["content-type"] == "application/fhir+json"
        assert request.headers["authorization"] == "Bearer ehr-token"
        bundle = json.loads(request.body)
        Bundle.model_validate(bundle)
        status = bundle["entry"][0]["resource"]
        assert status["resourceType"] == "SubscriptionStatus" and status["type"] == "event-notification"
        (notified,) = status["notificationEvent"]
        assert notified["eventNumber"] == "2", "every retry carries the number the event was given"
        assert notified["focus"]["identifier"]["value"] == analysis_id
    assert json.loads(first.body)["entry"][0]["resource"]["status"] == "active"
    assert json.loads(second.body)["entry"][0]["resource"]["status"] == "error", "the 503 is reported"


def test_heartbeats_are_due_after_the_period_of_silence(quiet, tenant_id):
    now = utcnow()
    long_ago = now - timedelta(minutes=5)
    due = subscribe(quiet, tenant_id, "http://127.0.0.1:9/a", heartbeat=2, created_at=long_ago)
    recent = subscribe(quiet, tenant_id, "http://127.0.0.1:9/b", heartbeat=600, created_at=long_ago)
    subscribe(quiet, tenant_id, "http://127.0.0.1:9/c", created_at=long_ago)  # no heartbeat asked for
    subscribe(quiet, tenant_id, "http://127.0.0.1:9/d", heartbeat=2, created_at=long_ago, enabled=False)
    subscribe(quiet, tenant_id, "http://127.0.0.1:9/e", heartbeat=2, created_at=long_ago, failing_since=long_ago)
    ended = subscribe(quiet, tenant_id, "http://127.0.0.1:9/f", heartbeat=2, created_at=long_ago)
    with session_scope(quiet.session_factory) as session:
        endpoint = session.get(WebhookEndpoint, ended)
        endpoint.config = {**endpoint.config, "end": iso(now - timedelta(seconds=1))}

    def due_now(at):
        with quiet.session_factory() as session:
            return {row[0] for row in due_heartbeats(session, at) if row[1] == tenant_id}

    assert due_now(now) == {due}
    send_heartbeats(quiet, now)
    send_heartbeats(quiet, now + timedelta(seconds=5))  # again before its fan-out: no second one
    with quiet.session_factory() as session:
        (heartbeat,) = session.execute(select(Event).where(Event.only_endpoint_id == due,
                                                           Event.type == fs.HEARTBEAT_EVENT)).scalars().all()
    dispatch_event(quiet, heartbeat.id)
    assert [d.event_id for d in deliveries(quiet, due)] == [heartbeat.id]
    assert due_now(utcnow() + timedelta(seconds=1)) == set(), "its delivery too"
    assert due_now(utcnow() + timedelta(seconds=3)) == {due}, "2 s of silence later, the next one"
    assert recent in due_now(utcnow() + timedelta(seconds=601))


def test_a_heartbeat_is_rendered_as_one(quiet, tenant_id):
    with Receiver(200) as receiver:
        subscription = subscribe(quiet, tenant_id, receiver.url, heartbeat=10)
        with session_scope(quiet.session_factory) as session:
            event_id = fs.record_notification(session, None, tenant_id=tenant_id, subscription_id=subscription,
                                              event_type=fs.HEARTBEAT_EVENT)
        dispatch_event(quiet, event_id)
        (delivery,) = deliveries(quiet, subscription)
        assert deliver_one(quiet, delivery.id) == "delivered"
        (request,) = receiver.requests
    bundle = json.loads(request.body)
    Bundle.model_validate(bundle)
    assert len(bundle["entry"]) == 1
    status = bundle["entry"][0]["resource"]
    assert status["type"] == "heartbeat" and status["topic"] == fs.ANALYSIS_FINALIZED.url
    assert status["subscription"]["reference"].endswith(f"Subscription/{subscription}")
