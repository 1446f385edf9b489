"""The ``fhir-subscription`` destination: a FHIR Subscription's rest-hook notifications
(R5 Backport IG on R4B; issue 23; docs/FHIR_SUBSCRIPTIONS.md), and its heartbeats.

A Subscription is a ``webhook_endpoints`` row of this kind, so its notifications travel like
every webhook (worker/webhooks.py): one delivery per event, the tenant's concurrency slots, the
retry schedule, the delivery log, the SSRF guard (``worker.delivery.send``).

``matches`` is asked once per (Subscription, event), in the fan-out transaction that creates
the delivery (``worker.webhooks.dispatch_event``, the event row locked). When the Subscription
takes the event (its topic, its batch and patient filters, not past its ``end``) it also gives
the event the Subscription's next number: ``config.events_since_start`` goes up by one (an
``UPDATE`` of the endpoint row, which serialises concurrent fan-outs to this Subscription) and
a pre-dispatched outbox row (``NUMBERED_EVENT``, never delivered) records event → number. The
number is thus assigned once, with the delivery, in commit order, and never changes: every
retry carries it, ``$events`` finds the event by it, and erasing an analysis leaves a gap
rather than renumbering what the receiver already saw.

``send`` renders the notification (``shared.fhir_subscriptions.notification_bundle``) and POSTs
it as ``application/fhir+json`` with the Subscription's channel headers (sealed in
``secret_encrypted``; the claim opens them).
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta

import httpx
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, object_session

from shared.clock import utcnow
from shared.context import AppContext
from shared.db import session_scope
from shared.events import new_event_id
from shared.fhir_subscriptions import (
    HEARTBEAT_EVENT,
    NUMBERED_EVENT,
    OWN_EVENTS,
    TOPICS,
    NotificationStatus,
    SubscriptionConfig,
    headers_of,
    notification_bundle,
    number_of,
    numbered_key,
    passes_filters,
    record_notification,
    report_bundle,
    subscription_status,
    subscription_url,
    topic_event,
)
from shared.lifecycle import api_base
from shared.tables import Event, WebhookDelivery, WebhookEndpoint
from worker.delivery import AttemptResult, send
from worker.destinations import FHIR_SUBSCRIPTION, Claim, register

log = logging.getLogger(__name__)


class FhirSubscription:
    """The ``fhir-subscription`` kind (worker/destinations.py)."""

    kind = FHIR_SUBSCRIPTION

    def matches(self, endpoint: WebhookEndpoint, event: Event) -> bool:
        config = _config(endpoint.config)
        if config is None or not takes(config, event.type, event.payload):
            return False
        session = object_session(endpoint)
        if session is None:  # not in a fan-out: nothing to number
            return True
        return number_event(session, endpoint.id, event) is not None

    def send(self, context: AppContext, claim: Claim, client: httpx.Client | None) -> AttemptResult:
        settings = context.settings
        config = _config(claim.config)
        if config is None:
            return _unsendable("the Subscription's stored configuration cannot be read")
        with session_scope(context.session_factory) as session:
            bundle = notification_for(session, api_base(settings), claim, config)
        headers = headers_of(claim.secrets[0]) if claim.secrets else {}
        headers["content-type"] = config.payload
        timeout = settings.webhook_timeout_seconds
        if config.timeout is not None:
            timeout = min(float(config.timeout), timeout)
        outcome, _ = send(
            "POST", claim.url, content=json.dumps(bundle, separators=(",", ":")).encode("utf-8"), headers=headers,
            allow_cidrs=settings.webhook_allow_cidrs, timeout=timeout,
            connect_timeout=settings.webhook_connect_timeout_seconds, client=client, tenant_id=claim.tenant_id,
        )
        return outcome


register(FhirSubscription())


def _config(raw: dict | None) -> SubscriptionConfig | None:
    try:
        return SubscriptionConfig.model_validate(raw or {})
    except ValidationError:
        return None


def _unsendable(error: str) -> AttemptResult:
    return AttemptResult(ok=False, status_code=None, latency_ms=None, error=error, response_excerpt=None,
                         disable_endpoint=False, error_class="refused_url")


def takes(config: SubscriptionConfig, event_type: str, payload: dict, now: datetime | None = None) -> bool:
    """Whether the Subscription takes a topic event: its topic's, within its filters, before its end."""
    topic = TOPICS.get(config.topic)
    if topic is None or event_type not in topic.events:
        return False
    end = config.end_at
    if end is not None and end <= (now or utcnow()):
        return False
    return passes_filters(config, payload)


