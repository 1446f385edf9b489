"""A tenant's own API keys: list, create (shown once), revoke. The SQL lives in shared.tenants,
which the `dermasentinel tenants keys` commands share."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import Conflict, NotFound
from shared import tenants
from shared.context import AppContext


class KeyQuotaExceeded(Conflict):
    code, title = "quota_exceeded", "Too many API keys"


def list_all(session: Session, tenant: TenantRef) -> list[tenants.KeyInfo]:
    return tenants.list_keys(session, tenant.id)


def create(context: AppContext, session: Session, tenant: TenantRef, label: str | None) -> tuple[tenants.KeyInfo, str]:
    try:
        return tenants.create_key(session, tenant.id, label, quota=context.settings.api_keys_per_tenant)
    except tenants.KeyQuotaExceeded as exc:
        raise KeyQuotaExceeded(str(exc)) from None


def revoke(session: Session, tenant: TenantRef, key_id: uuid.UUID) -> tenants.KeyInfo:
    try:
        return tenants.revoke_key(session, tenant.id, key_id)
    except tenants.ApiKeyNotFound as exc:
        raise NotFound(str(exc)) from None
    except tenants.LastKeyError as exc:
        raise Conflict(str(exc)) from None
