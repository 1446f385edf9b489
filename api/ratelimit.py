"""Per-tenant rate limits and quotas, shared by every API process through Redis.

Request rates use the ``limits`` library (sliding-window counters on the broker's Redis; an
in-process store only when there is no Redis). Uploads in flight are a Redis sorted set per
tenant whose members expire on their own, so a crashed process cannot leak slots forever.
A tenant's request places across replicas (issue 26) are ``api.cluster_places``, on the same
Redis connections (``Limiter.places``).
Limits come from settings (``RATE_LIMIT``, ``CONCURRENT_UPLOADS``) with per-tenant overrides
(``RATE_LIMITS_PER_TENANT``). When Redis itself fails, requests pass: the limiter protects the
service, it must not become the outage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis.asyncio as aioredis
from fastapi import Request
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from api.auth import AuthenticatedTenant
from api.cluster_places import TenantPlaces
from api.deps import CurrentTenant
from api.problems import RateLimited
from shared.config import Settings

log = logging.getLogger(__name__)

# Long enough for a busy Redis, short enough that a dead one costs a request little.
REDIS_TIMEOUT = 1.0
REDIS_CONNECTIONS = 32
KEY_PREFIX = "dermasentinel:ratelimit"
STATE_HEADERS = "ratelimit_headers"
# Issue 26: ANY exception from the store fails open, not only the ones we have met (StorageError,
# OSError, RedisError): a lossy link to Redis also raised RuntimeError from a closed transport
# inside redis-py, which became a 500. The limiter protects the service; it must never be the outage.
STORE_FAILURES = (Exception,)

# Issue 27: ``Limiter.check`` in one round trip. The sliding-window counter of ``limits``
# (SlidingWindowCounterRateLimiter on RedisStorage: the same keys, the same arithmetic) asked
# Redis twice per rate, once to take the hit and once for the window's counts (the RateLimit
# headers); this script does both for every rate of a check at once.
# KEYS[2i-1], KEYS[2i]: rate i's previous and current window; ARGV[3i-2 .. 3i]: its limit,
# expiry (s) and cost. Returns per rate {allowed, previous count, previous TTL ms, current
# count, current TTL ms}, the counts as ``limits``' get_sliding_window reads them after the hit.
SLIDING_WINDOW_HIT = """
local out = {}
for i = 1, #KEYS / 2 do
  local previous, current = KEYS[2 * i - 1], KEYS[2 * i]
  local limit = tonumber(ARGV[3 * i - 2])
  local expiry = tonumber(ARGV[3 * i - 1]) * 1000
  local amount = tonumber(ARGV[3 * i])
  local current_ttl = tonumber(redis.call('pttl', current))
  if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', current, previous)
    redis.call('set', current, 0, 'PX', current_ttl + expiry)
  end
  local previous_count = tonumber(redis.call('get', previous)) or 0
  local previous_ttl = tonumber(redis.call('pttl', previous)) or 0
  local current_count = tonumber(redis.call('get', current)) or 0
  current_ttl = tonumber(redis.call('pttl', current)) or 0
  if previous_ttl <= 0 then previous_ttl = 0 end
  if current_ttl <= 0 then current_ttl = 0 end
  local allowed = 0
  if amount <= limit and math.floor(previous_count * previous_ttl / expiry) + current_count + amount <= limit then
    allowed = 1
    if redis.call('exists', current) == 1 then
      current_count = redis.call('incrby', current, amount)
    else
      redis.call('set', current, amount, 'PX', expiry * 2)
      current_count, current_ttl = amount, expiry * 2
    end
  end
  out[i] = {allowed, previous_count, previous_ttl, current_count, current_ttl}
end
return out
"""


@dataclass(frozen=True)
class TenantLimits:
    requests: str
    concurrent_uploads: int


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_after: int  # seconds until the window has room again

    def headers(self) -> dict[str, str]:
        """IETF draft RateLimit header fields (plus Retry-After when refused)."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(self.reset_after),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_after))
        return headers


