"""Who a request acts for: its API key, checked against the tenants' keys and remembered for
``AUTH_CACHE_SECONDS`` so that most requests need no lookup.

A key is checked in a short session of its own, inside one of ``Capacity``'s key-check slots,
never in the request's own session: a request never holds a pooled connection while it waits
for authentication. ``api.deps.get_tenant`` is the dependency that calls ``authenticate``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from api.capacity import Capacity
from api.problems import Unauthorized
from shared import tenants
from shared.context import AppContext
from shared.db import session_scope
from shared.logs import bind as bind_log_context
from shared.security import KEY_PREFIX, hash_api_key


class TenantRef(Protocol):
    """What the services need of a tenant: its id. The request's ``AuthenticatedTenant`` and a
    ``shared.tables.Tenant`` row (the CLI, the tests) both are one."""

    @property
    def id(self) -> uuid.UUID: ...


@dataclass(frozen=True)
class AuthenticatedTenant:
    """Who the request acts for. Services only ever need the id."""

    id: uuid.UUID


class KeyCache:
    """Key hash → tenant id for a few seconds, so most requests need no key lookup; a revoked
    key stops working within ``ttl`` seconds."""

    def __init__(self, ttl: float, max_entries: int = 10_000):
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: dict[str, tuple[float, uuid.UUID]] = {}
        self._loading: dict[str, asyncio.Future] = {}

    async def resolve(self, digest: str, load: Callable[[], Awaitable[uuid.UUID | None]]) -> uuid.UUID | None:
        """The cached tenant, else ``load()``'s. Concurrent misses for one key share one lookup
        (a task of its own, so a caller that disconnects does not cancel it for the others):
        a tenant's crowd whose entry just expired costs one query, not one each."""
        tenant_id = self.get(digest)
        if tenant_id is not None:
            return tenant_id
        lookup = self._loading.get(digest)
        if lookup is None:
            lookup = self._loading[digest] = asyncio.ensure_future(self._load(digest, load))
            lookup.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(lookup)

    async def _load(self, digest: str, load: Callable[[], Awaitable[uuid.UUID | None]]) -> uuid.UUID | None:
        try:
            tenant_id = await load()
        finally:
            self._loading.pop(digest, None)
        if tenant_id is not None:
            self.put(digest, tenant_id)
        return tenant_id

    def get(self, digest: str) -> uuid.UUID | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, tenant_id: uuid.UUID) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.ttl, tenant_id)


def _tenant_of_key(context: AppContext, key: str) -> uuid.UUID | None:
    with session_scope(context.session_factory) as session:
        return tenants.authenticate(session, key)


async def authenticate(request: Request, context: AppContext, capacity: Capacity) -> AuthenticatedTenant:
    """The tenant of the request's ``Authorization: Bearer dsk_…`` key (401 without a known
    one), after the tenant's rate limit (429) and bound to its log lines."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith(KEY_PREFIX) or len(key) > 256:
        raise Unauthorized(
            "send your API key as 'Authorization: Bearer dsk_…' (create one with `dermasentinel tenants create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    cache: KeyCache = request.app.state.key_cache

    async def load() -> uuid.UUID | None:
        async with capacity.auth():
            return await run_in_threadpool(_tenant_of_key, context, key)

    tenant_id = await cache.resolve(hash_api_key(key), load)
    if tenant_id is None:
        raise Unauthorized("this API key is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
    await request.app.state.limiter.tenant_request(request, tenant_id)
    bind_log_context(tenant_id=tenant_id)  # on this request's log lines (docs/OBSERVABILITY.md)
    return AuthenticatedTenant(tenant_id)
