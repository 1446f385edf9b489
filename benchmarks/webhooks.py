"""Webhook deliveries per second, end to end: outbox rows → `webhooks` queue → the io
worker (threads pool) → signed POSTs to a fast receiver on loopback.

    .venv/bin/python -m benchmarks.webhooks --events 2000

Starts its own Postgres, Redis and S3 (embedded) unless DERMASENTINEL_* URLs are set.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cli.processes import spawn, stop_all
from shared.config import Settings
from shared.context import AppContext
from shared.db import session_scope
from shared.events import record_event
from shared.migrate import upgrade
from shared.models import WebhookEndpoint
from shared.stack import EmbeddedStack
from shared.tenants import issue_key
from shared.webhook_signing import generate_secret


class _Counter:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()


def start_receiver(counter: _Counter) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            with counter.lock:
                counter.count += 1
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16, help="io worker threads")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dermasentinel-bench-webhooks-"))
    given = Settings(_env_file=None)
    stack = EmbeddedStack(work / "stack", postgres=not given.database_url, redis=not given.broker_url, s3=not given.s3_endpoint)
    children = []
    receiver = None
    try:
        endpoints = stack.start()
        settings = Settings(
            _env_file=None,
            data_dir=work,
            database_url=given.database_url or endpoints.database_url,
            broker_url=given.broker_url or endpoints.broker_url,
            s3_endpoint=given.s3_endpoint or endpoints.s3_endpoint,
            s3_access_key=given.s3_access_key or endpoints.s3_access_key,
            s3_secret_key=given.s3_secret_key.get_secret_value() or endpoints.s3_secret_key,
            webhook_allow_cidrs="127.0.0.0/8",
            log_level="WARNING",
        )
        upgrade(settings.database_url)
        context = AppContext(settings)
        counter = _Counter()
        receiver = start_receiver(counter)
        with session_scope(context.session_factory) as session:
            tenant, _ = issue_key(session, "bench")
            session.add(WebhookEndpoint(tenant_id=tenant.id, url=f"http://127.0.0.1:{receiver.server_address[1]}/hook",
                                        events=[], secret=generate_secret(), enabled=True))

        env = {**{k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}, **settings.as_env()}
        children.append(spawn("worker-io", ["cli.main", "worker", "--role", "io", "--concurrency",
                                            str(args.concurrency)], env, work / "logs"))
        time.sleep(5)  # let the worker connect before the clock starts

        started = time.monotonic()
        with session_scope(context.session_factory) as session:
            for i in range(args.events):
                record_event(session, context.celery, tenant_id=tenant.id, type="analysis.succeeded",
                             data={"id": f"bench-{i}", "status": "succeeded"})
        committed = time.monotonic()
        deadline = committed + 600
        while counter.count < args.events and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        print(f"events={args.events} delivered={counter.count} io-threads={args.concurrency} "
              f"outbox-commit={committed - started:.2f}s total={elapsed:.2f}s")
        print(f"throughput: {counter.count / elapsed:.0f} deliveries/second end to end "
              f"(fan-out task + delivery task + signed POST + attempt row per event)")
        context.close()
    finally:
        stop_all(children)
        if receiver is not None:
            receiver.shutdown()
        stack.stop()


if __name__ == "__main__":
    main()
