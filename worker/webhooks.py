"""Fan-out of outbox events to endpoints, and signed delivery with retries.

Each delivery is its own task on the ``webhooks`` queue, so one dead receiver never
holds up another endpoint, and never the GPU queue. Retries are scheduled in Postgres
(``next_attempt_at``) and woken by the periodic dispatcher, so a three-day schedule
survives restarts.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert

from shared.analyses import utcnow
from shared.context import AppContext
from shared.db import after_commit, session_scope
from shared.events import undispatched_event_ids
from shared.jobs import enqueue_delivery, enqueue_event_dispatch
from shared.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.ssrf import parse_allow_cidrs
from worker.delivery import deliver, next_attempt_delay, parse_retry_schedule

log = logging.getLogger(__name__)
WAKE_LEASE = timedelta(minutes=2)


def _subscribed(endpoint: WebhookEndpoint, event: Event) -> bool:
    if event.only_endpoint_id is not None:
        return endpoint.id == event.only_endpoint_id
    return not endpoint.events or event.type in endpoint.events


def dispatch_event(context: AppContext, event_id: str) -> int:
    """Create one delivery per subscribed endpoint (once), then wake their senders."""
    with session_scope(context.session_factory) as session:
        event = session.execute(
            select(Event).where(Event.id == event_id).with_for_update(skip_locked=True)
        ).scalar_one_or_none()
        if event is None or event.dispatched_at is not None:
            return 0
        endpoints = session.execute(
            select(WebhookEndpoint).where(
                WebhookEndpoint.tenant_id == event.tenant_id,
                or_(WebhookEndpoint.enabled.is_(True), WebhookEndpoint.id == event.only_endpoint_id),
            )
        ).scalars()
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
                    next_attempt_at=utcnow() + WAKE_LEASE,
                )
                .on_conflict_do_nothing(constraint="uq_webhook_deliveries_endpoint_event")
                .returning(WebhookDelivery.id)
            ).scalar_one_or_none()
            if delivery_id is not None:
                created.append(delivery_id)
        event.dispatched_at = utcnow()
        for delivery_id in created:
            after_commit(session, lambda d=delivery_id: enqueue_delivery(context.celery, d))
    return len(created)


def deliver_one(context: AppContext, delivery_id: uuid.UUID, client=None) -> str | None:
    """One signed attempt. The row stays locked while sending so no two workers send the
    same delivery at once; the outcome schedules the next attempt or closes it."""
    settings = context.settings
    schedule = parse_retry_schedule(settings.webhook_retry_schedule)
    with session_scope(context.session_factory) as session:
        delivery = session.execute(
            select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update(skip_locked=True)
        ).scalar_one_or_none()
        now = utcnow()
        if delivery is None or delivery.status != "pending":
            return None
        if delivery.next_attempt_at and delivery.next_attempt_at > now + WAKE_LEASE + timedelta(seconds=1):
            return None  # a duplicate wake-up for an attempt scheduled later
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        event = session.get(Event, delivery.event_id)
        if endpoint is None or event is None:
            return None
        if not endpoint.enabled and event.only_endpoint_id != endpoint.id:
            delivery.status = "skipped"
            delivery.last_error = f"endpoint disabled: {endpoint.disabled_reason or 'by the tenant'}"
            delivery.next_attempt_at = None
            return delivery.status

        body = json.dumps(event.payload, separators=(",", ":"), sort_keys=True)
        outcome = deliver(
            endpoint.url,
            endpoint.secret,
            event.id,
            body,
            allow_cidrs=parse_allow_cidrs(settings.webhook_allow_cidrs),
            timeout=settings.webhook_timeout_seconds,
            client=client,
        )
        now = utcnow()
        delivery.attempt_count += 1
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
            delivery.status = "delivered"
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
            delivery.status = "failed"
            delivery.next_attempt_at = None
        else:
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        return delivery.status


def _disable(endpoint: WebhookEndpoint, reason: str) -> None:
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)


def dispatch_due(context: AppContext, limit: int = 500) -> dict[str, int]:
    """Wake deliveries whose retry time has come, and events whose first wake-up was lost."""
    now = utcnow()
    with session_scope(context.session_factory) as session:
        due = session.execute(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars().all()
        if due:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(due))
                .values(next_attempt_at=now + WAKE_LEASE)
                .execution_options(synchronize_session=False)
            )
        for delivery_id in due:
            after_commit(session, lambda d=delivery_id: enqueue_delivery(context.celery, d))
        stale_events = undispatched_event_ids(session, now - timedelta(seconds=30), limit)
        for event_id in stale_events:
            after_commit(session, lambda e=event_id: enqueue_event_dispatch(context.celery, e))
    return {"deliveries": len(due), "events": len(stale_events)}
