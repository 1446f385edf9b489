"""api.services.webhook_endpoints: registration (SSRF check, quota, secret shown once),
changes, secret rotation, test events (rate-limited on Redis), deliveries and re-sends."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update

from api.problems import NotFound, Unprocessable
from api.services import webhook_endpoints as endpoints
from shared.clock import utcnow
from shared.events import TEST_EVENT, record_event
from shared.schemas import WebhookEndpointIn, WebhookEndpointPatch, WebhookTestData
from shared.security import secret_box
from shared.tables import DeliveryStatus, Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint

RECEIVER = "http://127.0.0.1:9/hooks"  # loopback is allowed in the test settings; nothing listens


def _register(context, unit, tenant, url: str = RECEIVER, **fields) -> tuple[WebhookEndpoint, str]:
    with unit() as session:
        return endpoints.create(context, session, tenant, WebhookEndpointIn(url=url, **fields))


def test_registration_returns_the_secret_once_and_stores_it_only_encrypted(context, unit, tenant):
    endpoint, secret = _register(context, unit, tenant, events=["analysis.failed", "analysis.succeeded"] * 2)
    assert secret.startswith("whsec_")
    assert endpoint.events == ["analysis.failed", "analysis.succeeded"], "sorted, once each"
    with unit() as session:
        stored = session.get(WebhookEndpoint, endpoint.id)
    assert secret not in stored.secret_encrypted
    assert secret_box(context.settings).open(stored.secret_encrypted) == secret
    assert stored.url == RECEIVER and stored.enabled


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://10.20.30.40/hook", "refused"),  # private, and not in WEBHOOK_ALLOW_CIDRS
        ("http://169.254.169.254/latest/meta-data", "refused"),  # cloud metadata, always
    ],
)
def test_internal_targets_are_refused_at_registration(context, unit, tenant, url, why):
    with pytest.raises(Unprocessable, match=why) as refused:
        _register(context, unit, tenant, url=url)
    assert refused.value.status == 422
    with unit() as session:
        assert endpoints.list_all(session, tenant) == []


def test_unknown_event_types_are_named_in_the_refusal(context, unit, tenant):
    with pytest.raises(Unprocessable, match=r"unknown event types \['analysis.exploded'\]"):
        _register(context, unit, tenant, events=["analysis.succeeded", "analysis.exploded"])


def test_endpoints_past_the_quota_are_refused(with_settings, unit, tenant):
    limited = with_settings(webhook_endpoints_per_tenant=1)
    _register(limited, unit, tenant)
    with pytest.raises(endpoints.EndpointQuotaExceeded) as refused:
        _register(limited, unit, tenant, url=RECEIVER + "/second")
    assert refused.value.status == 409 and refused.value.code == "quota_exceeded"
    with unit() as session:
        assert len(endpoints.list_all(session, tenant)) == 1


def test_rotation_keeps_the_old_secret_signing_for_the_grace_period_or_ends_it_now(context, unit, tenant):
    endpoint, first = _register(context, unit, tenant)
    box = secret_box(context.settings)
    with unit() as session:
        rotated, second = endpoints.rotate_secret(context, session, tenant, endpoint.id, grace_hours=2)
    assert second != first and box.open(rotated.secret_encrypted) == second
    assert box.open(rotated.previous_secret_encrypted) == first
    remaining = rotated.previous_secret_expires_at - utcnow()
    assert timedelta(hours=1, minutes=59) < remaining <= timedelta(hours=2)
    with unit() as session:
        ended, third = endpoints.rotate_secret(context, session, tenant, endpoint.id, grace_hours=0)
    assert box.open(ended.secret_encrypted) == third
    assert ended.previous_secret_encrypted is None and ended.previous_secret_expires_at is None


def test_disabling_and_re_enabling_an_endpoint(context, unit, tenant):
    endpoint, _ = _register(context, unit, tenant)
    with unit() as session:
        session.get(WebhookEndpoint, endpoint.id).failing_since = utcnow()
    with unit() as session:
        off = endpoints.update(session, tenant, endpoint.id, WebhookEndpointPatch(enabled=False))
    assert not off.enabled and off.disabled_reason == "disabled by the tenant"
    with unit() as session:
        on = endpoints.update(session, tenant, endpoint.id, WebhookEndpointPatch(enabled=True, description="EHR"))
    assert on.enabled and on.disabled_reason is None and on.failing_since is None and on.description == "EHR"


def test_another_tenants_endpoint_is_not_found_for_every_operation(context, unit, tenant, other_tenant):
    theirs, _ = _register(context, unit, other_tenant)
    operations = [
        lambda s: endpoints.get(s, tenant, theirs.id),
        lambda s: endpoints.update(s, tenant, theirs.id, WebhookEndpointPatch(enabled=False)),
        lambda s: endpoints.rotate_secret(context, s, tenant, theirs.id, grace_hours=0),
        lambda s: endpoints.delete(s, tenant, theirs.id),
        lambda s: endpoints.deliveries(s, tenant, theirs.id, limit=10),
        lambda s: endpoints.send_test(context, s, tenant, theirs.id),
    ]
    for operation in operations:
        with pytest.raises(NotFound), unit() as session:
            operation(session)
    with unit() as session:
        untouched = endpoints.get(session, other_tenant, theirs.id)
    assert untouched.enabled and untouched.secret_encrypted == theirs.secret_encrypted


def test_a_deleted_endpoint_is_gone(context, unit, tenant):
    endpoint, _ = _register(context, unit, tenant)
    with unit() as session:
        endpoints.delete(session, tenant, endpoint.id)
    with pytest.raises(NotFound), unit() as session:
        endpoints.get(session, tenant, endpoint.id)


def test_deleting_an_endpoint_while_an_attempt_is_being_recorded_waits_for_it_instead_of_deadlocking(
    context, unit, tenant, wait
):
    endpoint, _ = _register(context, unit, tenant)
    with unit() as session:
        event_id = record_event(session, None, tenant_id=tenant.id, type=TEST_EVENT,
                                data=WebhookTestData(endpoint_id=endpoint.id, message="a delivery to hold"))
        delivery = WebhookDelivery(tenant_id=tenant.id, endpoint_id=endpoint.id, event_id=event_id,
                                   next_attempt_at=utcnow() + timedelta(hours=1))
        session.add(delivery)
    with context.session_factory() as recorder, context.session_factory() as request:
        # An io worker recording a failed attempt (worker.webhooks._record) holds the delivery
        # row first and writes its endpoint's failing_since after.
        recorder.execute(select(WebhookDelivery).where(WebhookDelivery.id == delivery.id).with_for_update())
        request_pid = request.execute(text("select pg_backend_pid()")).scalar_one()
        with ThreadPoolExecutor(1) as pool:
            deleting = pool.submit(lambda: (endpoints.delete(request, tenant, endpoint.id), request.commit()))
            with context.session_factory() as probe:
                wait(lambda: probe.execute(text("select wait_event_type = 'Lock' from pg_stat_activity where pid = :p"),
                                           {"p": request_pid}).scalar_one(),
                     timeout=10, message="the delete to wait for the delivery being recorded")
            recorder.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id)
                             .values(failing_since=utcnow()))
            recorder.commit()  # a deadlock would abort one of the two here
            deleting.result(timeout=30)
    with unit() as session:
        assert session.get(WebhookEndpoint, endpoint.id) is None
        assert session.get(WebhookDelivery, delivery.id) is None, "its delivery log goes with it"


def test_a_test_event_is_addressed_to_that_endpoint_alone_and_rate_limited(with_settings, unit, tenant):
    limited = with_settings(webhook_test_rate="2/minute")
    endpoint, _ = _register(limited, unit, tenant)
    sent = []
    for _ in range(2):
        with unit() as session:
            sent.append(endpoints.send_test(limited, session, tenant, endpoint.id))
    with unit() as session:
        events = session.execute(select(Event).where(Event.id.in_(sent))).scalars().all()
    assert {event.only_endpoint_id for event in events} == {endpoint.id}
    assert {event.type for event in events} == {"webhook.test"}
    with pytest.raises(endpoints.TooManyTestEvents) as limited_out, unit() as session:
        endpoints.send_test(limited, session, tenant, endpoint.id)
    assert limited_out.value.status == 429
    assert 1 <= int(limited_out.value.headers["Retry-After"]) <= 60
    assert limited_out.value.headers["RateLimit-Limit"] == "2"


def test_deliveries_come_newest_first_with_their_attempts_and_can_be_sent_again(context, unit, tenant):
    endpoint, _ = _register(context, unit, tenant)
    with unit() as session:
        event_ids = [endpoints.send_test(context, session, tenant, endpoint.id) for _ in range(2)]
    delivery_ids = []
    with unit() as session:
        for offset, event_id in enumerate(event_ids):
            delivery = WebhookDelivery(
                tenant_id=tenant.id, endpoint_id=endpoint.id, event_id=event_id,
                status=DeliveryStatus.failed, attempt_count=2, next_attempt_at=None,
                created_at=utcnow() + timedelta(seconds=offset),
            )
            session.add(delivery)
            session.flush()
            session.add_all([WebhookAttempt(delivery_id=delivery.id, status_code=code) for code in (503, 500)])
            delivery_ids.append(delivery.id)
    with unit() as session:
        listed = endpoints.deliveries(session, tenant, endpoint.id, limit=10)
    assert [delivery.id for delivery, _ in listed] == delivery_ids[::-1]
    assert all(len(attempts) == 2 for _, attempts in listed)
    before = utcnow()
    with unit() as session:
        endpoints.resend(context, session, tenant, endpoint.id, delivery_ids[0])
    with unit() as session:
        again = session.get(WebhookDelivery, delivery_ids[0])
    assert again.status == DeliveryStatus.pending and again.next_attempt_at >= before - timedelta(seconds=1)
    with pytest.raises(NotFound, match="no delivery"), unit() as session:
        endpoints.resend(context, session, tenant, endpoint.id, uuid.uuid4())


def test_a_redis_outage_does_not_block_test_events(with_settings, unit, tenant):
    # The limiter protects receivers; when its Redis cannot answer, test events still go out
    # (past a 1/hour limit here), and their wake-ups are left to the sweeper.
    endpoint, _ = _register(with_settings(), unit, tenant)
    broken = with_settings(webhook_test_rate="1/hour", broker_url="redis://127.0.0.1:1/0")
    endpoints._limiter.cache_clear()
    try:
        for _ in range(2):
            with unit() as session:
                event_id = endpoints.send_test(broken, session, tenant, endpoint.id)
            with unit() as session:
                assert session.get(Event, event_id) is not None
    finally:
        endpoints._limiter.cache_clear()
