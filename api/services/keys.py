"""A tenant's own API keys: list, create (shown once), revoke. The SQL lives in shared.tenants,
which the `dermasentinel tenants keys` commands share."""

from __future__ import annotations

import uuid
from functools import partial

from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import Conflict, Forbidden, NotFound
from shared import revocations, tenants
from shared.context import AppContext
from shared.db import after_commit
from shared.scopes import ALL_SCOPES, Scope

EVERY_SCOPE = frozenset(scope.value for scope in ALL_SCOPES)


class KeyQuotaExceeded(Conflict):
    code, title = "quota_exceeded", "Too many API keys"


def list_all(session: Session, tenant: TenantRef) -> list[tenants.KeyInfo]:
    return tenants.list_keys(session, tenant.id)


def create(
    context: AppContext,
    session: Session,
    tenant: TenantRef,
    label: str | None,
    scopes: list[Scope] | None = None,
    *,
    held: frozenset[str] = EVERY_SCOPE,
) -> tuple[tenants.KeyInfo, str]:
    """A new key holding ``scopes`` (by default all the calling key ``held``); never a scope
    the calling key lacks, so a narrow key cannot mint a wider one."""
    wanted = [scope for scope in ALL_SCOPES if scope.value in held] if scopes is None else scopes
    beyond = [scope.value for scope in wanted if scope.value not in held]
    if beyond:
        raise Forbidden(f"this API key cannot grant the scope '{beyond[0]}': it does not hold it itself")
    try:
        return tenants.create_key(
            session, tenant.id, label, quota=context.settings.api_keys_per_tenant, scopes=list(dict.fromkeys(wanted))
        )
    except tenants.KeyQuotaExceeded as exc:
        raise KeyQuotaExceeded(str(exc)) from None


def revoke(context: AppContext, session: Session, tenant: TenantRef, key_id: uuid.UUID) -> tenants.KeyInfo:
    """Revoke the key; once that commits, every API process forgets it (``shared.revocations``)."""
    try:
        info = tenants.revoke_key(session, tenant.id, key_id)
        after_commit(session, partial(revocations.announce, context.settings, key_id=info.id))
        return info
    except tenants.ApiKeyNotFound as exc:
        raise NotFound(str(exc)) from None
    except tenants.LastKeyError as exc:
        raise Conflict(str(exc)) from None