def number_event(session: Session, subscription_id: uuid.UUID, event: Event) -> int | None:
    """Give the event the Subscription's next number (once: a second call finds the first);
    None when the Subscription is gone (deleted while the event was fanned out)."""
    known = number_of(session, subscription_id, event.id)
    if known is not None:
        return known
    counter = func.coalesce(WebhookEndpoint.config["events_since_start"].as_integer(), 0)
    number = session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == subscription_id)
        .values(config=WebhookEndpoint.config.op("||")(func.jsonb_build_object("events_since_start", counter + 1)))
        .returning(WebhookEndpoint.config["events_since_start"].as_integer())
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if number is None:
        return None
    session.execute(
        insert(Event)
        .values(
            id=new_event_id(),
            tenant_id=event.tenant_id,
            type=NUMBERED_EVENT,
            dedupe_key=numbered_key(subscription_id, event.id),
            payload={"subscription": str(subscription_id), "event": event.id, "event_type": event.type,
                     "number": number},
            only_endpoint_id=subscription_id,
            dispatched_at=utcnow(),  # a record, never fanned out
        )
        .on_conflict_do_nothing(index_elements=[Event.dedupe_key])
    )
    return int(number)


def notification_for(session: Session, base: str, claim: Claim, config: SubscriptionConfig) -> dict:
    """The notification one delivery carries: a handshake or heartbeat (the Subscription's own
    events), or the event-notification of the topic event, with the number it was given."""
    endpoint = session.get(WebhookEndpoint, claim.endpoint_id)
    enabled = endpoint.enabled if endpoint is not None else False
    failing_since = endpoint.failing_since if endpoint is not None else None
    counter = int(((endpoint.config if endpoint is not None else None) or claim.config).get("events_since_start", 0))
    status = subscription_status(enabled, failing_since, config.end_at)
    url = subscription_url(base, claim.endpoint_id)
    own = OWN_EVENTS.get(claim.event_type)
    if own is not None:
        return notification_bundle(
            NotificationStatus(url, config.topic, status, own, counter, r4=config.r4), [], config.content
        )
    number = number_of(session, claim.endpoint_id, claim.msg_id)
    if number is None:  # taken before numbering existed, or its record erased: say so, once, and go on
        log.warning("fhir subscription %s: event %s has no number; sent as the current count",
                    claim.endpoint_id, claim.msg_id)
        number = counter
    event = topic_event(number, claim.payload, claim.event_type)
    if config.content == "full-resource":
        event = topic_event(number, claim.payload, claim.event_type,
                            report_bundle(session, claim.tenant_id, event.analysis_id))
    return notification_bundle(
        NotificationStatus(url, config.topic, status, "event-notification", max(counter, number), r4=config.r4),
        [event],
        config.content,
    )


# ---------------------------------------------------------------- heartbeats


def due_heartbeats(session: Session, now: datetime | None = None) -> list[tuple[uuid.UUID, uuid.UUID, datetime]]:
    """(Subscription id, tenant id, last activity) of each active Subscription with a heartbeat
    period that has had no delivery (of any notification, its handshake included) for that
    long; last activity is its last delivery's creation, or its own creation. Active: enabled,
    not failing (a failing receiver gets its retries, not more heartbeats), not past its end.
    A heartbeat recorded but not yet fanned out does not count: ``send_heartbeats`` keys it by
    this last activity, so it is recorded once however often this runs meanwhile."""
    now = now or utcnow()
    last_delivery = (  # ix_webhook_deliveries_endpoint_created answers it
        select(func.max(WebhookDelivery.created_at))
        .where(WebhookDelivery.endpoint_id == WebhookEndpoint.id)
        .correlate(WebhookEndpoint)
        .scalar_subquery()
    )
    rows = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.tenant_id, WebhookEndpoint.config, WebhookEndpoint.created_at,
               last_delivery)
        .where(
            WebhookEndpoint.kind == FHIR_SUBSCRIPTION,
            WebhookEndpoint.enabled.is_(True),
            WebhookEndpoint.failing_since.is_(None),
            WebhookEndpoint.config["heartbeat_period"].as_integer().isnot(None),
        )
    ).all()
    due = []
    for subscription_id, tenant_id, raw, created_at, delivered in rows:
        config = _config(raw)
        if config is None or not config.heartbeat_period:
            continue
        end = config.end_at
        if end is not None and end <= now:
            continue
        last = max(moment for moment in (created_at, delivered) if moment is not None)
        if now - last >= timedelta(seconds=config.heartbeat_period):
            due.append((subscription_id, tenant_id, last))
    return due


def send_heartbeats(context: AppContext, now: datetime | None = None) -> int:
    """A heartbeat notification event for each Subscription whose heartbeat is due (beat runs
    this every ``HEARTBEAT_CHECK_SECONDS``); returns how many were recorded. Keyed by the
    Subscription's last activity, so runs before its fan-out (or two at once) record one."""
    created = 0
    with session_scope(context.session_factory) as session:
        for subscription_id, tenant_id, last in due_heartbeats(session, now):
            key = f"{HEARTBEAT_EVENT}:{subscription_id}:{last.timestamp():.6f}"
            if record_notification(session, context.celery, tenant_id=tenant_id, subscription_id=subscription_id,
                                   event_type=HEARTBEAT_EVENT, dedupe_key=key):
                created += 1
    if created:
        log.info("fhir subscriptions: %d heartbeats due", created)
    return created
