"""Typed dependencies: the request's session (committed by this dependency), the tenant."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.problems import NotFound, Unauthorized
from shared.context import AppContext
from shared.models import ApiKey, Tenant
from shared.security import KEY_PREFIX, hash_api_key
from shared.storage import IMAGES

UNCOMMITTED_IMAGES = "uncommitted_images"


def get_context(request: Request) -> AppContext:
    return request.app.state.context


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    """The request's unit of work, committed before the response is sent (scope=function),
    so a client never sees 2xx for a row that did not commit."""
    session = context.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        for key in session.info.pop(UNCOMMITTED_IMAGES, []):
            context.store.delete(IMAGES, key)
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_tenant(request: Request, session: SessionDep) -> Tenant:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.startswith(KEY_PREFIX):
        raise Unauthorized(
            "send your API key as 'Authorization: Bearer dsk_…' (create one with `dermasentinel tenants create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = session.execute(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_api_key(key.strip()), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if tenant is None:
        raise Unauthorized("this API key is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_tenant)]


def parse_id(value: str, what: str = "analysis") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no {what} with id {value!r}") from None
