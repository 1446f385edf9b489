"""Who a request acts for: its API key, checked against the tenants' keys and remembered for
``AUTH_CACHE_SECONDS`` so that most requests need no lookup.

A key is checked in a short session of its own, inside one of ``Capacity``'s key-check slots,
never in the request's own session: a request never holds a pooled connection while it waits
for authentication. ``api.deps.get_tenant`` is the dependency that calls ``authenticate``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from psycopg.errors import ForeignKeyViolation
from sqlalchemy.exc import IntegrityError
from starlette.types import Scope

from api.capacity import Capacity
from api.problems import NotFound, Unauthorized, problem_response
from shared import revocations, tenants
from shared.config import Settings
from shared.context import AppContext
from shared.db import session_scope
from shared.logs import bind as bind_log_context
from shared.security import KEY_PREFIX, hash_api_key

log = logging.getLogger(__name__)

# scope["state"] keys: the authenticated tenant's id, and that TenantGate has already checked
# this request's address against the limit on unknown keys.
TENANT_ID = "tenant_id"
UNKNOWN_KEY_CHECKED = "unknown_key_checked"


class TenantRef(Protocol):
    """What the services need of a tenant: its id. The request's ``AuthenticatedTenant`` and a
    ``shared.tables.Tenant`` row (the CLI, the tests) both are one."""

    @property
    def id(self) -> uuid.UUID: ...


@dataclass(frozen=True)
class TenantId:
    """A ``TenantRef`` from a bare id: a service reading again on an authenticated tenant's
    behalf, outside the request's dependencies."""

    id: uuid.UUID


@dataclass(frozen=True)
class AuthenticatedTenant:
    """Who the request acts for: the tenant (services only ever need its ``id``), the key that
    was presented (the audit trail's actor) and what that key may do."""

    id: uuid.UUID
    key_id: uuid.UUID
    scopes: frozenset[str]

    @classmethod
    def of(cls, grant: tenants.KeyGrant) -> AuthenticatedTenant:
        return cls(grant.tenant_id, grant.key_id, grant.scopes)


class KeyCache:
    """Key hash → what it may act as (``tenants.KeyGrant``) for a few seconds, so most requests
    need no key lookup; a revoked key stops working within ``ttl`` seconds.

    Apart from that, the hashes of keys that were valid within ``known_ttl`` seconds (an hour)
    are remembered as *known*: they still need a lookup once their entry expires, but they are
    never held back by the limit on unknown keys (``api.ratelimit.Limiter.unknown_key``), so
    a flood of made-up keys from a shared address cannot lock out a tenant's real ones. A
    lookup that finds no key forgets it at once."""

    def __init__(self, ttl: float, max_entries: int = 10_000, known_ttl: float = 3600.0):
        self.ttl, self.max_entries, self.known_ttl = ttl, max_entries, known_ttl
        self._entries: dict[str, tuple[float, tenants.KeyGrant]] = {}
        self._known: dict[str, tuple[float, uuid.UUID]] = {}
        self._loading: dict[str, asyncio.Future] = {}

    async def resolve(
        self, digest: str, load: Callable[[], Awaitable[tenants.KeyGrant | None]]
    ) -> tenants.KeyGrant | None:
        """The cached tenant, else ``load()``'s. Concurrent misses for one key share one lookup
        (a task of its own, so a caller that disconnects does not cancel it for the others):
        a tenant's crowd whose entry just expired costs one query, not one each."""
        grant = self.get(digest)
        if grant is not None:
            return grant
        lookup = self._loading.get(digest)
        if lookup is None:
            lookup = self._loading[digest] = asyncio.ensure_future(self._load(digest, load))
            lookup.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(lookup)

    async def _load(
        self, digest: str, load: Callable[[], Awaitable[tenants.KeyGrant | None]]
    ) -> tenants.KeyGrant | None:
        try:
            grant = await load()
        finally:
            self._loading.pop(digest, None)
        if grant is not None:
            self.put(digest, grant)
        else:
            self._known.pop(digest, None)
        return grant

    def get(self, digest: str) -> tenants.KeyGrant | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, grant: tenants.KeyGrant) -> None:
        now = time.monotonic()
        if len(self._known) >= self.max_entries:
            self._known.clear()
        self._known[digest] = (now + self.known_ttl, grant.tenant_id)
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[digest] = (now + self.ttl, grant)

    def known(self, digest: str) -> uuid.UUID | None:
        """The tenant this key belonged to when it was last found valid (within ``known_ttl``),
        whether or not its cache entry is still fresh: who it *probably* is, never who it is."""
        entry = self._known.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def forget_key(self, key_id: uuid.UUID) -> None:
        """Drop a revoked key's entry (its digest is not known here, its id is)."""
        for digest in [d for d, (_, grant) in self._entries.items() if grant.key_id == key_id]:
            self._entries.pop(digest, None)

    def forget_tenant(self, tenant_id: uuid.UUID) -> None:
        """Drop every key of a tenant that no longer exists (or may no longer act)."""
        for digest in [d for d, (_, grant) in self._entries.items() if grant.tenant_id == tenant_id]:
            self._entries.pop(digest, None)
        for digest in [d for d, (_, owner) in self._known.items() if owner == tenant_id]:
            self._known.pop(digest, None)


