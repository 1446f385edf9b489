"""The routes' dependencies: the app's context and capacity, the authenticated tenant, and
the request's unit of work (committed by the dependency, before the response is sent).

What they are built on lives beside: ``api.capacity`` (slots shared fairly between tenants),
``api.auth`` (API keys). A request's own session takes a pooled connection only inside its
handler, within one of the tenant's database slots.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.auth import AuthenticatedTenant, authenticate
from api.capacity import Capacity
from api.problems import NotFound
from shared.context import AppContext
from shared.storage import IMAGES

UNCOMMITTED_IMAGES = "uncommitted_images"
T = TypeVar("T")


async def get_context(request: Request) -> AppContext:
    return request.app.state.context


async def get_capacity(request: Request) -> Capacity:
    return request.app.state.capacity


ContextDep = Annotated[AppContext, Depends(get_context)]
CapacityDep = Annotated[Capacity, Depends(get_capacity)]


@contextmanager
def unit_of_work(context: AppContext) -> Iterator[Session]:
    """Commit on success; on failure roll back and delete images stored for rows that never
    committed."""
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


async def in_session(
    capacity: Capacity, context: AppContext, tenant_id: uuid.UUID, work: Callable[..., T], *args: Any
) -> T:
    """Run ``work(session, *args)`` and commit, in one thread hop and one of the tenant's
    database slots: for async routes, after the body is read and checked."""

    def run() -> T:
        with unit_of_work(context) as session:
            return work(session, *args)

    # An upload comes here with its image already decoded: it may wait for a place as long
    # as a decode may, rather than throw that work away after the short database wait.
    async with capacity.request(tenant_id, capacity.settings.api_decode_wait_seconds), capacity.database(tenant_id):
        return await run_in_threadpool(run)


async def get_tenant(request: Request, context: ContextDep, capacity: CapacityDep) -> AuthenticatedTenant:
    """The authenticated tenant (``api.auth``); the OpenAPI document marks every operation
    that depends on this as needing the Bearer key."""
    return await authenticate(request, context, capacity)


CurrentTenant = Annotated[AuthenticatedTenant, Depends(get_tenant)]


async def _database_slot(capacity: CapacityDep, tenant: CurrentTenant) -> AsyncIterator[None]:
    # After authentication and its rate limit: an unknown key never takes a slot.
    async with capacity.database(tenant.id):
        yield


def get_session(
    context: ContextDep, _slot: Annotated[None, Depends(_database_slot, scope="function")]
) -> Iterator[Session]:
    """The request's unit of work, committed before the response is sent (scope=function),
    so a client never sees 2xx for a row that did not commit. The session takes a connection
    at its first query, inside the handler."""
    with unit_of_work(context) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def parse_id(value: str, what: str = "analysis") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no {what} with id {value!r}") from None
