"""Webhook endpoints: registration (with the SSRF check and a per-tenant quota), listing,
secret rotation, rate-limited test events, deliveries."""

from __future__ import annotations

import logging
import math
import time
import uuid
from datetime import timedelta
from functools import lru_cache
from typing import get_args

from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import delete as delete_rows
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import Conflict, NotFound, Problem, Unprocessable
from api.services.owned import get_owned
from shared.clock import utcnow
from shared.context import AppContext
from shared.db import after_commit
from shared.events import EVENT_TYPES, TEST_EVENT, record_event
from shared.jobs import enqueue_delivery
from shared.schemas import (
    AnalysisEventType,
    AnalysisWebhook,
    WebhookEndpointIn,
    WebhookEndpointPatch,
    WebhookTestData,
)
from shared.security import secret_box
from shared.ssrf import UnsafeURLError, resolve_and_check
from shared.tables import DeliveryStatus, Tenant, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.webhook_signing import generate_secret

# The kind of the rows this API manages (worker/destinations.py names the others).
WEBHOOK_KIND = "webhook"

log = logging.getLogger(__name__)
REDIS_TIMEOUT_S = 0.5
ANALYSIS_EVENT_TYPES: tuple[str, ...] = get_args(AnalysisEventType)


class EndpointQuotaExceeded(Conflict):
    code, title = "quota_exceeded", "Too many webhook endpoints"


class TooManyTestEvents(Problem):
    status, code, title = 429, "rate_limited", "Too many test events"


def _checked_events(events: list[str] | None) -> list[str]:
    if not events:
        return []
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise Unprocessable(f"unknown event types {unknown}; choose from {list(EVENT_TYPES)}")
    return sorted(set(events))


def checked_url(context: AppContext, url: str, tenant: TenantRef, what: str = "the webhook URL") -> str:
    """The URL as it will be called, if its host resolves only to addresses a webhook may
    reach (shared.ssrf, with WEBHOOK_ALLOW_CIDRS and the tenant); else 422 naming ``what``.
    Every kind of destination's URLs go through it (worker/destinations.py). Resolves DNS: call
    it with no database session open."""
    try:
        parsed, _ = resolve_and_check(
            url, context.settings.webhook_allow_cidrs, tenant_id=tenant.id
        )
    except UnsafeURLError as exc:
        raise Unprocessable(f"{what} is refused: {exc}") from None
    return parsed.url


