"""How much work the API process takes on at once: request places, database slots, key
checks and image decoding, each shared fairly between tenants.

No pooled connection is ever held while waiting on the client or on another thread: key checks
have slots of their own, a request's session takes a connection only inside its handler, and
how many requests may hold one at once is capped below the pool size, so nobody waits on the
pool; a request that finds every slot taken for ``API_DB_WAIT_SECONDS`` is answered 503 with
Retry-After.

A tenant's request places are also counted across every API replica (issue 26,
``api.cluster_places``): a tenant holds at most ``API_CONCURRENCY`` of them in the whole
cluster, as it would with one replica.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar

from api.cluster_places import Lease, TenantPlaces
from api.problems import Overloaded
from shared.config import Settings

# Whether this request already holds one of the process's request places (Capacity.request).
HOLDS_PLACE: ContextVar[bool] = ContextVar("holds_request_place", default=False)
# Key lookups (one short query each) get their own few connections, so a request that holds
# a database slot never waits on another request's authentication, nor the other way round.
AUTH_SLOTS = 4
# Audit-trail appends (one short transaction each, after the request's own session is closed)
# get their own few connections too.
AUDIT_SLOTS = 4
# Left in the pool for /readyz and anything outside the slots.
SPARE_CONNECTIONS = 2
# A request whose tenant holds all its places across the replicas asks Redis again after this
# long (doubling up to the maximum), or at once when this process gives back one of them.
CLUSTER_RETRY_SECONDS = 0.02
CLUSTER_RETRY_MAX_SECONDS = 0.2


def api_database_settings(settings: Settings) -> Settings:
    """The API's engine settings: a pool exactly as large as the work allowed to use it,
    and the API's own (shorter) server-side timeouts."""
    return settings.model_copy(
        update={
            "db_pool_size": settings.api_db_concurrency + AUTH_SLOTS + AUDIT_SLOTS + SPARE_CONNECTIONS,
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

    def __init__(self, settings: Settings, cluster: TenantPlaces | None = None):
        self.settings = settings
        # Issue 26: a tenant's places across every API replica (None: this process's gate only).
        self.cluster = cluster
        self._database = FairSlots(settings.api_db_concurrency)
        self._auth = FairSlots(AUTH_SLOTS)
        self._audit = FairSlots(AUDIT_SLOTS)
        self._decode = FairSlots(settings.api_decode_concurrency)
        self.requests = FairSlots(settings.api_concurrency)  # held by api.middleware.TenantGate

    def database(self, tenant_id: uuid.UUID | None = None) -> AbstractAsyncContextManager[None]:
        return self._database.hold(tenant_id, self.settings.api_db_wait_seconds, "the database is busy")

    def auth(self) -> AbstractAsyncContextManager[None]:
        return self._auth.hold(None, self.settings.api_db_wait_seconds, "API key checks are busy")

    def audit(self, tenant_id: uuid.UUID | None = None) -> AbstractAsyncContextManager[None]:
        return self._audit.hold(tenant_id, self.settings.api_db_wait_seconds, "the audit trail is busy")

    @asynccontextmanager
    async def decode(self, tenant_id: uuid.UUID | None = None) -> AsyncIterator[None]:
        async with (
            self.request(tenant_id, self.settings.api_decode_wait_seconds),
            self._decode.hold(tenant_id, self.settings.api_decode_wait_seconds, "image decoding is busy"),
        ):
            yield

    @asynccontextmanager
    async def request(self, tenant_id: object, wait: float | None = None) -> AsyncIterator[None]:
        """One of the process's ``API_CONCURRENCY`` places (``api.middleware.TenantGate``), and
        its tenant's place across the replicas (``take_place``): every request but an upload
        takes one at the edge; an upload takes one for each step
        after its body has arrived (decoding, its transaction). Held once per request."""
        if HOLDS_PLACE.get():
            yield
            return
        wait = self.settings.api_db_wait_seconds if wait is None else wait
        lease = await self.take_place(tenant_id, wait)
        token = HOLDS_PLACE.set(True)
        try:
            yield
        finally:
            HOLDS_PLACE.reset(token)
            self.give_back_place(tenant_id, lease)

    async def take_place(self, owner: object, wait: float) -> Lease | None:
        """One of the process's request places for ``owner`` (fair between owners) and, when
        the owner is a tenant, one of its ``API_CONCURRENCY`` places across every replica.
        A tenant at its cluster-wide cap gives its process place back at once (others may
        use it) and asks again, until ``wait`` is spent in all: then 503, as when the process
        is full. Give it back with ``give_back_place``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        tenant = tenant_of(owner) if self.cluster is not None else None
        retry = CLUSTER_RETRY_SECONDS
        while True:
            await self.requests.acquire(owner, max(0.0, deadline - loop.time()), "the API is busy")
            if tenant is None or self.cluster is None:
                return None
            try:
                lease = await self.cluster.take(tenant, self.settings.api_concurrency)
            except BaseException:
                self.requests.release(owner)
                raise
            if lease is not None:
                return lease
            self.requests.release(owner)
            left = deadline - loop.time()
            if left <= 0:
                raise Overloaded(
                    f"the API is busy: this tenant already has {self.settings.api_concurrency} requests in "
                    "progress across the API's replicas; nothing was saved, retry in a second"
                )
            await self.cluster.wait_for_room(tenant, min(left, retry * random.uniform(0.5, 1.0)))
            retry = min(retry * 2, CLUSTER_RETRY_MAX_SECONDS)

    def give_back_place(self, owner: object, lease: Lease | None) -> None:
        self.requests.release(owner)
        if lease is not None and self.cluster is not None:
            self.cluster.release(lease)


def tenant_of(owner: object) -> str | None:
    """The tenant id of a gate's owner (a tenant id, or a cached key's grant); None for an
    owner that is no known tenant (a never-seen key's client address, no key at all)."""
    if isinstance(owner, uuid.UUID):
        return str(owner)
    tenant_id = getattr(owner, "tenant_id", None)
    return str(tenant_id) if isinstance(tenant_id, uuid.UUID) else None
