"""The ``/fhir`` base (issue 23; docs/FHIR_SUBSCRIPTIONS.md): FHIR R4B, ``application/fhir+json``.

``metadata`` (the CapabilityStatement) and ``SubscriptionTopic`` are public, as a FHIR server's
are; ``Subscription`` and its ``$status`` / ``$events`` need the ``webhooks:manage`` scope, and a
tenant sees only its own. Every error under ``/fhir`` is an ``OperationOutcome`` with the status
and the stable code the rest of the API gives as problem+json (``api.problems``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import JSONResponse

from api.auth import AuthenticatedTenant
from api.deps import ContextDep, SessionDep, audit_note, authorized, parse_id
from api.problems import FHIR_JSON, NotFound, problems
from api.services import fhir_subscriptions as service
from shared.fhir_subscriptions import (
    ANALYSIS_FINALIZED,
    FILTER_CRITERIA,
    HEARTBEAT_PERIOD,
    MAX_EVENTS_PER_QUERY,
    PAYLOAD_CONTENT,
    TOPICS_BY_ID,
    Content,
    capability_statement,
    subscription_topic,
)
from shared.lifecycle import api_base
from shared.schemas import FhirBundle, FhirCapabilityStatement, FhirSubscription, FhirSubscriptionTopic
from shared.scopes import Scope

router = APIRouter(prefix="/fhir", tags=["fhir"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
CreateSubscription = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "fhir_subscription.create", "fhir_subscription")
]
SearchSubscriptions = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "fhir_subscription.search", "fhir_subscription")
]
ReadSubscription = Annotated[
    AuthenticatedTenant,
    authorized(Scope.webhooks_manage, "fhir_subscription.read", "fhir_subscription", "subscription_id"),
]
DeleteSubscription = Annotated[
    AuthenticatedTenant,
    authorized(Scope.webhooks_manage, "fhir_subscription.delete", "fhir_subscription", "subscription_id"),
]
SubscriptionStatusOp = Annotated[
    AuthenticatedTenant,
    authorized(Scope.webhooks_manage, "fhir_subscription.status", "fhir_subscription", "subscription_id"),
]
SubscriptionEventsOp = Annotated[
    AuthenticatedTenant,
    authorized(Scope.webhooks_manage, "fhir_subscription.events", "fhir_subscription", "subscription_id"),
]

SUBSCRIPTION_EXAMPLE: dict[str, Any] = {
    "resourceType": "Subscription",
    "status": "requested",
    "reason": "Dermatology results for the EHR inbox",
    "criteria": ANALYSIS_FINALIZED.url,
    "_criteria": {"extension": [{"url": FILTER_CRITERIA,
                                 "valueString": "DiagnosticReport?batch=0b6f1c9e-2f4e-4a57-9c55-2d5d3e1b7f00"}]},
    "channel": {
        "extension": [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": 300}],
        "type": "rest-hook",
        "endpoint": "https://ehr.example.org/fhir/notifications",
        "payload": FHIR_JSON,
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "id-only"}]},
        "header": ["Authorization: Bearer <the EHR's token>"],
    },
}


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


def _fhir(resource: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None) -> FhirResponse:
    # Subscriptions name the tenant's endpoints and their events: never kept in a cache.
    return FhirResponse(resource, status_code=status_code, headers={"Cache-Control": "no-store", **(headers or {})})


def _location(request: Request, subscription_id: object) -> str:
    base = api_base(request.app.state.context.settings)
    return f"{base}/fhir/Subscription/{subscription_id}"


@router.get(
    "/metadata",
    summary="CapabilityStatement (public)",
    description="The R4B `CapabilityStatement` of the `/fhir` base (fhirVersion 4.3.0): Subscription (create, "
    "read, delete, search) with the Subscriptions R5 Backport IG's `$status` and `$events`, the IG's server "
    "CapabilityStatements it instantiates, and the SubscriptionTopics it offers. No API key needed.",
    response_model=FhirCapabilityStatement,
    response_class=FhirResponse,
)
def metadata(request: Request, context: ContextDep) -> FhirResponse:
    return FhirResponse(capability_statement(api_base(context.settings), request.app.version))


@router.get(
    "/SubscriptionTopic",
    summary="Search the SubscriptionTopics (public)",
    description="A `searchset` Bundle of the topics a Subscription can name in `criteria`: `analysis-finalized` "
    "(an analysis reached a final status) and `report-ready` (its report was rendered). No API key needed.",
    response_model=FhirBundle,
    response_class=FhirResponse,
)
def search_topics() -> FhirResponse:
    entries = [{"fullUrl": topic.url, "resource": subscription_topic(topic), "search": {"mode": "match"}}
               for topic in TOPICS_BY_ID.values()]
    return FhirResponse({"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries})


@router.get(
    "/SubscriptionTopic/{topic_id}",
    summary="One SubscriptionTopic (public)",
    description="The R4B `SubscriptionTopic`: its canonical URL (a Subscription's `criteria`), what triggers it, "
    "the filters it takes (`batch`, `patient`) and the shape of its notifications. No API key needed.",
    response_model=FhirSubscriptionTopic,
    response_class=FhirResponse,
    responses=problems(404),
)
def read_topic(topic_id: str) -> FhirResponse:
    topic = TOPICS_BY_ID.get(topic_id)
    if topic is None:
        raise NotFound(f"no SubscriptionTopic with id {topic_id[:100]!r}; the topics are {', '.join(TOPICS_BY_ID)}")
    return FhirResponse(subscription_topic(topic))


@router.post(
    "/Subscription",
    status_code=201,
    summary="Create a Subscription (rest-hook)",
    description="An R4B `Subscription` (Subscriptions R5 Backport IG): `criteria` is a topic's canonical URL "
    "(`GET /fhir/SubscriptionTopic`), filters go in `_criteria.extension` (`backport-filter-criteria`: "
    "`DiagnosticReport?batch=<batch id>` or `DiagnosticReport?patient=<reference>`), `channel.type` is "
    "`rest-hook`, `channel.endpoint` must resolve to a public address (as a webhook's URL, unless inside "
    "WEBHOOK_ALLOW_CIDRS), `channel._payload` carries the content (`empty`, `id-only` (default), "
    "`full-resource`), `channel.header` lines are sent with every notification (and never shown again), "
    "`backport-heartbeat-period` asks for heartbeats. The Subscription is `active` at once; its handshake "
    "notification is on its way. Refusals are OperationOutcomes (422).",
    response_model=FhirSubscription,
    response_class=FhirResponse,
    responses=problems((409, "`quota_exceeded`: too many Subscriptions"), 422),
)
def create_subscription(
    request: Request,
    context: ContextDep,
    tenant: CreateSubscription,
    session: SessionDep,
    subscription: Annotated[
        dict[str, Any],
        Body(media_type=FHIR_JSON, openapi_examples={"batch": {"summary": "Results of one batch, id-only",
                                                               "value": SUBSCRIPTION_EXAMPLE}}),
    ],
) -> FhirResponse:
    endpoint = service.create(context, session, tenant, subscription)
    audit_note(request).resource_id = str(endpoint.id)
    return _fhir(service.resource(endpoint), 201, {"Location": _location(request, endpoint.id)})


@router.get(
    "/Subscription",
    summary="Search the tenant's Subscriptions",
    description="A `searchset` Bundle of this tenant's Subscriptions, oldest first.",
    response_model=FhirBundle,
    response_class=FhirResponse,
)
def search_subscriptions(request: Request, tenant: SearchSubscriptions, session: SessionDep) -> FhirResponse:
    rows = service.list_all(session, tenant)
    audit_note(request).detail["returned"] = len(rows)
    entries = [{"fullUrl": _location(request, row.id), "resource": service.resource(row), "search": {"mode": "match"}}
               for row in rows]
    return _fhir({"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries})


@router.get(
    "/Subscription/{subscription_id}",
    summary="Read a Subscription",
    description="The Subscription with its status: `active`; `error` while its notifications fail (they are "
    "retried on the webhook schedule); `off` once disabled (the receiver answered 410, or failed for days) or "
    "past its `end`. Its channel headers are not shown.",
    response_model=FhirSubscription,
    response_class=FhirResponse,
    responses=problems(404),
)
def read_subscription(subscription_id: str, tenant: ReadSubscription, session: SessionDep) -> FhirResponse:
    endpoint = service.get(session, tenant, parse_id(subscription_id, "Subscription"))
    return _fhir(service.resource(endpoint))


@router.delete(
    "/Subscription/{subscription_id}",
    status_code=204,
    summary="Delete a Subscription",
    description="No further notifications are sent; its delivery log and past events go with it.",
    response_class=Response,
    responses=problems(404),
)
def delete_subscription(subscription_id: str, tenant: DeleteSubscription, session: SessionDep) -> Response:
    service.delete(session, tenant, parse_id(subscription_id, "Subscription"))
    return Response(status_code=204)


@router.get(
    "/Subscription/{subscription_id}/$status",
    summary="$status: the Subscription's status",
    description="A `searchset` Bundle with the Subscription's status (an R4B `SubscriptionStatus`, or the IG's "
    "R4 `Parameters` for a Subscription whose payload asked for `fhirVersion=4.0`) of type `query-status`: "
    "`status` and `eventsSinceSubscriptionStart`, the number of topic events it has taken.",
    response_model=FhirBundle,
    response_class=FhirResponse,
    responses=problems(404),
)
def subscription_status(
    subscription_id: str, context: ContextDep, tenant: SubscriptionStatusOp, session: SessionDep
) -> FhirResponse:
    endpoint = service.get(session, tenant, parse_id(subscription_id, "Subscription"))
    return _fhir(service.status_bundle(context, endpoint))


@router.get(
    "/Subscription/{subscription_id}/$events",
    summary="$events: past notifications again",
    description="The notification Bundle (`history`, type `query-event`) of the Subscription's past events "
    f"numbered `eventsSinceNumber` to `eventsUntilNumber` (both inclusive; at most {MAX_EVENTS_PER_QUERY} events, "
    "oldest first), with the Subscription's content unless `content` says otherwise. Events of analyses erased "
    "since are left out: their numbers stay taken.",
    response_model=FhirBundle,
    response_class=FhirResponse,
    responses=problems(404),
)
def subscription_events(
    subscription_id: str,
    context: ContextDep,
    tenant: SubscriptionEventsOp,
    session: SessionDep,
    events_since: Annotated[int | None, Query(alias="eventsSinceNumber", ge=1, le=2**62)] = None,
    events_until: Annotated[int | None, Query(alias="eventsUntilNumber", ge=1, le=2**62)] = None,
    content: Content | None = None,
) -> FhirResponse:
    endpoint = service.get(session, tenant, parse_id(subscription_id, "Subscription"))
    return _fhir(service.events_bundle(context, session, endpoint, events_since, events_until, content))