def parse_overrides(raw: str) -> dict[str, dict[str, Any]]:
    """``RATE_LIMITS_PER_TENANT``: a JSON object of tenant id → {requests, concurrent_uploads}."""
    if not raw.strip():
        return {}
    try:
        table = json.loads(raw)
        if not isinstance(table, dict):
            raise ValueError("not an object")
        overrides = {}
        for tenant_id, values in table.items():
            overrides[str(uuid.UUID(tenant_id))] = values
        return overrides
    except ValueError as exc:
        raise ValueError(
            "DERMASENTINEL_RATE_LIMITS_PER_TENANT must be a JSON object of tenant id → "
            f'{{"requests": "100/second", "concurrent_uploads": 16}} ({exc})'
        ) from None


class Limiter:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.default = TenantLimits(settings.rate_limit, settings.concurrent_uploads)
        parse_many(self.default.requests)  # fail at start-up, not on the first request
        self.unknown_key_items = parse_many(settings.unknown_key_rate)
        self.address_rate = settings.client_address_rate.strip()
        if self.address_rate:
            parse_many(self.address_rate)  # fail at start-up, not on the first request
        self.overrides = {
            tenant_id: TenantLimits(
                str(values.get("requests", self.default.requests)),
                int(values.get("concurrent_uploads", self.default.concurrent_uploads)),
            )
            for tenant_id, values in parse_overrides(settings.rate_limits_per_tenant).items()
        }
        for limits in self.overrides.values():
            parse_many(limits.requests)
        self.upload_slot_ttl = settings.api_body_read_timeout_seconds + settings.api_decode_wait_seconds + 60
        url = settings.broker_url
        if url.startswith(("redis://", "rediss://")):
            # One bounded pool for the limiter and the upload slots: a burst of requests
            # shares a few connections instead of opening hundreds of them at once.
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=REDIS_CONNECTIONS,
                timeout=REDIS_TIMEOUT,
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
            )
            self.storage: Storage = RedisStorage(
                "async+" + url,
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix=KEY_PREFIX,
                # A documented option, though limits types **options as float | str | bool.
                connection_pool=pool,  # type: ignore[arg-type]
            )
            self.redis: aioredis.Redis | None = aioredis.Redis(connection_pool=pool)
            # Issue 26: a tenant's request places across replicas (api.capacity.Capacity).
            self.places: TenantPlaces | None = TenantPlaces(self.redis)
        else:
            self.storage = MemoryStorage()
            self.redis = None
            self.places = None
        self.window = SlidingWindowCounterRateLimiter(self.storage)
        self._sliding_hit = self.redis.register_script(SLIDING_WINDOW_HIT) if self.redis is not None else None
        self._local_uploads: dict[str, int] = defaultdict(int)

    def limits_for(self, tenant_id: uuid.UUID | str) -> TenantLimits:
        return self.overrides.get(str(tenant_id), self.default)

    async def check(self, limit: str, *identifiers: str) -> Verdict:
        """Count one hit against every rate in ``limit`` ("10/second;500/minute") for
        ``identifiers``; the verdict is the tightest of them."""
        items = _parsed(limit)
        if self.redis is not None and self._sliding_hit is not None:
            verdicts = await self._hit_all(items, identifiers)
        else:
            verdicts = [await self._hit(item, identifiers) for item in items]
        refused = [v for v in verdicts if not v.allowed]
        if refused:
            return max(refused, key=lambda v: v.reset_after)
        return min(verdicts, key=lambda v: v.remaining)

    async def _hit_all(self, items: list[RateLimitItem], identifiers: tuple[str, ...]) -> list[Verdict]:
        """Every rate of a check hit in one script call (``SLIDING_WINDOW_HIT``), with the
        window statistics ``limits`` would give after the hit."""
        keys: list[str] = []
        args: list[int] = []
        for item in items:
            current = f"{KEY_PREFIX}:{{{item.key_for(*identifiers)}}}"  # as limits' RedisStorage names them
            keys += [f"{current}/-1", current]
            args += [item.amount, item.get_expiry(), 1]
        try:
            assert self._sliding_hit is not None
            windows = await self._sliding_hit(keys=keys, args=args, client=self.redis)
        except STORE_FAILURES as exc:
            log.warning("rate limiter storage unavailable (%s); letting the request through", type(exc).__name__)
            return [Verdict(True, item.amount, item.amount, 0) for item in items]
        now = time.time()
        return [_verdict(item, window, now) for item, window in zip(items, windows, strict=True)]

    async def _hit(self, item: RateLimitItem, identifiers: tuple[str, ...]) -> Verdict:
        try:
            allowed = await self.window.hit(item, *identifiers)
            stats = await self.window.get_window_stats(item, *identifiers)
        except STORE_FAILURES as exc:
            cause = getattr(exc, "storage_error", exc)
            log.warning("rate limiter storage unavailable (%s); letting the request through", type(cause).__name__)
            return Verdict(True, item.amount, item.amount, 0)
        reset_after = max(0, math.ceil(stats.reset_time - time.time()))
        return Verdict(allowed, item.amount, stats.remaining, reset_after)

    async def unknown_key(self, address: str) -> None:
        """429 when ``address`` is over ``UNKNOWN_KEY_RATE`` of keys that turned out unknown
        (issue 22). Only tests the windows: what counts is ``count_unknown_key``, after a
        lookup found nothing, so an address sending valid keys never uses its allowance."""
        for item in self.unknown_key_items:
            try:
                allowed = await self.window.test(item, "unknown-keys", address)
                if allowed:
                    continue
                stats = await self.window.get_window_stats(item, "unknown-keys", address)
            except STORE_FAILURES as exc:
                cause = getattr(exc, "storage_error", exc)
                log.warning("rate limiter storage unavailable (%s); letting the request through", type(cause).__name__)
                return
            verdict = Verdict(False, item.amount, 0, max(1, math.ceil(stats.reset_time - time.time())))
            raise RateLimited(
                f"too many requests with unknown or revoked API keys from this address (at most {item}); "
                f"check the key, and retry in {verdict.reset_after} s",
                headers=verdict.headers(),
            )

    async def count_unknown_key(self, address: str) -> None:
        """One key from ``address`` was looked up and not found."""
        try:
            for item in self.unknown_key_items:
                await self.window.hit(item, "unknown-keys", address)
        except STORE_FAILURES as exc:
            cause = getattr(exc, "storage_error", exc)
            log.warning("rate limiter storage unavailable (%s); an unknown key went uncounted", type(cause).__name__)

    async def client_address(self, address: str) -> Verdict | None:
        """Issue 26: one request from ``address``, before authentication; the verdict (None
        when the limit is off). Counted in Redis, so it holds across API replicas."""
        if not self.address_rate:
            return None
        return await self.check(self.address_rate, "address", address)

    async def tenant_request(self, request: Request, tenant_id: uuid.UUID) -> None:
        """Count one API request for the tenant; 429 when over its rate."""
        verdict = await self.check(self.limits_for(tenant_id).requests, "requests", str(tenant_id))
        request.scope.setdefault("state", {})[STATE_HEADERS] = verdict.headers()
        if not verdict.allowed:
            raise RateLimited(
                f"this API key's tenant is over its rate of {verdict.limit} requests per window; "
                f"retry in {max(1, verdict.reset_after)} s",
                headers=verdict.headers(),
            )

    @asynccontextmanager
    async def upload_slot(self, tenant_id: uuid.UUID) -> AsyncIterator[None]:
        """Hold one of the tenant's concurrent-upload slots for the block; 429 when all are taken."""
        limit = self.limits_for(tenant_id).concurrent_uploads
        member = uuid.uuid4().hex
        taken = await self._take_upload_slot(str(tenant_id), member, limit)
        if not taken:
            raise RateLimited(
                f"this tenant already has {limit} uploads in progress; retry when one finishes",
                headers=Verdict(False, limit, 0, 1).headers(),
            )
        try:
            yield
        finally:
            # Shielded: a client that disconnects must not leave its slot taken.
            await asyncio.shield(self._release_upload_slot(str(tenant_id), member))

    async def _take_upload_slot(self, tenant: str, member: str, limit: int) -> bool:
        if self.redis is None:
            if self._local_uploads[tenant] >= limit:
                return False
            self._local_uploads[tenant] += 1
            return True
        key = f"{KEY_PREFIX}:uploads:{tenant}"
        now = time.time()
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, "-inf", now - self.upload_slot_ttl)
                pipe.zadd(key, {member: now})
                pipe.zcard(key)
                pipe.expire(key, math.ceil(self.upload_slot_ttl))
                _, _, in_flight, _ = await pipe.execute()
            if in_flight > limit:
                await self.redis.zrem(key, member)
                return False
        except STORE_FAILURES as exc:
            log.warning("upload quota storage unavailable (%s); letting the upload through", type(exc).__name__)
        return True

    async def _release_upload_slot(self, tenant: str, member: str) -> None:
        if self.redis is None:
            self._local_uploads[tenant] = max(0, self._local_uploads[tenant] - 1)
            return
        try:
            await self.redis.zrem(f"{KEY_PREFIX}:uploads:{tenant}", member)
        except STORE_FAILURES:
            pass  # the member expires with upload_slot_ttl

    async def close(self) -> None:
        if self.places is not None:
            await self.places.close()
        if self.redis is not None:
            await self.redis.aclose()


