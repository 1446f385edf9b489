"""/v1/dicomweb-destination: the tenant's PACS, stored to by DICOMweb STOW-RS (issue 23;
docs/DICOM.md "PACS (DICOMweb)"). HTTP only: ``api.services.dicomweb_destination`` does the
work, worker/dicomweb.py the sending."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from api.auth import AuthenticatedTenant
from api.deps import ContextDep, SessionDep, audit_note, authorized, parse_id
from api.problems import problems
from api.routes.webhook_endpoints import delivery_view
from api.services import dicomweb_destination as service
from shared.clock import iso
from shared.schemas import DeliveryList, ResendAccepted
from shared.schemas.dicomweb_destination import DicomwebAuthOut, DicomwebDestinationIn, DicomwebDestinationOut
from shared.scopes import Scope
from shared.tables import WebhookEndpoint

router = APIRouter(prefix="/v1/dicomweb-destination", tags=["webhooks"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
PutDestination = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "dicomweb_destination.update", "dicomweb_destination")
]
GetDestination = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "dicomweb_destination.read", "dicomweb_destination")
]
DeleteDestination = Annotated[
    AuthenticatedTenant, authorized(Scope.webhooks_manage, "dicomweb_destination.delete", "dicomweb_destination")
]
ListDeliveries = Annotated[
    AuthenticatedTenant,
    authorized(Scope.webhooks_manage, "dicomweb_destination.deliveries", "dicomweb_destination"),
]
ResendDelivery = Annotated[
    AuthenticatedTenant,
    authorized(Scope.webhooks_manage, "dicomweb_destination.resend", "webhook_delivery", "delivery_id"),
]


def view(session: Session, endpoint: WebhookEndpoint) -> DicomwebDestinationOut:
    config = endpoint.config or {}
    last = service.last_delivery(session, endpoint)
    return DicomwebDestinationOut(
        id=endpoint.id,
        url=endpoint.url,
        # `username` only for basic authentication (unset fields stay off the wire).
        auth=DicomwebAuthOut(type=config.get("auth", "none"),
                             **({"username": config["username"]} if config.get("username") else {})),
        events=endpoint.events or [],
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        failing_since=iso(endpoint.failing_since),
        created_at=iso(endpoint.created_at),
        last_delivery=delivery_view(*last) if last else None,
    )


@router.put(
    "",
    summary="Create or replace the PACS destination (DICOMweb STOW-RS)",
    description="One per tenant. Every analysis whose report is ready (`analysis.report_ready`) is then stored to "
    "`{url}/studies` by STOW-RS: the DICOM Segmentation, the TID 1500 Structured Report and the Encapsulated PDF "
    "that `GET /v1/analyses/{id}/dicom/seg|sr|pdf` serve (only the Encapsulated PDF for an analysis that did not "
    "succeed), as one `multipart/related` request. Their SOP Instance UIDs are derived from the analysis, so a "
    "retry stores the same instances again, never a second copy. The URL passes the same address rules as "
    "webhook endpoints (422). Credentials (`basic` or `bearer`) are stored encrypted and never shown again. "
    "201 when created, 200 when replaced.",
    response_model=DicomwebDestinationOut,
    response_model_exclude_unset=True,
    responses={201: {"description": "Created", "model": DicomwebDestinationOut}},
)
def put_destination(
    body: DicomwebDestinationIn,
    request: Request,
    response: Response,
    context: ContextDep,
    tenant: PutDestination,
    session: SessionDep,
) -> DicomwebDestinationOut:
    # DNS first: the session takes its connection at its first query, after it.
    checked = service.check(context, tenant, body)
    endpoint, created = service.put(context, session, tenant, checked, body.enabled)
    if created:
        response.status_code = 201
    audit_note(request).resource_id = str(endpoint.id)
    return view(session, endpoint)


@router.get(
    "",
    summary="The PACS destination and its last delivery",
    description="Its URL, the kind of authentication (and the account of `basic`), whether it is enabled or "
    "failing, and the last store with every attempt. Never a password or token.",
    response_model=DicomwebDestinationOut,
    response_model_exclude_unset=True,
    responses=problems((404, "This tenant has no DICOMweb destination")),
)
def get_destination(request: Request, tenant: GetDestination, session: SessionDep) -> DicomwebDestinationOut:
    endpoint = service.get(session, tenant)
    audit_note(request).resource_id = str(endpoint.id)
    return view(session, endpoint)


@router.delete(
    "",
    status_code=204,
    summary="Delete the PACS destination",
    description="No further analyses are stored to the PACS; its delivery log goes with it. What the PACS holds "
    "stays there.",
    response_class=Response,
    responses=problems((404, "This tenant has no DICOMweb destination")),
)
def delete_destination(request: Request, tenant: DeleteDestination, session: SessionDep) -> Response:
    audit_note(request).resource_id = str(service.delete(session, tenant))
    return Response(status_code=204)


@router.get(
    "/deliveries",
    summary="STOW-RS log, newest first, with every attempt",
    description="The last `limit` stores: status (`pending`, `delivered`, `failed`, `skipped`), when the next "
    "attempt is due, and every attempt with its status code, latency and error (credentials refused, instances "
    "the PACS refused and why). Never a password or token.",
    response_model=DeliveryList,
    response_model_exclude_unset=True,
    responses=problems((404, "This tenant has no DICOMweb destination")),
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
    summary="Store an analysis to the PACS again now",
    description="The store goes back to `pending` and is attempted at once. The instances keep their SOP Instance "
    "UIDs, so the PACS keeps one copy of each.",
    response_model=ResendAccepted,
    response_model_exclude_unset=True,
    responses=problems(404),
)
def resend_delivery(
    delivery_id: str, context: ContextDep, tenant: ResendDelivery, session: SessionDep
) -> ResendAccepted:
    delivery = service.resend(context, session, tenant, parse_id(delivery_id, "delivery"))
    return ResendAccepted(id=delivery.id, status=delivery.status)
