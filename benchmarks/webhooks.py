"""Webhook deliveries per second, end to end: outbox rows → `webhooks` queue → the io
worker (threads pool) → signed POSTs to a fast receiver on loopback.

    .venv/bin/python -m benchmarks.webhooks --events 2000

Fairness: one tenant fires `--flood` test events at a receiver that accepts connections
and never answers, while another tenant's test events go to a fast receiver; prints the
second tenant's latency (POST /test → signed request received), idle and under the flood.

    .venv/bin/python -m benchmarks.webhooks --fairness --flood 48

Starts its own Postgres, Redis and S3 (embedded) unless DERMASENTINEL_* URLs are set.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from devstack import Receiver, Stack, StackEndpoints, child_env
from devstack.receiver import blackhole
from shared.config import Settings
from shared.context import AppContext
from shared.db import session_scope
from shared.events import record_event
from shared.migrate import upgrade
from shared.schemas import WebhookTestData
from shared.security import secret_box
from shared.tables import WebhookEndpoint
from shared.tenants import issue_key
from shared.webhook_signing import generate_secret


def fairness(settings: Settings, context: AppContext, stack: Stack, args) -> None:
    import httpx

    hole = blackhole()
    receiver = Receiver(204)
    arrivals = receiver.arrivals  # webhook-id -> first arrival
    keys = {}
    with session_scope(context.session_factory) as session:
        for name in ("flooder", "bystander"):
            _, keys[name] = issue_key(session, f"bench-{name}")
    env = child_env(settings)
    base = stack.api(env, args=["--no-access-log"]).url
    stack.worker(env, role="io", concurrency=args.concurrency)
    stack.beat(env)
    clients = {name: httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
               for name, key in keys.items()}
    dead_url = f"http://127.0.0.1:{hole.getsockname()[1]}/hook"
    fast_url = receiver.url
    dead = clients["flooder"].post("/v1/webhook-endpoints", json={"url": dead_url}).json()["id"]
    fast = clients["bystander"].post("/v1/webhook-endpoints", json={"url": fast_url}).json()["id"]
    time.sleep(5)  # let the worker connect before the clock starts

    def bystander_latencies(samples: int) -> list[float]:
        latencies = []
        for _ in range(samples):
            sent = time.monotonic()
            event_id = clients["bystander"].post(f"/v1/webhook-endpoints/{fast}/test").json()["event_id"]
            deadline = sent + 300
            while event_id not in arrivals and time.monotonic() < deadline:
                time.sleep(0.01)
            latencies.append(arrivals.get(event_id, float("inf")) - sent)
            time.sleep(0.5)
        return latencies

    idle = bystander_latencies(args.samples)
    statuses: dict[int, int] = {}
    for _ in range(args.flood):
        code = clients["flooder"].post(f"/v1/webhook-endpoints/{dead}/test").status_code
        statuses[code] = statuses.get(code, 0) + 1
    flooded = bystander_latencies(args.samples)

    def fmt(values: list[float]) -> str:
        ordered = sorted(values)
        return (f"p50 {statistics.median(ordered):.2f} s, max {ordered[-1]:.2f} s "
                f"({', '.join(f'{v:.2f}' for v in values)})")

    print(f"io-threads={args.concurrency} webhook_timeout={settings.webhook_timeout_seconds:g}s")
    print(f"bystander idle:      {fmt(idle)}")
    print(f"flooder /test calls: {args.flood} -> {dict(sorted(statuses.items()))}")
    print(f"bystander flooded:   {fmt(flooded)}")
    for client in clients.values():
        client.close()
    receiver.stop()
    hole.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16, help="io worker threads")
    parser.add_argument("--fairness", action="store_true", help="measure another tenant's latency under a flood")
    parser.add_argument("--flood", type=int, default=48, help="test events at a receiver that never answers")
    parser.add_argument("--samples", type=int, default=4,
                        help="bystander test events per phase (both phases together stay within WEBHOOK_TEST_RATE)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dermasentinel-bench-webhooks-"))
    stack = Stack(work / "stack", given=StackEndpoints.from_settings(Settings(_env_file=None)), log_dir=work / "logs")
    receiver = None
    try:
        endpoints = stack.start()
        settings = Settings(
            _env_file=None,
            data_dir=work,
            **endpoints.settings_fields(),
            webhook_allow_cidrs="127.0.0.0/8",
            log_level="WARNING",
        )
        upgrade(settings.database_url)
        context = AppContext(settings)
        if args.fairness:
            fairness(settings, context, stack, args)
            context.close()
            return
        receiver = Receiver(204, keep_alive=True)
        with session_scope(context.session_factory) as session:
            tenant, _ = issue_key(session, "bench")
            session.add(WebhookEndpoint(tenant_id=tenant.id, url=receiver.url,
                                        events=[], secret_encrypted=secret_box(settings).seal(generate_secret()),
                                        enabled=True))

        stack.worker(child_env(settings), role="io", concurrency=args.concurrency)
        time.sleep(5)  # let the worker connect before the clock starts

        started = time.monotonic()
        with session_scope(context.session_factory) as session:
            for i in range(args.events):
                record_event(session, context.celery, tenant_id=tenant.id, type="analysis.succeeded",
                             data=WebhookTestData(endpoint_id=uuid.uuid4(), message=f"bench-{i}"))
        committed = time.monotonic()
        deadline = committed + 600
        while receiver.count < args.events and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        print(f"events={args.events} delivered={receiver.count} io-threads={args.concurrency} "
              f"outbox-commit={committed - started:.2f}s total={elapsed:.2f}s")
        print(f"throughput: {receiver.count / elapsed:.0f} deliveries/second end to end "
              f"(fan-out task + delivery task + signed POST + attempt row per event)")
        context.close()
    finally:
        if receiver is not None:
            receiver.stop()
        stack.stop()


if __name__ == "__main__":
    main()
