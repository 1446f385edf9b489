"""Per-tenant rate limits and upload quotas, on the suite's real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest
import redis.asyncio as aioredis
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from api.problems import RateLimited
from api.ratelimit import Limiter, parse_overrides
from devstack import free_port
from shared.config import Settings


def _limiter(settings, **update) -> Limiter:
    return Limiter(settings.model_copy(update=update))


def test_a_tenant_is_refused_past_its_rate_with_the_draft_headers(settings):
    async def scenario():
        limiter = _limiter(settings, rate_limit="3/minute")
        tenant = str(uuid.uuid4())
        try:
            verdicts = [await limiter.check("3/minute", "requests", tenant) for _ in range(4)]
            other = await limiter.check("3/minute", "requests", str(uuid.uuid4()))
        finally:
            await limiter.close()
        return verdicts, other

    verdicts, other = asyncio.run(scenario())
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts[:3]] == [2, 1, 0]
    refused = verdicts[-1].headers()
    assert refused["RateLimit-Limit"] == "3" and refused["RateLimit-Remaining"] == "0"
    assert 1 <= int(refused["Retry-After"]) <= 60 and 1 <= int(refused["RateLimit-Reset"]) <= 60
    assert other.allowed  # counted per tenant


def test_per_tenant_overrides_replace_the_defaults(settings):
    special = uuid.uuid4()
    overrides = json.dumps({str(special): {"requests": "100/second", "concurrent_uploads": 1}})
    limiter = _limiter(settings, rate_limit="5/second", concurrent_uploads=4, rate_limits_per_tenant=overrides)
    assert limiter.limits_for(special).requests == "100/second"
    assert limiter.limits_for(special).concurrent_uploads == 1
    assert limiter.limits_for(uuid.uuid4()).requests == "5/second"
    asyncio.run(limiter.close())


@pytest.mark.parametrize("raw", ["[1]", "{not json", '{"not-a-uuid": {}}'])
def test_malformed_overrides_are_refused_at_start(raw):
    with pytest.raises(ValueError, match="RATE_LIMITS_PER_TENANT"):
        parse_overrides(raw)


@pytest.mark.parametrize("storage", ["redis", "memory"])
def test_concurrent_uploads_are_capped_and_released(settings, storage):
    async def scenario():
        update = {"concurrent_uploads": 2}
        if storage == "memory":
            update["broker_url"] = ""
        limiter = _limiter(settings, **update)
        tenant = uuid.uuid4()
        try:
            async with limiter.upload_slot(tenant), limiter.upload_slot(tenant):
                with pytest.raises(RateLimited) as refused:
                    async with limiter.upload_slot(tenant):
                        pass
                async with limiter.upload_slot(uuid.uuid4()):
                    pass  # another tenant has its own slots
            async with limiter.upload_slot(tenant), limiter.upload_slot(tenant):
                pass  # both came back
        finally:
            await limiter.close()
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"


def test_requests_pass_when_redis_is_down(settings):
    async def scenario():
        limiter = _limiter(settings, broker_url=f"redis://127.0.0.1:{free_port()}/0")
        try:
            verdict = await limiter.check("1/minute", "requests", "t")
            again = await limiter.check("1/minute", "requests", "t")
            async with limiter.upload_slot(uuid.uuid4()):
                pass
        finally:
            await limiter.close()
        return verdict, again

    verdict, again = asyncio.run(scenario())
    assert verdict.allowed and again.allowed


class _ClosedTransportStorage(MemoryStorage):
    """The limits store as a lossy link left it: redis-py raised RuntimeError from a closed
    transport, an exception the limiter did not expect (issue 26)."""

    async def incr(self, *args, **kwargs):
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    async def get(self, *args, **kwargs):
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")


class _ClosedTransportPool(aioredis.ConnectionPool):
    async def get_connection(self, *args, **kwargs):
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")


def test_any_store_exception_fails_open_with_a_log_line(caplog):
    """Not only the store errors we have met: whatever the store raises, the request passes."""
    settings = Settings(_env_file=None, broker_url="redis://127.0.0.1:9/0", unknown_key_rate="1/minute")

    async def scenario():
        limiter = Limiter(settings)
        limiter.window = SlidingWindowCounterRateLimiter(_ClosedTransportStorage())
        limiter.redis = aioredis.Redis(connection_pool=_ClosedTransportPool())
        tenant = uuid.uuid4()
        verdicts = [await limiter.check("1/minute", "requests", str(tenant)) for _ in range(3)]
        for _ in range(3):
            await limiter.unknown_key("198.51.100.7")
            await limiter.count_unknown_key("198.51.100.7")
        async with limiter.upload_slot(tenant), limiter.upload_slot(tenant):
            pass
        return verdicts

    with caplog.at_level(logging.WARNING, logger="api.ratelimit"):
        verdicts = asyncio.run(scenario())
    assert all(v.allowed for v in verdicts)
    lines = [r.getMessage() for r in caplog.records if r.name == "api.ratelimit"]
    assert any("RuntimeError" in line and "letting the request through" in line for line in lines)
    assert any("upload quota storage unavailable (RuntimeError)" in line for line in lines)


def test_two_replicas_share_a_tenants_upload_limit_and_an_address_limit(settings):
    """Two API replicas (two limiters, each with its own Redis connections, as two processes
    have) on one Redis: a tenant's concurrent uploads hold at the configured value across
    both, and so does the per-address limit counted before authentication (issue 26)."""

    async def scenario():
        update = {"concurrent_uploads": 3, "client_address_rate": "5/minute"}
        one, two = _limiter(settings, **update), _limiter(settings, **update)
        tenant, address = uuid.uuid4(), f"198.51.100.{uuid.uuid4().int % 250}"
        refused = []
        try:
            async with one.upload_slot(tenant), two.upload_slot(tenant), one.upload_slot(tenant):
                for limiter in (one, two):
                    with pytest.raises(RateLimited) as over:
                        async with limiter.upload_slot(tenant):
                            pass
                    refused.append(over.value.status)
            async with two.upload_slot(tenant), two.upload_slot(tenant), one.upload_slot(tenant):
                pass  # all three came back
            verdicts = [await (one if i % 2 else two).client_address(address) for i in range(7)]
        finally:
            await one.close()
            await two.close()
        return refused, verdicts

    refused, verdicts = asyncio.run(scenario())
    assert refused == [429, 429]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 2
