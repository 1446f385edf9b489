"""The tenant's PACS destination (issue 23; docs/DICOM.md "PACS (DICOMweb)"): at most one per
tenant, a ``webhook_endpoints`` row of kind ``dicomweb`` (worker/dicomweb.py stores to it by
STOW-RS). Its URL passes the webhooks' SSRF check; its credentials are stored only encrypted
(``secret_box``), as a webhook's signing secret is, and never shown again."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import NotFound, Unprocessable
from api.services.webhook_endpoints import (
    checked_url,
    deliveries_of,
    one_of_kind,
    remove,
    resend_of,
    set_enabled,
)
from shared.context import AppContext
from shared.schemas.dicomweb_destination import DicomwebAuthBasic, DicomwebAuthBearer, DicomwebDestinationIn
from shared.security import secret_box
from shared.tables import Tenant, WebhookAttempt, WebhookDelivery, WebhookEndpoint

KIND = "dicomweb"  # worker.destinations.DICOMWEB (the API never imports the worker)
EVENTS = ["analysis.report_ready"]
NO_AUTH = {"type": "none"}


@dataclass(frozen=True)
class CheckedDestination:
    """A PUT's body after the checks that need no database: the base URL as it will be called
    (no trailing slash), and the credentials as stored (None: keep the stored ones)."""

    url: str
    auth: dict[str, str] | None


def check(context: AppContext, tenant: TenantRef, body: DicomwebDestinationIn) -> CheckedDestination:
    """The URL through the SSRF check (422 naming it); no query or fragment (the STOW-RS URL is
    the base plus ``/studies``). Resolves DNS: call it before the session's first query."""
    if body.url.query or body.url.fragment:
        raise Unprocessable("url is the DICOMweb base URL: it takes no query string or fragment")
    value = str(body.url)
    if context.settings.environment == "production" and not value.lower().startswith("https://"):
        raise Unprocessable("url must be https: the PACS receives the analysed image's findings and the report")
    url = checked_url(context, value, tenant, what="url").rstrip("/")
    auth: dict[str, str] | None = None
    if isinstance(body.auth, DicomwebAuthBasic):
        auth = {"type": "basic", "username": body.auth.username, "password": body.auth.password}
    elif isinstance(body.auth, DicomwebAuthBearer):
        auth = {"type": "bearer", "token": body.auth.token}
    elif body.auth is not None:
        auth = dict(NO_AUTH)
    return CheckedDestination(url=url, auth=auth)


def put(
    context: AppContext, session: Session, tenant: TenantRef, checked: CheckedDestination, enabled: bool
) -> tuple[WebhookEndpoint, bool]:
    """Create the tenant's destination or replace its settings; True when it was created."""
    # Serialise concurrent PUTs of one tenant, so it never holds two.
    session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    endpoint = find(session, tenant)
    created = endpoint is None
    box = secret_box(context.settings)
    if endpoint is None:
        endpoint = WebhookEndpoint(tenant_id=tenant.id, kind=KIND, description="PACS (DICOMweb STOW-RS)")
        session.add(endpoint)
    auth = checked.auth
    if auth is None and created:
        auth = dict(NO_AUTH)  # none given on the first PUT: no credentials
    if auth is not None:
        endpoint.secret_encrypted = box.seal(json.dumps(auth, separators=(",", ":")))
        # What may be shown: the kind of authentication and the account, never a password or token.
        endpoint.config = {"auth": auth["type"], **({"username": auth["username"]} if "username" in auth else {})}
    endpoint.url = checked.url
    endpoint.events = list(EVENTS)
    set_enabled(endpoint, enabled)
    session.flush()
    return endpoint, created


def find(session: Session, tenant: TenantRef) -> WebhookEndpoint | None:
    return one_of_kind(session, tenant, KIND)


def get(session: Session, tenant: TenantRef) -> WebhookEndpoint:
    endpoint = find(session, tenant)
    if endpoint is None:
        raise NotFound("this tenant has no DICOMweb destination; PUT /v1/dicomweb-destination creates it")
    return endpoint


def last_delivery(session: Session, endpoint: WebhookEndpoint) -> tuple[WebhookDelivery, list[WebhookAttempt]] | None:
    rows = deliveries_of(session, endpoint, 1)
    return rows[0] if rows else None


def deliveries(session: Session, tenant: TenantRef, limit: int) -> list[tuple]:
    return deliveries_of(session, get(session, tenant), limit)


def resend(context: AppContext, session: Session, tenant: TenantRef, delivery_id: uuid.UUID) -> WebhookDelivery:
    return resend_of(context, session, get(session, tenant), delivery_id)


def delete(session: Session, tenant: TenantRef) -> uuid.UUID:
    return remove(session, get(session, tenant))
