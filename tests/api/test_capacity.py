"""The API never waits on its pool: slots answer 503 at once when full, the key cache
forgets revoked keys, and every engine carries server-side timeouts (real Postgres)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from api.auth import KeyCache
from api.capacity import AUDIT_SLOTS, AUTH_SLOTS, Capacity, FairSlots, api_database_settings
from api.problems import Overloaded
from shared.db import make_engine
from shared.scopes import ALL_SCOPES
from shared.tenants import KeyGrant


def test_a_full_database_slot_answers_503_with_retry_after(settings):
    capacity = Capacity(settings.model_copy(update={"api_db_concurrency": 1, "api_db_wait_seconds": 0.05}))

    async def scenario():
        async with capacity.database():
            with pytest.raises(Overloaded) as refused:
                async with capacity.database():
                    pass
        async with capacity.database():
            pass  # released again
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"


def test_a_freed_slot_goes_to_the_tenant_holding_the_fewest():
    slots = FairSlots(2)
    served = []

    async def request(tenant: str, hold: asyncio.Event):
        async with slots.hold(tenant, wait=5, what="busy"):
            served.append(tenant)
            await hold.wait()

    async def scenario():
        release = {name: asyncio.Event() for name in ("a1", "a2", "a3", "a4", "b1")}
        tasks = [asyncio.create_task(request("crowd", release[name])) for name in ("a1", "a2", "a3", "a4")]
        await asyncio.sleep(0.05)  # the crowd holds both slots and queues two more
        tasks.append(asyncio.create_task(request("other", release["b1"])))
        await asyncio.sleep(0.05)
        release["a1"].set()  # one slot frees: the other tenant, not the crowd's next, gets it
        await asyncio.sleep(0.05)
        for event in release.values():
            event.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert served[:3] == ["crowd", "crowd", "other"]
    assert served.count("crowd") == 4 and slots.in_use == 0 and not slots.waiting


def test_the_api_pool_is_sized_from_the_work_allowed_to_use_it(settings):
    api = api_database_settings(settings.model_copy(update={"api_db_concurrency": 7}))
    assert api.db_pool_size == 7 + AUTH_SLOTS + AUDIT_SLOTS + 2
    assert api.db_max_overflow == 0
    engine = make_engine(api)
    try:
        assert engine.pool.size() == api.db_pool_size
        with engine.connect() as connection:
            show = lambda name: connection.execute(text(f"SHOW {name}")).scalar_one()  # noqa: E731
            assert show("statement_timeout") == "15s"
            assert show("idle_in_transaction_session_timeout") == "15s"
    finally:
        engine.dispose()


def test_a_transaction_left_idle_is_ended_by_the_server(settings):
    engine = make_engine(settings.model_copy(update={"db_idle_in_transaction_timeout_ms": 300}))
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))  # opens the transaction
            time.sleep(1.0)
            with pytest.raises(DBAPIError, match="idle-in-transaction"):
                connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def test_a_runaway_statement_is_cancelled(settings):
    engine = make_engine(settings.model_copy(update={"db_statement_timeout_ms": 200}))
    try:
        with engine.connect() as connection, pytest.raises(OperationalError):
            connection.execute(text("SELECT pg_sleep(5)"))
    finally:
        engine.dispose()


def test_worker_engines_keep_long_statements(settings):
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar_one() == "0"
    finally:
        engine.dispose()


def test_cached_keys_expire_so_revocation_takes_effect():
    cache = KeyCache(ttl=0.2)
    tenant = KeyGrant(uuid.uuid4(), uuid.uuid4(), frozenset(ALL_SCOPES))
    cache.put("digest", tenant)
    assert cache.get("digest") == tenant
    time.sleep(0.3)
    assert cache.get("digest") is None
    assert KeyCache(ttl=0).get("digest") is None


def test_among_tenants_holding_alike_the_one_served_longest_ago_goes_first():
    """A crowd tenant that was just served waits behind tenants that were not: a clinic that
    sends one request at a time is not starved by crowds that each hold nothing right now."""
    slots = FairSlots(1)
    served = []

    async def request(tenant: str):
        async with slots.hold(tenant, wait=5, what="busy"):
            served.append(tenant)
            await asyncio.sleep(0.01)

    async def scenario():
        tasks = [asyncio.create_task(request("crowd"))]
        await asyncio.sleep(0)  # the crowd holds the slot
        tasks += [asyncio.create_task(request(t)) for t in ("crowd", "crowd", "other-crowd", "clinic")]
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert served == ["crowd", "other-crowd", "clinic", "crowd", "crowd"]
    assert slots.in_use == 0 and not slots.waiting and not slots.last_granted


def test_concurrent_misses_for_one_key_share_one_lookup():
    cache = KeyCache(ttl=5)
    tenant = KeyGrant(uuid.uuid4(), uuid.uuid4(), frozenset(ALL_SCOPES))
    lookups = []

    async def load():
        lookups.append(1)
        await asyncio.sleep(0.05)
        return tenant

    async def scenario():
        return await asyncio.gather(*(cache.resolve("digest", load) for _ in range(50)))

    assert asyncio.run(scenario()) == [tenant] * 50
    assert len(lookups) == 1
    assert cache.get("digest") == tenant