def _grant_of_key(context: AppContext, key: str) -> tenants.KeyGrant | None:
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
    limiter = request.app.state.limiter
    digest = hash_api_key(key)
    address = client_address(request.scope)
    # A key neither cached nor known is looked up only while this address is under its limit
    # of unknown keys (issue 22): a flood of made-up keys is answered 429 before it reaches
    # the database. TenantGate has already asked for requests it holds.
    unknown = cache.get(digest) is None and cache.known(digest) is None
    if unknown and not request.scope.get("state", {}).get(UNKNOWN_KEY_CHECKED):
        await limiter.unknown_key(address)

    async def load() -> tenants.KeyGrant | None:
        async with capacity.auth():
            return await run_in_threadpool(_grant_of_key, context, key)

    grant = await cache.resolve(digest, load)
    if grant is None:
        await limiter.count_unknown_key(address)
        raise Unauthorized(
            "this API key is unknown or revoked, or its tenant is disabled", headers={"WWW-Authenticate": "Bearer"}
        )
    await limiter.tenant_request(request, grant.tenant_id)
    request.scope.setdefault("state", {})[TENANT_ID] = grant.tenant_id
    bind_log_context(tenant_id=grant.tenant_id)  # on this request's log lines (docs/OBSERVABILITY.md)
    return AuthenticatedTenant.of(grant)


def client_address(scope: Scope) -> str:
    """The client's address as uvicorn saw it (behind a proxy, set FORWARDED_ALLOW_IPS so it is
    the client's, not the proxy's: docs/API_HARDENING.md)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _tenant_exists(context: AppContext, tenant_id: uuid.UUID) -> bool:
    with session_scope(context.session_factory) as session:
        return tenants.exists(session, tenant_id)


def _gone(request: Request, detail: str) -> JSONResponse:
    return problem_response(
        401, Unauthorized.code, Unauthorized.title, detail, request.url.path, headers={"WWW-Authenticate": "Bearer"},
    )


def install(app: FastAPI) -> None:
    """A key whose tenant is gone is a 401, never a 500 nor a 404 (issue 22). Within the key
    cache's few seconds a deleted tenant's key still authenticates: its first write fails on
    the tenant's foreign key, and its reads find nothing (404). Either is recognised here (the
    request's tenant no longer exists), its keys are dropped from the cache, and the answer
    is 401. The check costs one query, and only on those failures."""

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        tenant_id = request.scope.get("state", {}).get(TENANT_ID)
        if tenant_id is not None:
            context: AppContext = request.app.state.context
            try:
                exists = await run_in_threadpool(_tenant_exists, context, tenant_id)
            except Exception:  # the database is away: the 404 stands (nothing of the tenant's was shown)
                exists = True
            if not exists:
                request.app.state.key_cache.forget_tenant(tenant_id)
                return _gone(request, "this API key's tenant no longer exists")
        return problem_response(exc.status, exc.code, exc.title, exc.detail, request.url.path, exc.errors, exc.headers)

    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: IntegrityError) -> JSONResponse:
        tenant_id = request.scope.get("state", {}).get(TENANT_ID)
        if isinstance(exc.orig, ForeignKeyViolation) and tenant_id is not None:
            context: AppContext = request.app.state.context
            if not await run_in_threadpool(_tenant_exists, context, tenant_id):
                request.app.state.key_cache.forget_tenant(tenant_id)
                return _gone(request, "this API key's tenant no longer exists; nothing was saved")
        raise exc


async def listen_for_revocations(settings: Settings, cache: KeyCache) -> None:
    """Drop cached keys as revocations are announced (``shared.revocations``), for as long as
    the process runs; reconnects after a lost connection (meanwhile the cache's few seconds
    bound the delay, as without this)."""
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return
    delay = 0.5
    while True:
        client = aioredis.Redis.from_url(settings.broker_url, socket_connect_timeout=2)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(revocations.CHANNEL)
                delay = 0.5
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        tenant_id, key_id = revocations.parse(message["data"])
                    except ValueError:
                        continue
                    if tenant_id is not None:
                        cache.forget_tenant(tenant_id)
                    if key_id is not None:
                        cache.forget_key(key_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: try again soon
            log.info("revocations: listening again in %.1f s (%s)", delay, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        finally:
            await client.aclose()