def create(
    context: AppContext, session: Session, tenant: TenantRef, body: WebhookEndpointIn
) -> tuple[WebhookEndpoint, str]:
    """The new endpoint and its signing secret (stored only encrypted; shown once)."""
    quota = context.settings.webhook_endpoints_per_tenant
    # Serialise concurrent registrations of one tenant so the count below stays true.
    session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    existing = session.execute(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant.id, WebhookEndpoint.analysis_id.is_(None),
               WebhookEndpoint.kind == WEBHOOK_KIND)
    ).scalar_one()
    if existing >= quota:
        raise EndpointQuotaExceeded(
            f"this tenant already has {existing} webhook endpoints (the limit is {quota}); delete unused ones, "
            "or subscribe one endpoint to several event types"
        )
    secret = generate_secret()
    endpoint = WebhookEndpoint(
        tenant_id=tenant.id,
        url=checked_url(context, str(body.url), tenant),
        events=_checked_events(body.events),
        description=body.description,
        secret_encrypted=secret_box(context.settings).seal(secret),
        enabled=True,
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def create_for_analysis(
    context: AppContext, session: Session, tenant: TenantRef, analysis_id: uuid.UUID, url: str, events: list[str] | None
) -> WebhookEndpoint:
    """A per-request webhook: an endpoint that receives only ``analysis_id``'s events (the
    fan-out in worker/webhooks.py), signed like any other. ``url`` went through
    ``checked_url`` already (before the transaction); every send checks it again. Outside the
    endpoint quota and the endpoint list; deleted with its analysis."""
    endpoint = WebhookEndpoint(
        tenant_id=tenant.id,
        analysis_id=analysis_id,
        url=url,
        events=_checked_events(events),
        description=f"per-request webhook of analysis {analysis_id}",
        secret_encrypted=secret_box(context.settings).seal(generate_secret()),
        enabled=True,
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def for_analysis(session: Session, analysis_id: uuid.UUID) -> WebhookEndpoint | None:
    return session.execute(
        select(WebhookEndpoint).where(WebhookEndpoint.analysis_id == analysis_id)
    ).scalar_one_or_none()


def delivered_events(endpoint: WebhookEndpoint) -> list[str]:
    """The event types the endpoint receives, spelled out (issue 25: an endpoint that receives
    every event showed `[]`): its filter, or every type (every analysis event for a per-request
    webhook) when it has none. An endpoint with no filter also gets event types added later."""
    if endpoint.events:
        return list(endpoint.events)
    return list(ANALYSIS_EVENT_TYPES if endpoint.analysis_id is not None else EVENT_TYPES)


def request_webhook_view(context: AppContext, endpoint: WebhookEndpoint) -> AnalysisWebhook:
    """The ``webhook`` of a submission's answer, with its current signing secret."""
    return AnalysisWebhook(
        id=endpoint.id,
        url=endpoint.url,
        events=delivered_events(endpoint),
        secret=secret_box(context.settings).open(endpoint.secret_encrypted),
    )


def rotate_secret(
    context: AppContext, session: Session, tenant: TenantRef, endpoint_id: uuid.UUID, grace_hours: float | None
) -> tuple[WebhookEndpoint, str]:
    """A new signing secret, returned once. For `grace_hours` (default
    WEBHOOK_SECRET_GRACE_HOURS) every message is signed with both the new and the replaced
    secret, so receivers can switch without rejecting anything; 0 ends the old one now."""
    endpoint = get(session, tenant, endpoint_id, for_update=True)
    hours = context.settings.webhook_secret_grace_hours if grace_hours is None else grace_hours
    secret = generate_secret()
    box = secret_box(context.settings)
    if hours > 0:
        endpoint.previous_secret_encrypted = box.reseal(endpoint.secret_encrypted)
        endpoint.previous_secret_expires_at = utcnow() + timedelta(hours=hours)
    else:
        endpoint.previous_secret_encrypted = None
        endpoint.previous_secret_expires_at = None
    endpoint.secret_encrypted = box.seal(secret)
    session.flush()
    return endpoint, secret


def get(session: Session, tenant: TenantRef, endpoint_id: uuid.UUID, *, for_update: bool = False) -> WebhookEndpoint:
    """One of the tenant's webhook endpoints (the other kinds of destination have their own API)."""
    endpoint = get_owned(session, WebhookEndpoint, endpoint_id, tenant, "webhook endpoint", for_update=for_update)
    if endpoint.kind != WEBHOOK_KIND:
        raise NotFound(f"no webhook endpoint with id {endpoint_id}")
    return endpoint


def list_all(session: Session, tenant: TenantRef) -> list[WebhookEndpoint]:
    return list(
        session.execute(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant.id, WebhookEndpoint.analysis_id.is_(None),
                   WebhookEndpoint.kind == WEBHOOK_KIND)
            .order_by(WebhookEndpoint.created_at)
        ).scalars()
    )


def update(session: Session, tenant: TenantRef, endpoint_id: uuid.UUID, body: WebhookEndpointPatch) -> WebhookEndpoint:
    endpoint = get(session, tenant, endpoint_id)
    if body.enabled is not None:
        endpoint.enabled = body.enabled
        endpoint.disabled_reason = None if body.enabled else "disabled by the tenant"
        if body.enabled:
            endpoint.failing_since = None
    if body.events is not None:
        endpoint.events = _checked_events(body.events)
        if endpoint.analysis_id is not None and not set(endpoint.events) <= set(ANALYSIS_EVENT_TYPES):
            raise Unprocessable(
                f"a per-request webhook receives only its analysis' events; choose from {list(ANALYSIS_EVENT_TYPES)}"
            )
    if body.description is not None:
        endpoint.description = body.description
    session.flush()
    return endpoint


def delete(session: Session, tenant: TenantRef, endpoint_id: uuid.UUID) -> None:
    remove(session, get(session, tenant, endpoint_id))


def one_of_kind(session: Session, tenant: TenantRef, kind: str) -> WebhookEndpoint | None:
    """The tenant's one destination of ``kind`` (the FHIR and DICOMweb destinations), if any."""
    return session.execute(
        select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant.id, WebhookEndpoint.kind == kind)
    ).scalar_one_or_none()


