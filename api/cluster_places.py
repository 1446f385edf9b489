"""A tenant's requests in flight across every API replica (issue 26), counted in Redis.

Each API process keeps its own fair gate (``api.capacity.FairSlots``, ``API_CONCURRENCY``
places: what the process itself can work on at once). On top of it, a request of a tenant
that takes a place there also takes a *lease* here: a member of the tenant's Redis sorted set
``dermasentinel:ratelimit:places:<tenant id>``, scored with Redis's clock. A tenant holds at
most ``cap`` leases at once across all replicas, so two replicas give it what one gives it.

- One round trip to take (a Lua script: prune stale leases, count, add) and one to give back
  (``ZREM``, in the background: the answer does not wait for it).
- Leases expire: each process renews the leases it holds every ``lease_seconds / 3`` (one
  script call for all of them), and a lease not renewed for ``lease_seconds`` is pruned by
  the next take. A killed or frozen replica's places come back within ``lease_seconds``.
- Redis away, or any exception from it: the request passes with the process's own gate only
  (fail open), a warning is logged at most once a minute, and Redis is not asked again for a
  few seconds, so an outage does not cost every request a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

KEY_PREFIX = "dermasentinel:ratelimit:places"
# How long a lease lives without renewal: a killed replica's places come back within this.
LEASE_SECONDS = 15.0
# After a failure, requests pass without asking Redis for this long.
SKIP_AFTER_FAILURE_SECONDS = 5.0
# At most one warning line per this many seconds (with how many failures it stands for).
WARN_EVERY_SECONDS = 60.0

# KEYS[1]: the tenant's set; ARGV: cap, lease seconds, member. 1 taken, 0 the tenant is at its cap.
# Redis's own clock scores the leases, so replicas' clocks need not agree.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - lease)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(lease))
return 1
"""
# KEYS: sets, ARGV[1]: lease seconds, ARGV[i + 1]: the member held in KEYS[i]. Only members
# still there are renewed (XX): a lease already pruned stays gone.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = math.ceil(tonumber(ARGV[1]))
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now, ARGV[i + 1])
  redis.call('EXPIRE', key, lease)
end
return #KEYS
"""


@dataclass(frozen=True)
class Lease:
    """One request's place in its tenant's count; ``member`` is None when Redis was away
    (nothing to give back)."""

    tenant: str
    member: str | None


class TenantPlaces:
    """Per-tenant leases on one Redis, shared by every API process that uses it."""

    def __init__(self, redis: aioredis.Redis, lease_seconds: float = LEASE_SECONDS):
        self.redis = redis
        self.lease_seconds = lease_seconds
        self._take = redis.register_script(TAKE)
        self._renew = redis.register_script(RENEW)
        self._held: dict[str, str] = {}  # member → its tenant's key, renewed while held
        self._renewer: asyncio.Task | None = None
        self._releases: set[asyncio.Task] = set()
        self._room: dict[str, list[asyncio.Future]] = defaultdict(list)  # waiters per tenant
        self._skip_until = 0.0
        self._warned_at = -WARN_EVERY_SECONDS
        self._unwarned = 0

    @staticmethod
    def key(tenant: str) -> str:
        return f"{KEY_PREFIX}:{tenant}"

    async def take(self, tenant: str, cap: int) -> Lease | None:
        """A lease for one request of ``tenant``, or None when it holds ``cap`` already."""
        if time.monotonic() < self._skip_until:
            return Lease(tenant, None)
        member = uuid.uuid4().hex
        key = self.key(tenant)
        try:
            taken = await self._take(keys=[key], args=[cap, self.lease_seconds, member])
        except asyncio.CancelledError:
            # The script may have run: give back what it may have added.
            self._release_later(Lease(tenant, member))
            raise
        except Exception as exc:  # any failure of the store fails open (as api.ratelimit does)
            self._failed(exc)
            return Lease(tenant, None)
        if not taken:
            return None
        self._held[member] = key
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_forever())
        return Lease(tenant, member)

    def release(self, lease: Lease) -> None:
        """Give ``lease`` back, in the background; waiters of its tenant in this process are
        woken when it is gone."""
        if lease.member is None:
            return
        self._held.pop(lease.member, None)
        self._release_later(lease)

    async def wait_for_room(self, tenant: str, timeout: float) -> None:
        """Until this process gives back one of ``tenant``'s leases, or ``timeout`` (another
        replica's give-back is only seen by asking again)."""
        woken = asyncio.get_running_loop().create_future()
        waiters = self._room[tenant]
        waiters.append(woken)
        try:
            await asyncio.wait({woken}, timeout=timeout)
        finally:
            waiters.remove(woken)
            if not waiters:
                self._room.pop(tenant, None)

    async def settle(self) -> None:
        """Until every give-back started so far has reached Redis (or failed)."""
        while self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settle(), timeout=2.0)

    def _release_later(self, lease: Lease) -> None:
        task = asyncio.ensure_future(self._give_back(lease))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _give_back(self, lease: Lease) -> None:
        try:
            if lease.member is not None:
                await self.redis.zrem(self.key(lease.tenant), lease.member)
        except Exception as exc:
            self._failed(exc)  # the lease expires on its own
        for waiter in self._room.get(lease.tenant, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def _renew_forever(self) -> None:
        while self._held:
            await asyncio.sleep(self.lease_seconds / 3)
            held = list(self._held.items())
            if not held:
                break
            try:
                await self._renew(
                    keys=[key for _, key in held], args=[self.lease_seconds, *(member for member, _ in held)]
                )
            except Exception as exc:
                self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._skip_until = now + SKIP_AFTER_FAILURE_SECONDS
        self._unwarned += 1
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            log.warning(
                "cluster-wide request places unavailable (%s, %d failure(s) since the last line); serving with "
                "this process's gate only",
                type(exc).__name__, self._unwarned,
            )
            self._warned_at = now
            self._unwarned = 0