@lru_cache(maxsize=64)
def _parsed(limit: str) -> list[RateLimitItem]:
    return parse_many(limit)


def _verdict(item: RateLimitItem, window: list[int], now: float) -> Verdict:
    """A rate's verdict from its window after the hit, computed as ``limits``'
    ``SlidingWindowCounterRateLimiter.get_window_stats`` does."""
    allowed, previous_count, previous_ttl_ms, current_count, current_ttl_ms = (int(v) for v in window)
    expiry = item.get_expiry()
    previous_expires_in, current_expires_in = previous_ttl_ms / 1000, current_ttl_ms / 1000
    weighted = previous_count * previous_expires_in / expiry + current_count
    remaining = max(0, item.amount - math.floor(weighted))
    reset_in = 0.0
    if previous_count or current_count:
        # ``limits`` reads the TTLs a round trip after the hit, so never a whole number of
        # steps; read in the same script they can be (a window just made): a whole step then.
        previous_reset_in = _step_left(previous_expires_in, expiry / previous_count) if previous_count else math.inf
        current_reset_in = _step_left(current_expires_in, expiry) if current_count else math.inf
        reset_in = min(previous_reset_in, current_reset_in)
    return Verdict(bool(allowed), item.amount, remaining, max(0, math.ceil(reset_in)))


def _step_left(expires_in: float, step: float) -> float:
    left = expires_in % step
    return left if left > 0 or expires_in <= 0 else step


def get_limiter(request: Request) -> Limiter:
    return request.app.state.limiter


def rate_limit(
    name: str, limit: Callable[[Settings], str]
) -> Callable[[Request, AuthenticatedTenant], Awaitable[None]]:
    """A route dependency: count a call named ``name`` for the request's tenant against the
    rate ``limit(settings)`` returns, e.g.
    ``dependencies=[Depends(rate_limit("webhook-test", lambda s: str(s.webhook_test_rate)))]``."""

    async def dependency(request: Request, tenant: CurrentTenant) -> None:
        limiter = get_limiter(request)
        verdict = await limiter.check(limit(limiter.settings), name, str(tenant.id))
        if not verdict.allowed:
            raise RateLimited(
                f"too many {name} calls: the limit is {verdict.limit} per window; "
                f"retry in {max(1, verdict.reset_after)} s",
                headers=verdict.headers(),
            )

    return dependency
