"""Issue 26: a tenant's request places across API replicas, on the suite's real Redis.

Two "replicas" are two gates (``api.middleware.TenantGate``), each with its own ``Capacity``
and its own limiter's Redis connections, as two API processes have; the app behind them holds
each request until the test lets it go.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from api.auth import KeyCache
from api.capacity import Capacity
from api.cluster_places import TenantPlaces
from api.middleware import TenantGate
from api.problems import Overloaded
from api.ratelimit import Limiter
from devstack import free_port
from shared.security import hash_api_key
from shared.tenants import KeyGrant

CAP = 3


class _Held:
    """An app that answers /hold/<name> when the test releases <name>, anything else at once."""

    def __init__(self):
        self.inside: set[str] = set()
        self.go: dict[str, asyncio.Event] = {}

    async def __call__(self, scope, receive, send):
        name = scope["path"].removeprefix("/hold/")
        if scope["path"].startswith("/hold/"):
            self.inside.add(name)
            await self.go.setdefault(name, asyncio.Event()).wait()
            self.inside.discard(name)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def release(self, name: str) -> None:
        self.go.setdefault(name, asyncio.Event()).set()


def _replica(settings, app, keys: dict[str, uuid.UUID]):
    limiter = Limiter(settings)
    capacity = Capacity(settings, cluster=limiter.places)
    cache = KeyCache(60)
    for key, tenant_id in keys.items():
        cache.put(hash_api_key(key), KeyGrant(tenant_id, uuid.uuid4(), frozenset()))
    gate = TenantGate(app, key_cache=cache, capacity=capacity, limiter=limiter)
    return limiter, httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://replica")


async def _until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _in_flight(settings, tenant_id) -> int:
    store = redis.Redis.from_url(settings.broker_url)
    try:
        return store.zcard(TenantPlaces.key(str(tenant_id)))
    finally:
        store.close()


def test_two_replicas_give_a_tenant_the_places_one_gives_it(settings):
    """A tenant holds exactly API_CONCURRENCY requests in flight across both replicas; its next
    one waits API_DB_WAIT_SECONDS on either, then 503 with Retry-After; another tenant (and a
    request without a key) is unaffected; a place given back on one replica goes to a request
    waiting on the other."""
    configured = settings.model_copy(update={"api_concurrency": CAP, "api_db_wait_seconds": 1.0})
    crowd, other = uuid.uuid4(), uuid.uuid4()
    keys = {"dsk_crowd-" + crowd.hex: crowd, "dsk_other-" + other.hex: other}
    crowd_key, other_key = ({"Authorization": f"Bearer {key}"} for key in keys)

    async def scenario():
        app = _Held()
        (lim_one, one), (lim_two, two) = _replica(configured, app, keys), _replica(configured, app, keys)
        try:
            held = [asyncio.create_task(replica.get(f"/hold/{name}", headers=crowd_key))
                    for replica, name in ((one, "a1"), (two, "a2"), (one, "a3"))]
            await _until(lambda: app.inside == {"a1", "a2", "a3"})
            in_flight = _in_flight(configured, crowd)

            started = time.monotonic()
            refused = await asyncio.gather(one.get("/quick", headers=crowd_key), two.get("/quick", headers=crowd_key))
            waited = time.monotonic() - started

            others = await asyncio.gather(two.get("/quick", headers=other_key), one.get("/quick"))

            waiting = asyncio.create_task(two.get("/hold/a4", headers=crowd_key))
            await asyncio.sleep(0.2)
            assert "a4" not in app.inside
            app.release("a1")  # given back on replica one: replica two's waiter gets it
            await _until(lambda: "a4" in app.inside, timeout=0.9)
            for name in ("a2", "a3", "a4"):
                app.release(name)
            answers = await asyncio.gather(*held, waiting)
            await lim_one.places.settle()
            await lim_two.places.settle()
            return in_flight, refused, waited, others, answers, _in_flight(configured, crowd)
        finally:
            for client, limiter in ((one, lim_one), (two, lim_two)):
                await client.aclose()
                await limiter.close()

    in_flight, refused, waited, others, answers, left = asyncio.run(scenario())
    assert in_flight == CAP
    for answer in refused:
        assert answer.status_code == 503, answer.text
        assert answer.json()["type"].endswith("/overloaded") and answer.headers["Retry-After"] == "1"
        assert f"already has {CAP} requests in progress across the API's replicas" in answer.json()["detail"]
    assert 0.9 <= waited < 3, waited  # they waited their API_DB_WAIT_SECONDS, not less
    assert [answer.status_code for answer in others] == [200, 200]
    assert [answer.status_code for answer in answers] == [200] * 4
    assert left == 0  # every place came back


HOLDER = """
import asyncio, sys
import redis.asyncio as aioredis
from api.cluster_places import TenantPlaces

