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
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from sqlalchemy.orm import Session

from api.auth import AuthenticatedTenant, authenticate, client_address
from api.capacity import Capacity
from api.problems import Forbidden, NotFound, Problem
from shared import audit
from shared.context import AppContext
from shared.scopes import Scope
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


@dataclass
class AuditNote:
    """What a handler adds to its audit row: the id of what it created or touched (when the
    path does not name it) and PHI-free detail (counts, names of artifacts)."""

    resource_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


AUDIT_NOTE = "audit_note"


def audit_note(request: Request) -> AuditNote:
    """This request's audit note (``authorized`` put it there)."""
    note = request.scope.setdefault("state", {}).get(AUDIT_NOTE)
    if note is None:
        note = request.scope["state"][AUDIT_NOTE] = AuditNote()
    return note


def status_of(exc: BaseException) -> int:
    if isinstance(exc, Problem):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, RequestValidationError):
        return 422
    return 500


def authorized(
    scope: Scope, action: str, resource_type: str, id_param: str | None = None, *, audited: bool = True
) -> DependsParam:
    """The dependency of an operation that needs ``scope`` (issue 22): the authenticated
    tenant, after checking its key holds the scope (403 naming it, when not), and an audit
    row when the operation ends (``shared.audit``): who (the key's id), ``action`` on
    ``resource_type`` (its id from the path parameter ``id_param``, or what the handler put
    in its ``audit_note``), the outcome and status, the request id, address and user agent.

    The row is appended after the handler's own unit of work has committed and before the
    answer is sent, so a read whose audit row cannot be written is refused (503), never
    answered unrecorded. Declare it before any session parameter: dependencies end in
    reverse order, and the audit row must follow the commit it records. ``audited=False`` only
    for operations that touch no patient data and change nothing (the disposition vocabulary).
    """

    async def dependency(request: Request, tenant: CurrentTenant) -> AsyncIterator[AuthenticatedTenant]:
        note = audit_note(request)
        if id_param is not None:
            note.resource_id = str(request.path_params.get(id_param))[:200]

        async def record(status_code: int) -> None:
            if not audited:
                return
            headers = request.headers
            entry = audit.AuditEntry(
                tenant_id=tenant.id,
                actor=f"key:{tenant.key_id}",
                action=action,
                resource_type=resource_type,
                resource_id=note.resource_id,
                outcome=audit.outcome_of(status_code),
                status_code=status_code,
                request_id=request.scope.get("state", {}).get("request_id"),
                client_address=client_address(request.scope),
                user_agent=headers.get("user-agent"),
                detail=note.detail or None,
            )
            await request.app.state.audit_writer.append(entry)  # group-committed (api.audit_writer)

        if scope.value not in tenant.scopes:
            await record(Forbidden.status)
            raise Forbidden(
                f"this API key lacks the scope '{scope.value}' that this operation needs; ask an admin of the "
                f"tenant for a key that holds it (`dermasentinel tenants keys create TENANT --scope {scope.value}`)"
            )
        try:
            yield tenant
        except Exception as exc:
            await record(status_of(exc))
            raise
        route = request.scope.get("route")
        await record(getattr(route, "status_code", None) or 200)

    dependency.__name__ = f"authorized_{scope.name}"
    dependency.required_scope = scope  # type: ignore[attr-defined]  # api.openapi.contract reads it
    return Depends(dependency, scope="function")



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
