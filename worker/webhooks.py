"""Fan-out of outbox events to endpoints, and signed delivery with retries.

Each delivery is its own task on the ``webhooks`` queue, so one dead receiver never
holds up another endpoint, and never the GPU queue. Retries are scheduled in Postgres
(``next_attempt_at``) and woken by the periodic dispatcher, so a three-day schedule
survives restarts.

A delivery whose wake-up has been sent, or whose attempt is in flight, holds a lease:
``next_attempt_at`` moves past it (so duplicate wake-ups find nothing to do) and
``leased_at`` says when it was taken. A wake-up lost with the broker, or a worker killed
mid-send, is found by ``dispatch_due`` once the ``webhooks`` lane is empty and the lease is
``RESEND_AFTER_SECONDS`` old (and older than a send can last), or at the latest when the
2-minute lease runs out with the lane still busy.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import lru_cache, partial

import httpx
import redis
from kombu.exceptions import OperationalError
from opentelemetry.trace import SpanKind, StatusCode
from redis.exceptions import LockError
from redis.lock import Lock
from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared import tracing
from shared.clock import utcnow
from shared.config import Settings
from shared.context import AppContext
from shared.db import after_commit, session_scope
from shared.events import undispatched_event_ids
from shared.jobs import enqueue_delivery, enqueue_event_dispatch
from shared.logs import log_context
from shared.metrics import WEBHOOK_DELIVERIES, WEBHOOK_DELIVERY_SECONDS
from shared.queues import Queue
from shared.security import secret_box
from shared.tables import DeliveryStatus, Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.webhook_signing import signing_secrets
from worker.delivery import AttemptResult, deliver, next_attempt_delay
from worker.destinations import WEBHOOK, Claim, destination, register
from worker.maintenance import broker_queue_length

log = logging.getLogger(__name__)
WAKE_LEASE = timedelta(minutes=2)
# A tenant at its concurrency limit: try this delivery again in about this long.
TENANT_BUSY_DELAY_S = 2.0
SLOT_KEY = "dermasentinel:webhook-slot"


def _subscribed(endpoint: WebhookEndpoint, event: Event) -> bool:
    if event.only_endpoint_id is not None:
        return endpoint.id == event.only_endpoint_id
    if endpoint.events and event.type not in endpoint.events:
        return False
    return endpoint.kind == WEBHOOK or destination(endpoint.kind).matches(endpoint, event)


def _analysis_of(event: Event) -> uuid.UUID | None:
    """The analysis an ``analysis.*`` event reports on (its ``data.id``); None for others."""
    if not event.type.startswith("analysis."):
        return None
    try:
        return uuid.UUID(str(event.payload["data"]["id"]))
    except (KeyError, TypeError, ValueError):
        return None


def _candidates(session: Session, event: Event) -> list[WebhookEndpoint]:
    """The endpoints that may get this event: the one a test event names; else the tenant's
    enabled tenant-wide endpoints, plus the per-request webhook of the event's analysis (a
    per-request endpoint never sees another analysis' events, nor batch events)."""
    if event.only_endpoint_id is not None:
        return list(session.execute(
            select(WebhookEndpoint).where(
                WebhookEndpoint.id == event.only_endpoint_id, WebhookEndpoint.tenant_id == event.tenant_id
            )
        ).scalars())
    # Two indexed lookups rather than one OR: the tenant-wide rows have their own partial index.
    shared = list(session.execute(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == event.tenant_id,
            WebhookEndpoint.analysis_id.is_(None),
            WebhookEndpoint.enabled.is_(True),
        )
    ).scalars())
    analysis_id = _analysis_of(event)
    if analysis_id is None:
        return shared
    own = session.execute(
        select(WebhookEndpoint).where(
            WebhookEndpoint.analysis_id == analysis_id,
            WebhookEndpoint.tenant_id == event.tenant_id,
            WebhookEndpoint.enabled.is_(True),
        )
    ).scalars()
    return shared + list(own)


def _wake_lease(now: datetime) -> dict:
    """The columns of a delivery whose wake-up is being sent now."""
    return {"next_attempt_at": now + WAKE_LEASE, "leased_at": now}