def set_enabled(endpoint: WebhookEndpoint, enabled: bool) -> None:
    """Enable (a fresh start: no longer failing) or disable an endpoint by the tenant's choice."""
    if enabled and not endpoint.enabled:
        endpoint.failing_since = None
    endpoint.enabled = enabled
    endpoint.disabled_reason = None if enabled else "disabled by the tenant"


def remove(session: Session, endpoint: WebhookEndpoint) -> uuid.UUID:
    """Delete an endpoint of any kind (webhook, FHIR Subscription or destination) with its
    delivery log: the log first, then the endpoint, the order an io worker locks them in when
    it records an attempt (the delivery, then the endpoint's failing_since). Left to the
    cascade (the endpoint row, then its deliveries) it deadlocks with a send being recorded."""
    session.execute(
        delete_rows(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
        .execution_options(synchronize_session=False)
    )
    session.delete(endpoint)
    return endpoint.id


def send_test(context: AppContext, session: Session, tenant: TenantRef, endpoint_id: uuid.UUID) -> str | None:
    endpoint = get(session, tenant, endpoint_id)
    _limit_test_events(context, tenant)
    return record_event(
        session,
        context.celery,
        tenant_id=tenant.id,
        type=TEST_EVENT,
        data=WebhookTestData(endpoint_id=endpoint.id, message="DermaSentinel test event"),
        only_endpoint_id=endpoint.id,
    )


def deliveries(session: Session, tenant: TenantRef, endpoint_id: uuid.UUID, limit: int) -> list[tuple]:
    return deliveries_of(session, get(session, tenant, endpoint_id), limit)


def deliveries_of(session: Session, endpoint: WebhookEndpoint, limit: int) -> list[tuple]:
    """The endpoint's last ``limit`` deliveries, newest first, each with its attempts (any kind
    of destination: its owner was checked by the caller)."""
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


def resend(
    context: AppContext, session: Session, tenant: TenantRef, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> WebhookDelivery:
    return resend_of(context, session, get(session, tenant, endpoint_id), delivery_id)


def resend_of(
    context: AppContext, session: Session, endpoint: WebhookEndpoint, delivery_id: uuid.UUID
) -> WebhookDelivery:
    """One of the endpoint's deliveries back to ``pending``, attempted at once (any kind of
    destination: its owner was checked by the caller)."""
    delivery = session.execute(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint.id)
        .with_for_update()
    ).scalar_one_or_none()
    if delivery is None:
        raise NotFound(f"no delivery with id {delivery_id} for this endpoint")
    delivery.status = DeliveryStatus.pending
    delivery.next_attempt_at = delivery.leased_at = utcnow()
    after_commit(session, lambda: enqueue_delivery(context.celery, delivery.id))
    return delivery


def _limit_test_events(context: AppContext, tenant: TenantRef) -> None:
    rate = context.settings.webhook_test_rate
    limiter = _limiter(context.settings.broker_url)
    try:
        if limiter.hit(rate, "webhook-test", str(tenant.id)):
            return
        stats = limiter.get_window_stats(rate, "webhook-test", str(tenant.id))
    except StorageError:
        # The limiter protects the receivers; a Redis outage must not turn into an API error.
        log.warning("webhook test rate limit skipped: Redis unavailable")
        return
    retry_after = max(1, math.ceil(stats.reset_time - time.time()))
    raise TooManyTestEvents(
        f"test events are limited to {rate} per tenant; retry in {retry_after} s",
        headers={
            "Retry-After": str(retry_after),
            "RateLimit-Limit": str(rate.amount),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(retry_after),
        },
    )


@lru_cache(maxsize=4)
def _limiter(storage_url: str) -> MovingWindowRateLimiter:
    # Built on first use (never at import); one Redis-backed window shared by every API process.
    return MovingWindowRateLimiter(
        storage_from_string(
            storage_url, wrap_exceptions=True, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
    )
