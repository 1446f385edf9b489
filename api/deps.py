"""Typed dependencies: capacity slots, the request's session (committed by this dependency),
the authenticated tenant.

No pooled connection is ever held while waiting on the client or on another thread: the key
is checked in a short session of its own (and remembered for ``AUTH_CACHE_SECONDS``), a
request's own session takes a connection only inside its handler, and how many requests may
hold one at once is capped below the pool size, so nobody waits on the pool; a request that
finds every slot taken for ``API_DB_WAIT_SECONDS`` is answered 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Protocol, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.problems import NotFound, Overloaded, Unauthorized
from shared import tenants
from shared.config import Settings
from shared.context import AppContext
from shared.db import session_scope
from shared.logs import bind as bind_log_context
from shared.security import KEY_PREFIX, hash_api_key
from shared.storage import IMAGES

UNCOMMITTED_IMAGES = "uncommitted_images"
# Whether this request already holds one of the process's request places (Capacity.request).
HOLDS_PLACE: ContextVar[bool] = ContextVar("holds_request_place", default=False)
# Key lookups (one short query each) get their own few connections, so a request that holds
# a database slot never waits on another request's authentication, nor the other way round.
AUTH_SLOTS = 4
# Left in the pool for /readyz and anything outside the slots.
SPARE_CONNECTIONS = 2
T = TypeVar("T")


def api_database_settings(settings: Settings) -> Settings:
    """The API's engine settings: a pool exactly as large as the work allowed to use it,
    and the API's own (shorter) server-side timeouts."""
    return settings.model_copy(
        update={
            "db_pool_size": settings.api_db_concurrency + AUTH_SLOTS + SPARE_CONNECTIONS,
            "db_max_overflow": 0,
            "db_statement_timeout_ms": settings.api_statement_timeout_ms,
            "db_idle_in_transaction_timeout_ms": settings.api_idle_in_transaction_timeout_ms,
        }
    )


class FairSlots:
    """``size`` slots shared by tenants. A freed slot goes to the waiting tenant that holds the
    fewest, and among those to the one served longest ago, so one tenant's crowd queues behind
    itself, not in front of a clinic that sends one request at a time. A request still waiting
    after ``wait`` seconds is refused (503), never queued for long."""

    def __init__(self, size: int):
        self.size = size
        self.in_use = 0
        self.held: Counter[object] = Counter()
        self.waiting: dict[object, deque[asyncio.Future]] = defaultdict(deque)
        # When each tenant that is holding or waiting was last granted a slot (a tie-break).
        self.last_granted: dict[object, int] = {}
        self.grants = 0

    @asynccontextmanager
    async def hold(self, owner: object, wait: float, what: str) -> AsyncIterator[None]:
        await self.acquire(owner, wait, what)
        try:
            yield
        finally:
            self.release(owner)

    async def acquire(self, owner: object, wait: float, what: str) -> None:
        if self.in_use < self.size and not self.waiting:
            self._take(owner)
            return
        granted = asyncio.get_running_loop().create_future()
        self.waiting[owner].append(granted)
        try:
            await asyncio.wait({granted}, timeout=wait)
        except BaseException:
            self._give_up(owner, granted)
            raise
        if not granted.done():
            self._give_up(owner, granted)
            raise Overloaded(f"{what}; nothing was saved, retry in a second")

    def _give_up(self, owner: object, granted: asyncio.Future) -> None:
        if granted.done() and not granted.cancelled():
            self.release(owner)  # granted just as we gave up: pass it on
            return
        granted.cancel()
        queue = self.waiting.get(owner)
        if queue is not None and granted in queue:
            queue.remove(granted)
            if not queue:
                del self.waiting[owner]
                if owner not in self.held:
                    self.last_granted.pop(owner, None)

    def _take(self, owner: object) -> None:
        self.in_use += 1
        self.held[owner] += 1
        self.grants += 1
        self.last_granted[owner] = self.grants

    def release(self, owner: object) -> None:
        self.in_use -= 1
        self.held[owner] -= 1
        if self.held[owner] <= 0:
            del self.held[owner]
            if owner not in self.waiting:
                self.last_granted.pop(owner, None)
        while self.in_use < self.size and self.waiting:
            next_owner = min(
                self.waiting, key=lambda waiter: (self.held.get(waiter, 0), self.last_granted.get(waiter, 0))
            )
            queue = self.waiting[next_owner]
            granted = queue.popleft()
            if not queue:
                del self.waiting[next_owner]
            if not granted.done():
                self._take(next_owner)
                granted.set_result(None)


class Capacity:
    """How many requests may use the database, check keys, or decode images at once."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._database = FairSlots(settings.api_db_concurrency)
        self._auth = FairSlots(AUTH_SLOTS)
        self._decode = FairSlots(settings.api_decode_concurrency)
        self.requests = FairSlots(settings.api_concurrency)  # held by api.middleware.TenantGate

    def database(self, tenant_id: uuid.UUID | None = None):
        return self._database.hold(tenant_id, self.settings.api_db_wait_seconds, "the database is busy")

    def auth(self):
        return self._auth.hold(None, self.settings.api_db_wait_seconds, "API key checks are busy")

    @asynccontextmanager
    async def decode(self, tenant_id: uuid.UUID | None = None) -> AsyncIterator[None]:
        async with (
            self.request(tenant_id, self.settings.api_decode_wait_seconds),
            self._decode.hold(tenant_id, self.settings.api_decode_wait_seconds, "image decoding is busy"),
        ):
            yield

    @asynccontextmanager
    async def request(self, tenant_id: object, wait: float | None = None) -> AsyncIterator[None]:
        """One of the process's ``API_CONCURRENCY`` places (``api.middleware.TenantGate``):
        every request but an upload takes one at the edge; an upload takes one for each step
        after its body has arrived (decoding, its transaction). Held once per request."""
        if HOLDS_PLACE.get():
            yield
            return
        wait = self.settings.api_db_wait_seconds if wait is None else wait
        async with self.requests.hold(tenant_id, wait, "the API is busy"):
            token = HOLDS_PLACE.set(True)
            try:
                yield
            finally:
                HOLDS_PLACE.reset(token)


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
    capacity: Capacity, context: AppContext, tenant_id: uuid.UUID, work: Callable[..., T], *args
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


def _authenticate(context: AppContext, key: str) -> uuid.UUID | None:
    with session_scope(context.session_factory) as session:
        return tenants.authenticate(session, key)


async def get_tenant(request: Request, context: ContextDep, capacity: CapacityDep) -> AuthenticatedTenant:
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
            return await run_in_threadpool(_authenticate, context, key)

    tenant_id = await cache.resolve(hash_api_key(key), load)
    if tenant_id is None:
        raise Unauthorized("this API key is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
    await request.app.state.limiter.tenant_request(request, tenant_id)
    bind_log_context(tenant_id=tenant_id)  # on this request's log lines (docs/OBSERVABILITY.md)
    return AuthenticatedTenant(tenant_id)


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
