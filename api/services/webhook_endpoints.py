"""Webhook endpoints: registration (with the SSRF check), listing, test events, deliveries."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.problems import NotFound, Unprocessable
from api.services.owned import get_owned
from shared.analyses import utcnow
from shared.context import AppContext
from shared.db import after_commit
from shared.events import EVENT_TYPES, TEST_EVENT, record_event
from shared.jobs import enqueue_delivery
from shared.models import Tenant, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.schemas import WebhookEndpointIn, WebhookEndpointPatch
from shared.ssrf import UnsafeURLError, parse_allow_cidrs, resolve_and_check
from shared.webhook_signing import generate_secret


def _checked_events(events: list[str] | None) -> list[str]:
    if not events:
        return []
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise Unprocessable(f"unknown event types {unknown}; choose from {list(EVENT_TYPES)}")
    return sorted(set(events))


def _checked_url(context: AppContext, url: str) -> str:
    try:
        parsed, _ = resolve_and_check(url, parse_allow_cidrs(context.settings.webhook_allow_cidrs))
    except UnsafeURLError as exc:
        raise Unprocessable(f"the webhook URL is refused: {exc}") from None
    return parsed.url


def create(context: AppContext, session: Session, tenant: Tenant, body: WebhookEndpointIn) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(
        tenant_id=tenant.id,
        url=_checked_url(context, str(body.url)),
        events=_checked_events(body.events),
        description=body.description,
        secret=generate_secret(),
        enabled=True,
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def get(session: Session, tenant: Tenant, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    return get_owned(session, WebhookEndpoint, endpoint_id, tenant, "webhook endpoint")


def list_all(session: Session, tenant: Tenant) -> list[WebhookEndpoint]:
    return list(
        session.execute(
            select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant.id).order_by(WebhookEndpoint.created_at)
        ).scalars()
    )


def update(session: Session, tenant: Tenant, endpoint_id: uuid.UUID, body: WebhookEndpointPatch) -> WebhookEndpoint:
    endpoint = get(session, tenant, endpoint_id)
    if body.enabled is not None:
        endpoint.enabled = body.enabled
        endpoint.disabled_reason = None if body.enabled else "disabled by the tenant"
        if body.enabled:
            endpoint.failing_since = None
    if body.events is not None:
        endpoint.events = _checked_events(body.events)
    if body.description is not None:
        endpoint.description = body.description
    session.flush()
    return endpoint


def delete(session: Session, tenant: Tenant, endpoint_id: uuid.UUID) -> None:
    session.delete(get(session, tenant, endpoint_id))


def send_test(context: AppContext, session: Session, tenant: Tenant, endpoint_id: uuid.UUID) -> str:
    endpoint = get(session, tenant, endpoint_id)
    return record_event(
        session,
        context.celery,
        tenant_id=tenant.id,
        type=TEST_EVENT,
        data={"endpoint_id": str(endpoint.id), "message": "DermaSentinel test event"},
        only_endpoint_id=endpoint.id,
    )


def deliveries(session: Session, tenant: Tenant, endpoint_id: uuid.UUID, limit: int) -> list[tuple]:
    endpoint = get(session, tenant, endpoint_id)
    rows = session.execute(
        select(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
        .order_by(WebhookDelivery.created_at.desc())
        .limit(limit)
    ).scalars().all()
    attempts: dict[uuid.UUID, list[WebhookAttempt]] = {d.id: [] for d in rows}
    if rows:
        for attempt in session.execute(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.attempted_at)
        ).scalars():
            attempts[attempt.delivery_id].append(attempt)
    return [(d, attempts[d.id]) for d in rows]


def resend(context: AppContext, session: Session, tenant: Tenant, endpoint_id: uuid.UUID, delivery_id: uuid.UUID):
    endpoint = get(session, tenant, endpoint_id)
    delivery = session.execute(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint.id)
        .with_for_update()
    ).scalar_one_or_none()
    if delivery is None:
        raise NotFound(f"no delivery with id {delivery_id} for this endpoint")
    delivery.status = "pending"
    delivery.next_attempt_at = utcnow()
    after_commit(session, lambda: enqueue_delivery(context.celery, delivery.id))
    return delivery
