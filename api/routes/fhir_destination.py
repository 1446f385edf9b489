"""/v1/fhir-destination: the tenant's EHR write-back (issue 23; docs/FHIR_WRITEBACK.md). HTTP
only: ``api.services.fhir_destination`` does the work, worker/fhir_writeback.py the sending."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from api.auth import AuthenticatedTenant
from api.deps import ContextDep, SessionDep, audit_note, authorized, parse_id
from api.problems import problems
from api.routes.webhook_endpoints import delivery_view
from api.services import fhir_destination as service
from shared.clock import iso
from shared.context import AppContext
from shared.schemas import DeliveryList, ResendAccepted
from shared.schemas.fhir_destination import FhirDestinationIn, FhirDestinationOut
from shared.scopes import Scope
from shared.tables import WebhookEndpoint

router = APIRouter(prefix="/v1/fhir-destination", tags=["webhooks"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
PutDestination = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "fhir_destination.update", "fhir_destination")
]
GetDestination = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "fhir_destination.read", "fhir_destination")
]
DeleteDestination = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "fhir_destination.delete", "fhir_destination")
]
ListDeliveries = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "fhir_destination.deliveries", "fhir_destination")
]
ResendDelivery = Annotated[
    AuthenticatedTenant,
    authorized(Scope.webhooks_manage, "fhir_destination.resend", "webhook_delivery", "delivery_id"),
]


def view(context: AppContext, session: Session, endpoint: WebhookEndpoint) -> FhirDestinationOut:
    config = endpoint.config or {}
    last = service.last_delivery(session, endpoint)
    return FhirDestinationOut(
        id=endpoint.id,
        base_url=endpoint.url,
        token_url=config["token_url"],
        client_id=config["client_id"],
        scopes=config["scopes"],
        alg=config["alg"],
        kid=config["kid"],
        public_jwk=service.public_jwk(context, endpoint),
        events=endpoint.events or [],
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        failing_since=iso(endpoint.failing_since),
        created_at=iso(endpoint.created_at),
        last_delivery=delivery_view(*last) if last else None,
    )


@router.put(
    "",
    summary="Create or replace the FHIR write-back destination (SMART Backend Services)",
    description="One per tenant. Every report (`analysis.report_ready`) is then POSTed to `base_url` as a FHIR "
    "transaction Bundle (the DiagnosticReport, its Observations, the PDF as a DocumentReference and the resources "
    "the report rests on), each entry a conditional create keyed on DermaSentinel's identifiers, so a retry never "
    "duplicates; the access token comes from `token_url` for a JWT client assertion signed with `private_key_jwk` "
    "(RS384 or ES384). Both URLs pass the same address rules as webhook endpoints (422). The private key is "
    "stored encrypted and never shown: answers carry the public key to register at the EHR. 201 when created, "
    "200 when replaced.",
    response_model=FhirDestinationOut,
    response_model_exclude_unset=True,
    responses={201: {"description": "Created", "model": FhirDestinationOut}},
)
def put_destination(
    body: FhirDestinationIn,
    request: Request,
    response: Response,
    context: ContextDep,
    tenant: PutDestination,
    session: SessionDep,
) -> FhirDestinationOut:
    # DNS and the key first: the session takes its connection at its first query, after them.
    checked = service.check(context, tenant, body)
    endpoint, created = service.put(context, session, tenant, body, checked)
    if created:
        response.status_code = 201
    audit_note(request).resource_id = str(endpoint.id)
    return view(context, session, endpoint)


@router.get(
    "",
    summary="The FHIR write-back destination and its last delivery",
    description="Its URLs, client id, scopes, the public key (`public_jwk`, `kid`, `alg`) to register at the EHR, "
    "whether it is enabled or failing, and the last write-back with every attempt. Never the private key.",
    response_model=FhirDestinationOut,
    response_model_exclude_unset=True,
    responses=problems((404, "This tenant has no FHIR destination")),
)
def get_destination(
    request: Request, context: ContextDep, tenant: GetDestination, session: SessionDep
) -> FhirDestinationOut:
    endpoint = service.get(session, tenant)
    audit_note(request).resource_id = str(endpoint.id)
    return view(context, session, endpoint)


@router.delete(
    "",
    status_code=204,
    summary="Delete the FHIR write-back destination",
    description="No further reports are written back; its delivery log goes with it. What the EHR holds stays there.",
    response_class=Response,
    responses=problems((404, "This tenant has no FHIR destination")),
)
def delete_destination(request: Request, tenant: DeleteDestination, session: SessionDep) -> Response:
    audit_note(request).resource_id = str(service.delete(session, tenant))
    return Response(status_code=204)


@router.get(
    "/deliveries",
    summary="Write-back log, newest first, with every attempt",
    description="The last `limit` write-backs: status (`pending`, `delivered`, `failed`, `skipped`), when the next "
    "attempt is due, and every attempt with its status code, latency and error (a token refused, entries the FHIR "
    "server refused). Never a token.",
    response_model=DeliveryList,
    response_model_exclude_unset=True,
    responses=problems((404, "This tenant has no FHIR destination")),
)
def list_deliveries(
    tenant: ListDeliveries,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryList:
    rows = service.deliveries(session, tenant, limit)
    return DeliveryList(data=[delivery_view(d, attempts) for d, attempts in rows])


@router.post(
    "/deliveries/{delivery_id}/resend",
    status_code=202,
    summary="Write a report back again now",
    description="The write-back goes back to `pending` and is attempted at once. Its entries are conditional "
    "creates, so what the FHIR server already holds is matched, not created again.",
    response_model=ResendAccepted,
    response_model_exclude_unset=True,
    responses=problems(404),
)
def resend_delivery(
    delivery_id: str, context: ContextDep, tenant: ResendDelivery, session: SessionDep
) -> ResendAccepted:
    delivery = service.resend(context, session, tenant, parse_id(delivery_id, "delivery"))
    return ResendAccepted(id=delivery.id, status=delivery.status)
