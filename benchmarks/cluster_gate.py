"""Benchmark (issue 26): what the cluster-wide count of a tenant's requests adds to a GET.

    python -m benchmarks.cluster_gate [--requests 2000] [--rounds 5]

Two gates (``api.middleware.TenantGate``) in one process in front of an app that answers at
once: one with the process's fair gate only (as before issue 26), one that also takes and
gives back the tenant's lease in Redis (``api.cluster_places``). Sends ``--requests`` GETs of
one tenant, one at a time, through each, alternating in ``--rounds`` rounds (so a noisy
machine weighs on both alike), and prints the median and p95 per request of each, the
difference, and the gate's Redis round trips per request (EVALSHA and ZREM calls, from
``INFO commandstats``). Redis comes from
DERMASENTINEL_BROKER_URL when set, else an embedded redis-server in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack

import httpx
import redis

from api.auth import KeyCache
from api.capacity import Capacity
from api.middleware import TenantGate
from api.ratelimit import Limiter
from devstack import start_redis
from shared.config import Settings
from shared.security import hash_api_key
from shared.tenants import KeyGrant


async def _answer(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


# What a client sends (one round trip each); the commands a script runs inside Redis are
# counted by INFO commandstats too, and left out here.
SENT = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_zrem", "cmdstat_script")


def _commands(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return sum(int(stats[name]["calls"]) for name in SENT if name in stats)


async def _run(url: str, requests: int, rounds: int) -> None:
    settings = Settings(_env_file=None, broker_url=url, client_address_rate="", api_concurrency=2)
    tenant = uuid.uuid4()
    key = f"dsk_bench-{tenant.hex}"
    headers = {"Authorization": f"Bearer {key}"}
    clients, limiters = {}, []
    for name, cluster in (("process gate only", False), ("with the cluster count", True)):
        limiter = Limiter(settings)
        limiters.append(limiter)
        cache = KeyCache(3600)
        cache.put(hash_api_key(key), KeyGrant(tenant, uuid.uuid4(), frozenset()))
        capacity = Capacity(settings, cluster=limiter.places if cluster else None)
        gate = TenantGate(_answer, key_cache=cache, capacity=capacity, limiter=limiter)
        clients[name] = httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://bench")
    timings: dict[str, list[float]] = {name: [] for name in clients}
    commands: dict[str, int] = dict.fromkeys(clients, 0)
    try:
        for client in clients.values():  # warm-up: connections, scripts loaded
            for _ in range(50):
                await client.get("/", headers=headers)
        for _ in range(rounds):
            for name, client in clients.items():
                before = _commands(url)
                for _ in range(requests // rounds):
                    started = time.perf_counter()
                    answer = await client.get("/", headers=headers)
                    timings[name].append(time.perf_counter() - started)
                    assert answer.status_code == 200, answer.text
                for limiter in limiters:
                    if limiter.places is not None:
                        await limiter.places.settle()
                commands[name] += _commands(url) - before
    finally:
        for client in clients.values():
            await client.aclose()
        for limiter in limiters:
            await limiter.close()
    medians = {}
    for name, samples in timings.items():
        samples.sort()
        medians[name] = statistics.median(samples)
        p95 = samples[int(0.95 * (len(samples) - 1))]
        print(f"{name:>24}: median {medians[name] * 1e3:.3f} ms, p95 {p95 * 1e3:.3f} ms, "
              f"{commands[name] / len(samples):.2f} Redis round trips per request ({len(samples)} GETs)")
    base, cluster = medians.values()
    print(f"added by the cluster count: {(cluster - base) * 1e3:.3f} ms per GET (median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with ExitStack() as stack:
        url = os.environ.get("DERMASENTINEL_BROKER_URL", "")
        if not url:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="dsbench-redis-"))
            handle = start_redis(folder)
            stack.callback(handle.stop)
            url = handle.url
        asyncio.run(_run(url, args.requests, args.rounds))


if __name__ == "__main__":
    main()
