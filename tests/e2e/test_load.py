"""A crowd and slow clients cannot take the API down (a CI-sized run of benchmarks/load.py).

Asserts outcomes, not speed: no 500s and no client timeouts, overload answered with 429/503,
another tenant still served, and no database session left idle in a transaction while
uploads trickle in (the cause of the original lock-up). The figures are printed by
``python -m benchmarks.load``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import httpx
import redis
from sqlalchemy import text

from benchmarks.load import Tenant, run_load, seed, slow_upload, start_api
from devstack import free_port
from shared.db import session_scope
from shared.tenants import issue_key


def _tenants(context, count: int) -> list[Tenant]:
    tenants = []
    with session_scope(context.session_factory) as session:
        for _ in range(count):
            _, key = issue_key(session, f"load-{uuid.uuid4().hex[:10]}")
            tenants.append(Tenant(key))
    return tenants


def _tenant_id(context, tenant: Tenant):
    from shared.tenants import authenticate

    with session_scope(context.session_factory) as session:
        return authenticate(session, tenant.key).tenant_id


def _stale_open_transactions(context) -> int:
    with context.engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%' AND now() - state_change > interval '1 second'"
            )
        ).scalar_one()


def test_a_crowd_and_slow_uploads_get_no_500_and_other_tenants_are_served(settings, context, tmp_path):
    crowd = _tenants(context, 4)
    victim, slow = _tenants(context, 2)
    slow_id = _tenant_id(context, slow)
    overrides = {str(slow_id): {"concurrent_uploads": 6}}
    port = free_port()
    loaded = settings.model_copy(
        update={
            "api_url": f"http://127.0.0.1:{port}",
            # Small on purpose, so this run saturates them and overload is exercised.
            "api_db_concurrency": 4,
            "api_db_wait_seconds": 0.5,
            "rate_limit": "20/second",
            "concurrent_uploads": 2,
            "rate_limits_per_tenant": json.dumps(overrides),
        }
    )
    api = start_api(loaded, tmp_path / "api.log", port)
    url = loaded.api_url
    try:
        seed(url, crowd + [victim])

        async def scenario():
            stop = asyncio.Event()
            slow_outcomes = Counter()
            trickling = [asyncio.create_task(slow_upload(url, slow, stop, slow_outcomes, pause=0.5))
                         for _ in range(6)]
            await asyncio.to_thread(_wait_for_upload_slots, loaded, slow_id, 6)
            stale = await asyncio.to_thread(_stale_open_transactions, context)
            report = await run_load(url, crowd, victim, clients=80, duration=6.0, api_pid=api.pid)
            stop.set()
            await asyncio.gather(*trickling)
            return stale, report, slow_outcomes

        stale, report, slow_outcomes = asyncio.run(scenario())
        print("crowd", dict(report.statuses), "victim", dict(report.victim_statuses), "slow", slow_outcomes)

        assert stale == 0, "a database session stayed open while an upload body trickled in"
        assert report.server_errors == 0
        assert report.client_errors == 0, "some requests timed out"
        assert set(report.statuses) <= {200, 202, 429, 503}
        assert report.statuses[200] > 0 and report.statuses[429] > 0
        assert set(report.victim_statuses) <= {200, 503} and report.victim_statuses[200] > 0
        assert set(report.health_statuses) == {200}
        with httpx.Client(base_url=url, headers=victim.headers, timeout=10) as http:
            assert http.get(f"/v1/analyses/{victim.analysis_id}").status_code == 200
    finally:
        api.stop()


def _wait_for_upload_slots(settings, tenant_id, count: int) -> None:
    store = redis.Redis.from_url(settings.broker_url)
    deadline = time.monotonic() + 20
    try:
        while store.zcard(f"dermasentinel:ratelimit:uploads:{tenant_id}") < count:
            assert time.monotonic() < deadline, "the slow uploads never reached the API"
            time.sleep(0.05)
    finally:
        store.close()
    time.sleep(1.5)  # longer than the staleness threshold of _stale_open_transactions
