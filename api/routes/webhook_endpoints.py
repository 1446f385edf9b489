"""/v1/webhook-endpoints: subscriptions, test events and the delivery log."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.auth import AuthenticatedTenant, TenantRef
from api.deps import CapacityDep, ContextDep, SessionDep, authorized, in_session, parse_id
from api.problems import problems
from api.services import webhook_endpoints as service
from shared.clock import iso
from shared.context import AppContext
from shared.lifecycle import fields_for
from shared.schemas import (
    DeliveryAttempt,
    DeliveryList,
    DeliveryOut,
    ResendAccepted,
    WebhookEndpointIn,
    WebhookEndpointList,
    WebhookEndpointOut,
    WebhookEndpointPatch,
    WebhookEndpointWithSecret,
    WebhookTestSent,
)
from shared.scopes import Scope
from shared.tables import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
CreateEndpoint = Annotated[AuthenticatedTenant, authorized(Scope.webhooks_manage, "webhook.create", "webhook_endpoint")]
ListEndpoints = Annotated[AuthenticatedTenant, authorized(Scope.webhooks_manage, "webhook.list", "webhook_endpoint")]
GetEndpoint = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "webhook.read", "webhook_endpoint", "endpoint_id")
]
PatchEndpoint = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "webhook.update", "webhook_endpoint", "endpoint_id")
]
DeleteEndpoint = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "webhook.delete", "webhook_endpoint", "endpoint_id")
]
RotateSecret = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "webhook.rotate_secret", "webhook_endpoint", "endpoint_id")
]
TestEndpoint = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "webhook.test", "webhook_endpoint", "endpoint_id")
]
ListDeliveries = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "webhook.deliveries", "webhook_endpoint", "endpoint_id")
]
ResendDelivery = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "webhook.resend", "webhook_delivery", "delivery_id")
]


class RotateSecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_period_hours: float | None = Field(
        default=None,
        ge=0,
        le=24 * 7,
        strict=True,  # JSON numbers only: `false` is not 0 hours
        description="How long the replaced secret keeps signing too (default WEBHOOK_SECRET_GRACE_HOURS, 24); "
        "0 ends it now",
    )


def view(endpoint: WebhookEndpoint) -> WebhookEndpointOut:
    return WebhookEndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        events=service.delivered_events(endpoint),
        description=endpoint.description,
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        failing_since=iso(endpoint.failing_since),
        created_at=iso(endpoint.created_at),
        previous_secret_expires_at=iso(endpoint.previous_secret_expires_at)
        if endpoint.previous_secret_encrypted
        else None,
        # Set (and so sent) only on a per-request webhook.
        **({"analysis_id": endpoint.analysis_id} if endpoint.analysis_id else {}),
    )


def _with_secret(endpoint: WebhookEndpoint, secret: str) -> WebhookEndpointWithSecret:
    return WebhookEndpointWithSecret(**fields_for(WebhookEndpointWithSecret, view(endpoint)), secret=secret)


@router.post(
    "",
    status_code=201,
    summary="Register an endpoint; the signing secret is shown only here",
    description="`url` must resolve to a public address (loopback, private, link-local and metadata addresses are "
    "refused, 422, unless inside WEBHOOK_ALLOW_CIDRS); `events` filters the event types (all when omitted). "
    "Deliveries are signed with the returned `secret` (`whsec_…`, Standard Webhooks); store it now.",
    response_model=WebhookEndpointWithSecret,
    response_model_exclude_unset=True,
    responses=problems((409, "`type` …/quota_exceeded: too many endpoints")),
)
def create_endpoint(
    body: WebhookEndpointIn, context: ContextDep, tenant: CreateEndpoint, session: SessionDep
) -> WebhookEndpointWithSecret:
    endpoint, secret = service.create(context, session, tenant, body)
    return _with_secret(endpoint, secret)


@router.get(
    "",
    summary="List endpoints",
    description="The tenant's webhook endpoints (never their secrets).",
    response_model=WebhookEndpointList,
    response_model_exclude_unset=True,
)
def list_endpoints(tenant: ListEndpoints, session: SessionDep) -> WebhookEndpointList:
    return WebhookEndpointList(data=[view(e) for e in service.list_all(session, tenant)])


@router.get(
    "/{endpoint_id}",
    summary="One endpoint",
    description="An endpoint, whether it is enabled, and since when it has been failing.",
    response_model=WebhookEndpointOut,
    response_model_exclude_unset=True,
    responses=problems(404),
)
def get_endpoint(endpoint_id: str, tenant: GetEndpoint, session: SessionDep) -> WebhookEndpointOut:
    return view(service.get(session, tenant, parse_id(endpoint_id, "webhook endpoint")))


@router.patch(
    "/{endpoint_id}",
    summary="Enable, disable, or change the event filter",
    description="Fields left out stay as they are. Enabling an endpoint that was disabled (410, or failing for "
    "days) clears its `disabled_reason`.",
    response_model=WebhookEndpointOut,
    response_model_exclude_unset=True,
    responses=problems(404),
)
def patch_endpoint(
    endpoint_id: str, body: WebhookEndpointPatch, tenant: PatchEndpoint, session: SessionDep
) -> WebhookEndpointOut:
    return view(service.update(session, tenant, parse_id(endpoint_id, "webhook endpoint"), body))


@router.delete(
    "/{endpoint_id}",
    status_code=204,
    summary="Delete an endpoint",
    description="No further deliveries are made to it; its delivery log goes with it.",
    response_class=Response,
    responses=problems(404),
)
def delete_endpoint(endpoint_id: str, tenant: DeleteEndpoint, session: SessionDep) -> Response:
    service.delete(session, tenant, parse_id(endpoint_id, "webhook endpoint"))
    return Response(status_code=204)


@router.post(
    "/{endpoint_id}/rotate-secret",
    summary="Replace the signing secret; the new one is shown only here",
    description="During the grace period every message carries two `v1,` signatures, one per secret "
    "(Standard Webhooks), so receivers can switch to the new secret without rejecting anything.",
    response_model=WebhookEndpointWithSecret,
    response_model_exclude_unset=True,
    responses=problems(404),
)
def rotate_secret(
    endpoint_id: str,
    context: ContextDep,
    tenant: RotateSecret,
    session: SessionDep,
    body: RotateSecretIn | None = None,
) -> WebhookEndpointWithSecret:
    endpoint, secret = service.rotate_secret(
        context, session, tenant, parse_id(endpoint_id, "webhook endpoint"), body.grace_period_hours if body else None
    )
    return _with_secret(endpoint, secret)


@router.post(
    "/{endpoint_id}/test",
    status_code=202,
    summary="Send a signed test event (rate-limited per tenant: 429 with Retry-After)",
    description="A `webhook.test` event to this endpoint only, signed and logged like any other delivery.",
    response_model=WebhookTestSent,
    response_model_exclude_unset=True,
    responses=problems(404),
)
async def test_endpoint(
    endpoint_id: str, context: ContextDep, capacity: CapacityDep, tenant: TestEndpoint
) -> WebhookTestSent:
    # Issue 27: the unit of work in one thread hop (``in_session``), as the analysis reads.
    ident = parse_id(endpoint_id, "webhook endpoint")
    event_id = await in_session(capacity, context, tenant.id, _send_test, context, tenant, ident)
    return WebhookTestSent(event_id=event_id)


def _send_test(session: Session, context: AppContext, tenant: TenantRef, endpoint_id: uuid.UUID) -> str | None:
    return service.send_test(context, session, tenant, endpoint_id)


@router.get(
    "/{endpoint_id}/deliveries",
    summary="Delivery log, newest first, with every attempt",
    description="The last `limit` deliveries to this endpoint: status (`pending`, `delivered`, `failed`, "
    "`skipped`), when the next attempt is due, and every attempt with its status code, latency and error.",
    response_model=DeliveryList,
    response_model_exclude_unset=True,
    responses=problems(404),
)
def list_deliveries(
    endpoint_id: str,
    tenant: ListDeliveries,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryList:
    rows = service.deliveries(session, tenant, parse_id(endpoint_id, "webhook endpoint"), limit)
    return DeliveryList(data=[delivery_view(d, attempts) for d, attempts in rows])


def delivery_view(d: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
    """One delivery in a delivery log, with its attempts (every kind of destination)."""
    return DeliveryOut(
        id=d.id,
        event_id=d.event_id,
        status=d.status,
        attempt_count=d.attempt_count,
        # Woken or being sent (a lease): due since it was woken, not at the lease's end.
        next_attempt_at=(
            iso(d.leased_at or d.next_attempt_at) if d.status == DeliveryStatus.pending else None
        ),
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        created_at=iso(d.created_at),
        delivered_at=iso(d.delivered_at),
        attempts=[
            DeliveryAttempt(
                attempted_at=iso(a.attempted_at),
                status_code=a.status_code,
                latency_ms=None if a.latency_ms is None else round(a.latency_ms, 1),
                error=a.error,
                response_excerpt=a.response_excerpt,
            )
            for a in attempts
        ],
    )


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/resend",
    status_code=202,
    summary="Re-send a delivery now",
    description="The delivery goes back to `pending` and is attempted at once, with the same `webhook-id`.",
    response_model=ResendAccepted,
    response_model_exclude_unset=True,
    responses=problems(404),
)
def resend_delivery(
    endpoint_id: str, delivery_id: str, context: ContextDep, tenant: ResendDelivery, session: SessionDep
) -> ResendAccepted:
    delivery = service.resend(
        context, session, tenant, parse_id(endpoint_id, "webhook endpoint"), parse_id(delivery_id, "delivery")
    )
    return ResendAccepted(id=delivery.id, status=delivery.status)
