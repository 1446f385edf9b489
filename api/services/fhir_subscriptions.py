"""FHIR Subscriptions (issue 23): the ``webhook_endpoints`` rows of kind ``fhir-subscription``
behind ``/fhir/Subscription``, and the answers of ``$status`` and ``$events``.

A Subscription is registered like a webhook endpoint: the same SSRF check of its address
(``webhook_endpoints.checked_url``), the same per-tenant quota (counted per kind), and its
channel headers sealed in ``secret_encrypted``. Creating one records its handshake in the
outbox (an event for it alone), in the same transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete as delete_rows
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import Conflict, NotFound, Unprocessable
from api.services.owned import get_owned
from api.services.webhook_endpoints import checked_url
from shared.clock import iso
from shared.context import AppContext
from shared.fhir_subscriptions import (
    HANDSHAKE_EVENT,
    KIND,
    MAX_EVENTS_PER_QUERY,
    Content,
    InvalidSubscription,
    NotificationStatus,
    Status,
    SubscriptionConfig,
    notification_bundle,
    parse_subscription,
    past_events,
    record_notification,
    seal_headers,
    subscription_resource,
    subscription_status,
    subscription_url,
)
from shared.lifecycle import api_base
from shared.security import secret_box
from shared.tables import Event, Tenant, WebhookDelivery, WebhookEndpoint

MAX_URL_LENGTH = 2048


class SubscriptionRefused(Unprocessable):
    code, title = "invalid_subscription", "Subscription not accepted"

    def __init__(self, detail: str, issue_code: str = "invalid") -> None:
        super().__init__(detail)
        self.issue_code = issue_code


class SubscriptionQuotaExceeded(Conflict):
    code, title = "quota_exceeded", "Too many Subscriptions"


def create(context: AppContext, session: Session, tenant: TenantRef, resource: Any) -> WebhookEndpoint:
    """The new Subscription, active, with its handshake waiting in the outbox."""
    try:
        parsed = parse_subscription(resource)
    except InvalidSubscription as exc:
        raise SubscriptionRefused(str(exc), exc.code) from None
    if len(parsed.endpoint) > MAX_URL_LENGTH:
        raise SubscriptionRefused(f"Subscription.channel.endpoint is longer than {MAX_URL_LENGTH} characters")
    try:
        url = checked_url(context, parsed.endpoint, tenant)  # resolves DNS: before the first query
    except Unprocessable as exc:
        raise SubscriptionRefused(
            "Subscription.channel.endpoint " + exc.detail.removeprefix("the webhook URL "), "security"
        ) from None
    quota = context.settings.webhook_endpoints_per_tenant
    # Serialise concurrent registrations of one tenant so the count below stays true.
    session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    existing = session.execute(
        select(func.count()).select_from(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant.id, WebhookEndpoint.kind == KIND)
    ).scalar_one()
    if existing >= quota:
        raise SubscriptionQuotaExceeded(
            f"this tenant already has {existing} FHIR Subscriptions (the limit is {quota}); delete unused ones"
        )
    endpoint = WebhookEndpoint(
        tenant_id=tenant.id,
        kind=KIND,
        url=url,
        events=list(parsed.topic.events),
        description=f"FHIR Subscription to {parsed.topic.id}",
        secret_encrypted=secret_box(context.settings).seal(seal_headers(parsed.headers)),
        enabled=True,
        config=parsed.config.model_dump(mode="json"),
    )
    session.add(endpoint)
    session.flush()
    record_notification(session, context.celery, tenant_id=tenant.id, subscription_id=endpoint.id,
                        event_type=HANDSHAKE_EVENT)
    return endpoint


def get(session: Session, tenant: TenantRef, subscription_id: uuid.UUID) -> WebhookEndpoint:
    """One of the tenant's Subscriptions (404 for anyone else's, and for other kinds of endpoint)."""
    endpoint = get_owned(session, WebhookEndpoint, subscription_id, tenant, "Subscription")
    if endpoint.kind != KIND:
        raise NotFound(f"no Subscription with id {subscription_id}")
    return endpoint


def list_all(session: Session, tenant: TenantRef) -> list[WebhookEndpoint]:
    return list(session.execute(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant.id, WebhookEndpoint.kind == KIND)
        .order_by(WebhookEndpoint.created_at)
    ).scalars())


def delete(session: Session, tenant: TenantRef, subscription_id: uuid.UUID) -> None:
    """The Subscription, its delivery log and its own outbox rows (handshake, heartbeats, the
    numbers it gave events). In the order webhooks are deleted (api/services/webhook_endpoints.py):
    deliveries first, so a send being recorded cannot deadlock with it."""
    endpoint = get(session, tenant, subscription_id)
    session.execute(
        delete_rows(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete_rows(Event).where(Event.tenant_id == tenant.id, Event.only_endpoint_id == endpoint.id)
        .execution_options(synchronize_session=False)
    )
    session.delete(endpoint)


def config_of(endpoint: WebhookEndpoint) -> SubscriptionConfig:
    return SubscriptionConfig.model_validate(endpoint.config or {})


def status_of(endpoint: WebhookEndpoint, config: SubscriptionConfig) -> tuple[Status, str | None]:
    """The Subscription's status, and what is wrong when it is not active."""
    status = subscription_status(endpoint.enabled, endpoint.failing_since, config.end_at)
    if status == "off":
        return status, endpoint.disabled_reason or ("ended at " + config.end if config.end else None)
    if status == "error":
        return status, f"notifications have been failing since {iso(endpoint.failing_since)}; they are retried"
    return status, None


def resource(endpoint: WebhookEndpoint) -> dict[str, Any]:
    config = config_of(endpoint)
    status, error = status_of(endpoint, config)
    return subscription_resource(endpoint.id, endpoint.url, config, status, error)


def status_bundle(context: AppContext, endpoint: WebhookEndpoint) -> dict[str, Any]:
    """``$status``: a ``searchset`` Bundle of the Subscription's status (type ``query-status``)."""
    config = config_of(endpoint)
    status, error = status_of(endpoint, config)
    notification = NotificationStatus(
        subscription_url(api_base(context.settings), endpoint.id), config.topic, status, "query-status",
        config.events_since_start, r4=config.r4, error=error,
    )
    return notification_bundle(notification, [], config.content, bundle_type="searchset")


def events_bundle(
    context: AppContext, session: Session, endpoint: WebhookEndpoint, since: int | None, until: int | None,
    content: Content | None,
) -> dict[str, Any]:
    """``$events``: the notification (type ``query-event``) of the Subscription's past events
    numbered ``since`` to ``until``, at most ``MAX_EVENTS_PER_QUERY`` of them, with the
    Subscription's content unless ``content`` says otherwise."""
    config = config_of(endpoint)
    content = content or config.content
    status, error = status_of(endpoint, config)
    events = []
    if since is None or until is None or since <= until:
        events = past_events(session, endpoint.tenant_id, endpoint.id, since=since, until=until,
                             limit=MAX_EVENTS_PER_QUERY, with_reports=content == "full-resource")
    notification = NotificationStatus(
        subscription_url(api_base(context.settings), endpoint.id), config.topic, status, "query-event",
        config.events_since_start, r4=config.r4, error=error,
    )
    return notification_bundle(notification, events, content)
