"""Tenants and their API keys: issue, list, revoke, and authenticate a presented key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from shared.scopes import ALL_SCOPES, Scope
from shared.security import KEY_PREFIX, display_prefix, generate_api_key, hash_api_key
from shared.tables import ApiKey, Tenant

# last_used_at is for humans deciding what to revoke; minute precision is plenty and
# spares a write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TenantNotFound(LookupError):
    pass


class ApiKeyNotFound(LookupError):
    pass


class KeyQuotaExceeded(RuntimeError):
    pass


class LastKeyError(RuntimeError):
    """Revoking this key would leave the tenant with no way in."""


@dataclass(frozen=True)
class KeyInfo:
    id: uuid.UUID
    tenant_id: uuid.UUID
    prefix: str
    label: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    scopes: tuple[str, ...] = tuple(ALL_SCOPES)

    @classmethod
    def of(cls, key: ApiKey) -> KeyInfo:
        return cls(key.id, key.tenant_id, key.prefix, key.label, key.created_at, key.last_used_at, key.revoked_at,
                   tuple(key.scopes))


@dataclass(frozen=True)
class KeyGrant:
    """What a presented key may act as: its tenant, its own id (the audit trail's actor) and
    its scopes."""

    tenant_id: uuid.UUID
    key_id: uuid.UUID
    scopes: frozenset[str]


def authenticate(session: Session, raw_key: str) -> KeyGrant | None:
    """What an active API key of an enabled tenant may do, or None for an unknown or revoked
    key, or one whose tenant is disabled.

    Records `last_used_at` at most once a minute per key. Commit the session soon after:
    callers should use a short session of its own (see api.deps), never one that stays
    open while a request body streams.
    """
    raw_key = raw_key.strip()
    if not raw_key.startswith(KEY_PREFIX):
        return None
    row = session.execute(
        select(ApiKey.id, ApiKey.tenant_id, ApiKey.last_used_at, ApiKey.scopes)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == hash_api_key(raw_key), ApiKey.revoked_at.is_(None), Tenant.disabled_at.is_(None))
    ).one_or_none()
    if row is None:
        return None
    now = _now()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == row.id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
    return KeyGrant(row.tenant_id, row.id, frozenset(row.scopes))


def exists(session: Session, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant is still there (a deleted tenant's keys may linger in the API's key
    cache for a few seconds)."""
    return session.execute(select(Tenant.id).where(Tenant.id == tenant_id)).first() is not None


def issue_key(
    session: Session, tenant_name: str, label: str | None = None, scopes: list[Scope] | None = None
) -> tuple[Tenant, str]:
    """Create the tenant if needed and a new API key for it (every scope unless ``scopes``);
    the key is returned once and only its hash is stored."""
    tenant = session.execute(select(Tenant).where(Tenant.name == tenant_name)).scalar_one_or_none()
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    return tenant, _add_key(session, tenant.id, label, scopes)


def create_key(
    session: Session, tenant_id: uuid.UUID, label: str | None, *, quota: int, scopes: list[Scope] | None = None
) -> tuple[KeyInfo, str]:
    """A new key for an existing tenant (every scope unless ``scopes``), refused past `quota`
    active keys."""
    active = session.execute(
        select(func.count()).select_from(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None))
    ).scalar_one()
    if active >= quota:
        raise KeyQuotaExceeded(
            f"this tenant already has {active} active API keys (the limit is {quota}); revoke unused ones first"
        )
    key = _add_key(session, tenant_id, label, scopes)
    stored = session.execute(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key))).scalar_one()
    return KeyInfo.of(stored), key


def list_keys(session: Session, tenant_id: uuid.UUID, *, include_revoked: bool = True) -> list[KeyInfo]:
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return [KeyInfo.of(key) for key in session.execute(query).scalars()]


def revoke_key(
    session: Session, tenant_id: uuid.UUID, key_id: uuid.UUID, *, allow_last: bool = False
) -> KeyInfo:
    """Revoke one of the tenant's keys (idempotent). Refuses the tenant's last active key
    unless `allow_last` (operators may lock a tenant out; a tenant may not by accident)."""
    key = session.execute(
        select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id).with_for_update()
    ).scalar_one_or_none()
    if key is None:
        raise ApiKeyNotFound(f"no API key with id {key_id} for this tenant")
    if key.revoked_at is None:
        others = session.execute(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None), ApiKey.id != key.id)
        ).scalar_one()
        if not others and not allow_last:
            raise LastKeyError("this is the tenant's last active API key; create a new one before revoking it")
        if Scope.keys_manage.value in key.scopes and not allow_last:
            managers = session.execute(
                select(func.count()).select_from(ApiKey).where(
                    ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None), ApiKey.id != key.id,
                    ApiKey.scopes.contains([Scope.keys_manage.value]),
                )
            ).scalar_one()
            if not managers:
                raise LastKeyError(
                    "this is the tenant's last active key that can manage keys (keys:manage); "
                    "create another with that scope before revoking it"
                )
        key.revoked_at = _now()
        session.flush()
    return KeyInfo.of(key)


def find_tenant(session: Session, name_or_id: str) -> Tenant:
    """A tenant by exact name, or by id."""
    tenant = session.execute(select(Tenant).where(Tenant.name == name_or_id)).scalar_one_or_none()
    if tenant is None:
        try:
            tenant = session.get(Tenant, uuid.UUID(name_or_id))
        except ValueError:
            tenant = None
    if tenant is None:
        raise TenantNotFound(f"no tenant named {name_or_id!r}")
    return tenant


def _add_key(session: Session, tenant_id: uuid.UUID, label: str | None, scopes: list[Scope] | None) -> str:
    key = generate_api_key()
    chosen = [scope.value for scope in ALL_SCOPES if scopes is None or scope in scopes]
    session.add(ApiKey(tenant_id=tenant_id, prefix=display_prefix(key), key_hash=hash_api_key(key), label=label,
                       scopes=chosen))
    session.flush()
    return key


def _now() -> datetime:
    return datetime.now(UTC)