async def main(url, tenant, cap, lease):
    places = TenantPlaces(aioredis.Redis.from_url(url), lease_seconds=lease)
    for _ in range(cap):
        assert await places.take(tenant, cap) is not None
    print("held", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


def test_a_killed_replicas_places_come_back_when_their_leases_expire(settings):
    """A replica holding a tenant's places keeps them while it lives (it renews its leases),
    and once it is killed (no release ever sent) they come back within the lease time."""
    tenant, cap, lease = str(uuid.uuid4()), 2, 1.0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, settings.broker_url, tenant, str(cap), str(lease)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

        async def scenario():
            places = TenantPlaces(aioredis.Redis.from_url(settings.broker_url), lease_seconds=lease)
            try:
                refused_at_once = await places.take(tenant, cap)
                await asyncio.sleep(2.5 * lease)  # longer than a lease: the live holder renews
                refused_while_alive = await places.take(tenant, cap)
                holder.send_signal(signal.SIGKILL)
                holder.wait()
                killed = time.monotonic()
                while (taken := await places.take(tenant, cap)) is None:
                    assert time.monotonic() - killed < 3 * lease, "the killed replica's places never came back"
                    await asyncio.sleep(0.05)
                came_back = time.monotonic() - killed
                places.release(taken)
                await places.settle()
                return refused_at_once, refused_while_alive, came_back
            finally:
                await places.close()
                await places.redis.aclose()

        refused_at_once, refused_while_alive, came_back = asyncio.run(scenario())
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert refused_at_once is None and refused_while_alive is None
    assert came_back <= 1.5 * lease, came_back


def test_without_redis_the_gate_fails_open_to_the_process_gate_with_one_log_line(settings, caplog):
    """Redis away: the tenant's requests pass (no timeout each), held by this process's own
    API_CONCURRENCY places, and the outage is one warning line, not one per request."""
    configured = settings.model_copy(update={
        "api_concurrency": 2, "api_db_wait_seconds": 0.2, "broker_url": f"redis://127.0.0.1:{free_port()}/0",
    })
    tenant = uuid.uuid4()

    async def scenario():
        limiter = Limiter(configured)
        capacity = Capacity(configured, cluster=limiter.places)
        try:
            started = time.monotonic()
            leases = [await capacity.take_place(tenant, configured.api_db_wait_seconds) for _ in range(2)]
            took = time.monotonic() - started
            with pytest.raises(Overloaded) as full:  # the process's own gate still holds
                await capacity.take_place(tenant, configured.api_db_wait_seconds)
            for lease in leases:
                capacity.give_back_place(tenant, lease)
            for _ in range(5):
                capacity.give_back_place(tenant, await capacity.take_place(tenant, 0.2))
            return took, full.value
        finally:
            await limiter.close()

    with caplog.at_level(logging.WARNING, logger="api.cluster_places"):
        took, full = asyncio.run(scenario())
    assert took < 1.0, took
    assert full.status == 503 and full.headers["Retry-After"] == "1"
    assert "across the API's replicas" not in full.detail
    lines = [r.getMessage() for r in caplog.records if r.name == "api.cluster_places"]
    assert len(lines) == 1, lines
    assert "cluster-wide request places unavailable (ConnectionError" in lines[0]
    assert "serving with this process's gate only" in lines[0]


def test_the_api_counts_the_places_a_tenant_holds_on_other_replicas(api, api_url, tenant_key, settings):
    """The real API process (its wiring in api/main.py): with the tenant's API_CONCURRENCY
    places held by other replicas (their leases in Redis), its GET waits API_DB_WAIT_SECONDS,
    then 503 + Retry-After; with them given back it is answered, and gives its own back."""
    tenant_id, _ = tenant_key
    key = TenantPlaces.key(str(tenant_id))
    store = redis.Redis.from_url(settings.broker_url)
    try:
        assert api.get("/v1/analyses").status_code == 200  # the key is now known to this replica
        seconds, micros = store.time()
        store.zadd(key, {f"elsewhere-{n}": seconds + micros / 1e6 for n in range(settings.api_concurrency)})
        started = time.monotonic()
        refused = api.get("/v1/analyses")
        waited = time.monotonic() - started
        without_key = httpx.get(f"{api_url}/healthz")
        store.delete(key)
        answered = api.get("/v1/analyses")
        deadline = time.monotonic() + 5
        while store.zcard(key) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = store.zcard(key)
    finally:
        store.delete(key)
        store.close()
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", refused.text
    assert "requests in progress across the API's replicas" in refused.json()["detail"]
    assert waited >= settings.api_db_wait_seconds * 0.9, waited
    assert without_key.status_code == 200
    assert answered.status_code == 200 and left == 0
