"""Benchmark: what the audit trail costs (issue 22; target: under 5 % of submit throughput).

    python -m benchmarks.audit [--seconds 15] [--rounds 3] [--concurrency 8] [--reads]

Starts one embedded stack and two API processes on it: the API as it ships, and the same API
with ``shared.audit.record_many`` (the API's group commit) replaced by a no-op (``create_app_without_audit`` below: a
benchmark-only factory, so the product has no switch that turns its audit trail off). Then
alternates the two, ``--rounds`` times each, each round ``--seconds`` of ``--concurrency``
clients submitting a 640x480 JPEG (multipart ``POST /v1/analyses``, answered 202 once stored
and queued; no GPU worker runs, the analyses stay queued). Prints submissions/s per round,
the medians, and the audited API's rate as a fraction of the other's. With ``--reads`` it
also measures ``GET /v1/analyses/{id}`` (each an audited read of patient data) the same way.

Both APIs share the machine, the database and the object store, and only one is loaded at a
time; on a 2-core machine the client's CPU is the servers' loss alike, so compare the ratio,
not the absolute rates.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

import devstack
from benchmarks.batches import bench_context
from devstack.apps import api_env
from shared.db import session_scope
from shared.tenants import issue_key
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def create_app_without_audit() -> Any:
    """The API with its audit trail cut out (this benchmark's baseline only)."""
    from shared import audit

    audit.record_many = lambda session_factory, entries: None  # type: ignore[assignment]
    from api.main import create_app

    return create_app()


def _start(settings, workdir: Path, name: str, factory: str) -> devstack.App:
    port = devstack.free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        __import__("sys").executable, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", "--backlog", "4096",
    ]
    env = api_env(devstack.child_env(settings), url, None)
    return devstack.start_app(name, argv, env, workdir / f"{name}.log", url=url, ready_url=f"{url}/healthz")


def _rate(url: str, key: str, seconds: float, concurrency: int, call: Callable[[httpx.Client], int]) -> float:
    done: list[int] = []
    stop = time.monotonic() + seconds
    errors: list[int] = []

    def client() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            while time.monotonic() < stop:
                status = call(http)
                (done if status < 300 else errors).append(status)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        print(f"    (non-2xx answers: {sorted(set(errors))} x{len(errors)})")
    return len(done) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reads", action="store_true", help="also measure audited reads (GET one analysis)")
    args = parser.parse_args()
    image = encode_jpeg(make_lesion(seed=3, size=(480, 640)).image)

    with bench_context(rate_limit="100000/second", concurrent_uploads=1000) as (context, workdir, _port):
        with session_scope(context.session_factory) as session:
            _, key = issue_key(session, "bench-audit")
        apis = {
            "audited": _start(context.settings, workdir, "api-audited", "api.main:create_app"),
            "no audit": _start(context.settings, workdir, "api-plain", "benchmarks.audit:create_app_without_audit"),
        }
        try:
            def submit(http: httpx.Client) -> int:
                return http.post("/v1/analyses", files={"image": ("l.jpg", image, "image/jpeg")}).status_code

            with httpx.Client(base_url=apis["audited"].url, headers={"Authorization": f"Bearer {key}"}) as http:
                analysis_id = http.post("/v1/analyses", files={"image": ("l.jpg", image, "image/jpeg")}).json()["id"]

            def read(http: httpx.Client) -> int:
                return http.get(f"/v1/analyses/{analysis_id}").status_code

            workloads = [("submit", submit)] + ([("read", read)] if args.reads else [])
            for label, call in workloads:
                for api in apis.values():  # warm both up
                    _rate(api.url, key, 2.0, args.concurrency, call)
                rates: dict[str, list[float]] = {name: [] for name in apis}
                for round_ in range(args.rounds):
                    for name, api in apis.items():
                        rate = _rate(api.url, key, args.seconds, args.concurrency, call)
                        rates[name].append(rate)
                        print(f"  {label} round {round_ + 1} {name:>8}: {rate:7.1f}/s")
                audited, plain = (statistics.median(rates[name]) for name in ("audited", "no audit"))
                print(f"{label}: median {audited:.1f}/s audited vs {plain:.1f}/s without the audit trail: "
                      f"{audited / plain:.3f}x ({(1 - audited / plain) * 100:+.1f} % overhead; target < 5 %)")
        finally:
            for api in apis.values():
                api.stop()


if __name__ == "__main__":
    main()