def dispatch_event(context: AppContext, event_id: str) -> int:
    """Create one delivery per subscribed endpoint (once), then wake their senders."""
    with session_scope(context.session_factory) as session:
        now = utcnow()
        # Issue 27: marked dispatched as it is read, one statement. A concurrent fan-out of the
        # same event waits for this one's commit and then finds it dispatched (nothing to do);
        # if this one rolls back, the event is still undispatched for the next.
        event = session.execute(
            update(Event)
            .where(Event.id == event_id, Event.dispatched_at.is_(None))
            .values(dispatched_at=now)
            .returning(Event)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if event is None:
            return 0
        endpoints = _candidates(session, event)
        created: list[uuid.UUID] = []
        for endpoint in endpoints:
            if not _subscribed(endpoint, event):
                continue
            delivery_id = session.execute(
                insert(WebhookDelivery)
                .values(
                    id=uuid.uuid4(),
                    tenant_id=event.tenant_id,
                    endpoint_id=endpoint.id,
                    event_id=event.id,
                    **_wake_lease(now),
                )
                .on_conflict_do_nothing(constraint="uq_webhook_deliveries_endpoint_event")
                .returning(WebhookDelivery.id)
            ).scalar_one_or_none()
            if delivery_id is not None:
                created.append(delivery_id)
        for delivery_id in created:
            after_commit(session, partial(enqueue_delivery, context.celery, delivery_id))
    return len(created)


class SignedWebhook:
    """The ``webhook`` kind: the event, POSTed and signed as Standard Webhooks say."""

    kind = WEBHOOK

    def matches(self, endpoint: WebhookEndpoint, event: Event) -> bool:
        return True

    def send(self, context: AppContext, claim: Claim, client: httpx.Client | None) -> AttemptResult:
        settings = context.settings
        return deliver(
            claim.url,
            claim.secrets,
            claim.msg_id,
            claim.body,
            allow_cidrs=settings.webhook_allow_cidrs,
            timeout=settings.webhook_timeout_seconds,
            connect_timeout=settings.webhook_connect_timeout_seconds,
            client=client,
            tenant_id=claim.tenant_id,
        )


register(SignedWebhook())


def deliver_one(context: AppContext, delivery_id: uuid.UUID, client: httpx.Client | None = None) -> str | None:
    """One signed attempt, fair between tenants and holding no database connection while
    it waits on the receiver.

    A short transaction claims the delivery (its `next_attempt_at` moves past the send, so
    a duplicate wake-up finds nothing to do and a crashed worker's claim runs out), the POST
    runs with no session open, and a second short transaction records the outcome. A tenant
    holds at most `WEBHOOK_TENANT_CONCURRENCY` sends at once across all io workers; past
    that its deliveries are pushed back a few seconds (not counted as attempts), so one
    tenant's dead receiver cannot take every io thread from the others.
    """
    settings = context.settings
    with _tenant_slots(settings).hold_for(context, delivery_id) as claim:
        if isinstance(claim, str) or claim is None:
            if claim is not None:
                WEBHOOK_DELIVERIES.labels(claim).inc()  # skipped (endpoint disabled) or deferred
            return claim
        # Issue 25: one span per attempt in the event's trace; `worker.delivery.send` hands the
        # receiver its traceparent, whatever the kind (webhook, FHIR, DICOMweb, Subscription).
        with tracing.span(f"deliver {claim.kind}", parent=claim.traceparent, kind=SpanKind.PRODUCER,
                          attributes={"dermasentinel.destination": claim.kind, "dermasentinel.event": claim.event_type,
                                      "dermasentinel.attempt": claim.attempt_count + 1}) as span:
            outcome = destination(claim.kind).send(context, claim, client)
            if span.is_recording() and not outcome.ok:
                span.set_status(StatusCode.ERROR, outcome.error_class or "failed")
    recorded = outcome.as_logged()
    status = _record(context, claim, recorded)
    _observe_attempt(claim, outcome, status, recorded)
    return status


def attempt_line(attempt: int, result: str, outcome: AttemptResult, recorded: AttemptResult) -> str:
    """The log line of one attempt, in the delivery record's words (issue 25: the record said
    `no_response` where the log said `connect_error`): the class the tenant's record shows, and,
    where the record hides it (an internal target, docs/SECRETS_AND_WEBHOOKS.md), what happened."""
    error_class = recorded.error_class or "ok"
    if outcome.error_class != recorded.error_class:
        error_class += f", cause {outcome.error_class} (an internal target: not in its record)"
    latency = None if outcome.latency_ms is None else round(outcome.latency_ms)
    return f"webhook attempt {attempt}: {result} (status {recorded.status_code}, {error_class}, {latency} ms)"


def _observe_attempt(claim: Claim, outcome: AttemptResult, status: str | None, recorded: AttemptResult) -> None:
    """One line and the metrics per attempt; the receiver's URL stays out (it may be internal)."""
    if outcome.ok:
        result = "delivered"
    elif status == DeliveryStatus.failed:
        result = "failed"  # the last attempt of the schedule, or the endpoint was disabled
    else:
        result = "retry"
    WEBHOOK_DELIVERIES.labels(result).inc()
    if outcome.latency_ms is not None:
        WEBHOOK_DELIVERY_SECONDS.labels(result).observe(outcome.latency_ms / 1000.0)
    with log_context(tenant_id=claim.tenant_id, delivery_id=claim.delivery_id, event_id=claim.msg_id):
        log.info("%s", attempt_line(claim.attempt_count + 1, result, outcome, recorded))


def _claim(context: AppContext, delivery_id: uuid.UUID, slot_free: Callable[[uuid.UUID], bool]) -> Claim | str | None:
    settings = context.settings
    with session_scope(context.session_factory) as session:
        # Issue 27: the delivery (locked), its endpoint and its event in one statement.
        row = session.execute(
            select(WebhookDelivery, WebhookEndpoint, Event)
            .outerjoin(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .outerjoin(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.id == delivery_id)
            .with_for_update(of=WebhookDelivery, skip_locked=True)
        ).one_or_none()
        now = utcnow()
        if row is None:
            return None
        delivery, endpoint, event = row
        if delivery.status != DeliveryStatus.pending:
            return None
        if delivery.next_attempt_at and delivery.next_attempt_at > now + WAKE_LEASE + timedelta(seconds=1):
            return None  # a duplicate wake-up for an attempt scheduled later, or one in flight
        if endpoint is None or event is None:
            return None
        # A disabled endpoint gets nothing more; only the first attempt of a test event the
        # tenant asked for goes out (to check a receiver before re-enabling it), never retries.
        explicit_test = event.only_endpoint_id == endpoint.id and delivery.attempt_count == 0
        if not endpoint.enabled and not explicit_test:
            delivery.status = DeliveryStatus.skipped
            delivery.last_error = f"endpoint disabled: {endpoint.disabled_reason or 'by the tenant'}"
            delivery.next_attempt_at = delivery.leased_at = None
            return delivery.status
        if not slot_free(delivery.tenant_id):
            delivery.next_attempt_at = now + timedelta(seconds=TENANT_BUSY_DELAY_S * random.uniform(0.5, 1.5))
            delivery.leased_at = None  # no wake-up is out: dispatch_due sends one when it is due
            return "deferred"
        box = secret_box(settings)
        secrets = signing_secrets(
            box.open(endpoint.secret_encrypted),
            box.open(endpoint.previous_secret_encrypted) if endpoint.previous_secret_encrypted else None,
            endpoint.previous_secret_expires_at,
            now,
        )
        # In flight: past the duplicate-wake-up horizon until the send is over; if this
        # worker dies, the dispatcher wakes the delivery again once this passes.
        delivery.next_attempt_at = now + WAKE_LEASE + timedelta(seconds=settings.webhook_timeout_seconds + 5)
        delivery.leased_at = now
        return Claim(
            delivery_id=delivery.id,
            attempt_count=delivery.attempt_count,
            tenant_id=delivery.tenant_id,
            endpoint_id=endpoint.id,
            kind=endpoint.kind,
            url=endpoint.url,
            msg_id=event.id,
            event_type=event.type,
            payload=event.payload,
            body=json.dumps(event.payload, separators=(",", ":"), sort_keys=True),
            config=dict(endpoint.config or {}),
            secrets=secrets,
            traceparent=event.traceparent,
        )


def _record(context: AppContext, claim: Claim, outcome: AttemptResult) -> str | None:
    settings = context.settings
    schedule = settings.webhook_retry_schedule
    with session_scope(context.session_factory) as session:
        # Issue 27: the delivery (locked) and its endpoint in one statement.
        row = session.execute(
            select(WebhookDelivery, WebhookEndpoint)
            .outerjoin(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.id == claim.delivery_id)
            .with_for_update(of=WebhookDelivery)
        ).one_or_none()
        if row is None:
            return None  # deleted
        delivery, endpoint = row
        taken_over = delivery.attempt_count != claim.attempt_count
        if delivery.status != DeliveryStatus.pending or taken_over:
            return None  # deleted, resent by hand or taken over while we were sending
        if endpoint is None:
            return None
        now = utcnow()
        delivery.attempt_count += 1
        delivery.leased_at = None
        delivery.last_status_code = outcome.status_code
        delivery.last_error = outcome.error[:500] if outcome.error else None
        session.add(
            WebhookAttempt(
                delivery_id=delivery.id,
                status_code=outcome.status_code,
                latency_ms=outcome.latency_ms,
                error=delivery.last_error,
                response_excerpt=outcome.response_excerpt,
            )
        )
        if outcome.ok:
            delivery.status = DeliveryStatus.delivered
            delivery.delivered_at = now
            delivery.next_attempt_at = None
            endpoint.failing_since = None
            return delivery.status

        endpoint.failing_since = endpoint.failing_since or now
        if outcome.disable_endpoint:
            _disable(endpoint, "the receiver answered 410 Gone")
        elif now - endpoint.failing_since > timedelta(days=settings.webhook_disable_after_days):
            _disable(endpoint, f"failing continuously for over {settings.webhook_disable_after_days} days")
        delay = next_attempt_delay(delivery.attempt_count, schedule) if endpoint.enabled else None
        if delay is None:
            delivery.status = DeliveryStatus.failed
            delivery.next_attempt_at = None
        else:
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        return delivery.status


class TenantSlots:
    """At most `limit` concurrent sends per tenant across every io worker: `limit` Redis
    locks per tenant (redis-py's Lock, with a TTL so a crashed worker's slot frees itself)."""

    def __init__(self, client: redis.Redis, limit: int, ttl_s: float) -> None:
        self.client, self.limit, self.ttl_s = client, limit, ttl_s

    @contextmanager
    def hold_for(self, context: AppContext, delivery_id: uuid.UUID) -> Iterator[Claim | str | None]:
        """Claim the delivery while taking one of its tenant's slots; the slot is held
        until the block ends."""
        held: list[Lock] = []

        def slot_free(tenant_id: uuid.UUID) -> bool:
            for index in random.sample(range(self.limit), self.limit):
                lock = self.client.lock(f"{SLOT_KEY}:{tenant_id}:{index}", timeout=self.ttl_s)
                if lock.acquire(blocking=False):
                    held.append(lock)
                    return True
            return False

        try:
            yield _claim(context, delivery_id, slot_free)
        finally:
            for lock in held:
                try:
                    lock.release()
                except LockError:
                    pass  # expired already: the TTL freed it


def _tenant_slots(settings: Settings) -> TenantSlots:
    return TenantSlots(
        _redis(settings.broker_url),
        settings.webhook_tenant_concurrency,
        settings.webhook_timeout_seconds + 30,
    )


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def _disable(endpoint: WebhookEndpoint, reason: str) -> None:
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)


def lost_after(settings: Settings) -> timedelta:
    """How old a lease must be, with the ``webhooks`` lane empty, before its wake-up or its
    sender counts as lost: the resend threshold, and never less than a send can last."""
    return timedelta(seconds=max(settings.resend_after_seconds, settings.webhook_timeout_seconds + 5))


def _lane_empty(context: AppContext) -> bool:
    """Nothing waits in the ``webhooks`` lane (False when the broker cannot say)."""
    try:
        return broker_queue_length(context, Queue.webhooks.value) == 0
    except (redis.RedisError, OperationalError, OSError):  # broker away: the 2-minute lease still covers it
        return False


def dispatch_due(context: AppContext, limit: int = 500) -> dict[str, int]:
    """Wake deliveries whose retry time has come or whose lease was lost, and events whose
    first wake-up was lost."""
    now = utcnow()
    due_now = WebhookDelivery.next_attempt_at <= now
    if _lane_empty(context):
        # No wake-up can be waiting, and a send leased this long ago is over: the wake-up
        # went down with the broker, or the worker died holding it.
        due_now = or_(due_now, WebhookDelivery.leased_at < now - lost_after(context.settings))
    with session_scope(context.session_factory) as session:
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
            .where(WebhookDelivery.status == DeliveryStatus.pending, due_now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        due = [delivery_id for delivery_id, _ in rows]
        lost = sum(1 for _, next_attempt_at in rows if next_attempt_at is not None and next_attempt_at > now)
        if due:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(due))
                .values(**_wake_lease(now))
                .execution_options(synchronize_session=False)
            )
        for delivery_id in due:
            after_commit(session, partial(enqueue_delivery, context.celery, delivery_id))
        stale_events = undispatched_event_ids(session, now - timedelta(seconds=30), limit)
        for event_id in stale_events:
            after_commit(session, partial(enqueue_event_dispatch, context.celery, event_id))
    if lost or stale_events:
        log.info("webhooks: woke %d deliveries whose wake-up or sender was lost, re-sent %d event dispatches",
                 lost, len(stale_events))
    return {"deliveries": len(due), "lost": lost, "events": len(stale_events)}
