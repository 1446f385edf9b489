"""The tenant's FHIR write-back destination (issue 23; docs/FHIR_WRITEBACK.md): at most one per
tenant, a ``webhook_endpoints`` row of kind ``fhir-writeback`` (worker/fhir_writeback.py sends
to it). Its URLs pass the webhooks' SSRF check; its private key is checked here and stored only
encrypted (``secret_box``), as a webhook's signing secret is."""

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
from shared.schemas.fhir_destination import FhirDestinationIn
from shared.security import secret_box
from shared.smart_backend import InvalidPrivateKey, SigningKey, signing_key, stored_signing_key
from shared.tables import Tenant, WebhookAttempt, WebhookDelivery, WebhookEndpoint

KIND = "fhir-writeback"  # worker.destinations.FHIR_WRITEBACK (the API never imports the worker)
EVENTS = ["analysis.report_ready"]


@dataclass(frozen=True)
class CheckedDestination:
    """A PUT's body after the checks that need no database: URLs as they will be called, and
    the signing key (None: keep the stored one)."""

    base_url: str
    token_url: str
    key: SigningKey | None


def check(context: AppContext, tenant: TenantRef, body: FhirDestinationIn) -> CheckedDestination:
    """The URLs through the SSRF check (422 naming the field) and the key parsed (422 naming
    what is wrong with it). Resolves DNS: call it before the session's first query."""
    urls = {}
    for field, value in (("base_url", str(body.base_url)), ("token_url", str(body.token_url))):
        if context.settings.environment == "production" and not value.lower().startswith("https://"):
            raise Unprocessable(f"{field} must be https: the write-back sends a bearer token and patient data")
        urls[field] = checked_url(context, value, tenant, what=field)
    key = None
    if body.private_key_jwk is not None:
        try:
            key = signing_key(body.private_key_jwk)
        except InvalidPrivateKey as exc:
            raise Unprocessable(f"private_key_jwk: {exc}") from None
    return CheckedDestination(base_url=urls["base_url"].rstrip("/"), token_url=urls["token_url"], key=key)


def put(
    context: AppContext, session: Session, tenant: TenantRef, body: FhirDestinationIn, checked: CheckedDestination
) -> tuple[WebhookEndpoint, bool]:
    """Create the tenant's destination or replace its settings; True when it was created."""
    # Serialise concurrent PUTs of one tenant, so it never holds two.
    session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    endpoint = find(session, tenant)
    created = endpoint is None
    box = secret_box(context.settings)
    if checked.key is not None:
        key = checked.key
    elif endpoint is not None:
        key = stored_signing_key(box.open(endpoint.secret_encrypted))
    else:
        raise Unprocessable("private_key_jwk is required: this tenant has no FHIR destination yet")
    config = {
        "token_url": checked.token_url,
        "client_id": body.client_id,
        "scopes": " ".join(body.scopes.split()),
        "alg": key.alg,
        "kid": key.kid,
    }
    if endpoint is None:
        endpoint = WebhookEndpoint(
            tenant_id=tenant.id, kind=KIND, description="FHIR write-back (SMART Backend Services)"
        )
        session.add(endpoint)
    endpoint.url = checked.base_url
    endpoint.events = list(EVENTS)
    endpoint.config = config
    if checked.key is not None:
        endpoint.secret_encrypted = box.seal(json.dumps(checked.key.private_jwk, separators=(",", ":")))
    set_enabled(endpoint, body.enabled)
    session.flush()
    return endpoint, created


def find(session: Session, tenant: TenantRef) -> WebhookEndpoint | None:
    return one_of_kind(session, tenant, KIND)


def get(session: Session, tenant: TenantRef) -> WebhookEndpoint:
    endpoint = find(session, tenant)
    if endpoint is None:
        raise NotFound("this tenant has no FHIR destination; PUT /v1/fhir-destination creates it")
    return endpoint


def public_jwk(context: AppContext, endpoint: WebhookEndpoint) -> dict:
    """The public half of the stored key (the private one never leaves this function)."""
    return stored_signing_key(secret_box(context.settings).open(endpoint.secret_encrypted)).public_jwk


def last_delivery(session: Session, endpoint: WebhookEndpoint) -> tuple[WebhookDelivery, list[WebhookAttempt]] | None:
    rows = deliveries_of(session, endpoint, 1)
    return rows[0] if rows else None


def deliveries(session: Session, tenant: TenantRef, limit: int) -> list[tuple]:
    return deliveries_of(session, get(session, tenant), limit)


def resend(context: AppContext, session: Session, tenant: TenantRef, delivery_id: uuid.UUID) -> WebhookDelivery:
    return resend_of(context, session, get(session, tenant), delivery_id)


def delete(session: Session, tenant: TenantRef) -> uuid.UUID:
    return remove(session, get(session, tenant))
