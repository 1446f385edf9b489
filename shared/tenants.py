"""Tenants and their API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import ApiKey, Tenant
from shared.security import display_prefix, generate_api_key, hash_api_key


def issue_key(session: Session, tenant_name: str, label: str | None = None) -> tuple[Tenant, str]:
    """Create the tenant if needed and a new API key for it; the key is returned once and
    only its hash is stored."""
    tenant = session.execute(select(Tenant).where(Tenant.name == tenant_name)).scalar_one_or_none()
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    key = generate_api_key()
    session.add(ApiKey(tenant_id=tenant.id, prefix=display_prefix(key), key_hash=hash_api_key(key), label=label))
    session.flush()
    return tenant, key
