"""Benchmark: submissions/s of 1 MB JPEGs, through the API (multipart) and direct (presigned PUT).

    python -m benchmarks.ingest [--count 600] [--concurrency 16] [--bulk 50] [--rounds 3]
                                [--paths multipart,direct,bulk,cli] [--skip-ingest]
                                [--api-url URL --api-key KEY]

Every path submits the same ~1 MB JPEGs (noise-textured photos, 1300x1300, quality 95):
- multipart: ``POST /v1/analyses`` with the image; the API reads, checks and re-encodes it;
- direct: ``POST /v1/uploads``, ``PUT`` the bytes to the presigned URL (the object store, not
  the API), ``POST /v1/analyses {"upload_id"}``; the ingest worker checks and re-encodes later;
- direct, bulk: ``POST /v1/uploads/bulk {"count": --bulk}``, the PUTs, ``POST /v1/uploads/submit``
  with the upload ids: the same checks, the API's fixed cost per request paid once per --bulk
  images. Several chunks are in flight, so that while some wait on their two API calls the
  others' PUTs keep every connection busy (with two in flight the PUT threads idled ~40 %);
- cli: ``dermasentinel batch submit FOLDER --direct --concurrency C`` on a folder of --count
  distinct photos (our own client, timed from start to exit: Python start-up, hashing every
  file, creating and sealing the batch included).

A submission counts once the API has accepted it (202, queued); the ingest worker's later
check and re-encode is asynchronous and not counted in submissions/s (it is timed apart).
The client is threads over urllib3 keep-alive connections (an asyncio httpx client cost
~5 ms of CPU per 1 MB PUT here, ~1.5 ms for urllib3: on a 2-core machine the client's CPU is
the server's loss). On the embedded stack it also prints the CPU time each process spent per
submission (client, CLI included; API, object store, Postgres, Redis) and the rate that CPU
would allow on this machine's cores if nothing else ran.

Also prints the direct path's steps measured one at a time (which of the API and the object
store limits it), and how long one CPU-role worker (the ``ingest`` queue) took to ingest every
direct upload. No GPU worker runs: the analyses stay queued and are canceled at the end.

With --api-url/--api-key it measures that running stack (its rate limits apply: raise
DERMASENTINEL_RATE_LIMIT and CONCURRENT_UPLOADS there); else it starts an embedded stack with
one API process and the tenant's rate limit lifted, as benchmarks/lanes.py does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import urllib3
from PIL import Image
from sqlalchemy import func, select, update
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from benchmarks.lanes import bench_stack
from devstack import child_env, start_worker
from shared import lifecycle
from shared.clock import utcnow
from shared.db import session_scope
from shared.tables import Analysis


def photo(seed: int, side: int = 1300) -> bytes:
    """A JPEG of about 1 MB: smooth colour with sensor-like noise (pure noise would be larger)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([180 - 60 * x, 120 + 40 * y, 100 + 30 * x * y], axis=-1)
    pixels = np.clip(base + rng.normal(0, 14, (side, side, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


def distinct(data: bytes, n: int) -> bytes:
    """The same JPEG with a comment segment naming ``n``: other bytes (another SHA-256, so the
    CLI and the idempotency keys see another photo), the same pixels and about the same size."""
    text = f"copy {n}".encode()
    return data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]


class Busy(RuntimeError):
    """503/429: the API (or a dependency) is overloaded; the request is retried as a client would."""


class Api:
    """A thin keep-alive client: urllib3, threads, JSON in and out; 503/429 retried with
    backoff (every write carries an idempotency key, so a retry never submits twice)."""

    def __init__(self, api_url: str, key: str, concurrency: int):
        self.base = api_url.rstrip("/")
        self.auth = {"Authorization": f"Bearer {key}"}
        self.http = urllib3.PoolManager(maxsize=concurrency, block=True, retries=False,
                                        timeout=urllib3.Timeout(connect=10, read=120))
        self.retries = 0

    def _retrying(self, call):
        for attempt in Retrying(retry=retry_if_exception_type(Busy), wait=wait_exponential(0.2, max=5),
                                stop=stop_after_attempt(8), reraise=True):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.retries += 1
                return call()

    def post(self, path: str, body: dict | None = None, fields: dict | None = None, headers: dict | None = None):
        sent = {**self.auth, **(headers or {})}

        def call():
            if fields is not None:
                response = self.http.request("POST", self.base + path, fields=fields, headers=sent)
            else:
                response = self.http.request("POST", self.base + path, body=json.dumps(body or {}).encode(),
                                             headers={**sent, "Content-Type": "application/json"})
            _check(response, f"POST {path}")
            return json.loads(response.data)

        return self._retrying(call)

    def put(self, upload: dict, data: bytes) -> None:
        def call():
            _check(self.http.request("PUT", upload["url"], body=data, headers=upload["headers"]), "PUT")

        self._retrying(call)


def _check(response, what: str) -> None:
    if response.status in (429, 503):
        raise Busy(f"{what}: HTTP {response.status}")
    if response.status >= 300:
        raise RuntimeError(f"{what}: HTTP {response.status}: {response.data[:300]!r}")


def _multipart(api: Api, data: bytes) -> None:
    api.post("/v1/analyses", fields={"image": ("p.jpg", data, "image/jpeg"), "priority": "bulk"},
             headers={"Idempotency-Key": uuid.uuid4().hex})


def _direct(api: Api, data: bytes) -> None:
    upload = api.post("/v1/uploads", {"content_type": "image/jpeg"})
    api.put(upload, data)
    api.post("/v1/analyses", {"upload_id": upload["id"], "priority": "bulk"}, headers={"Idempotency-Key": upload["id"]})


def _direct_bulk(api: Api, puts: ThreadPoolExecutor, images: list[bytes], first: int, count: int) -> None:
    uploads = api.post("/v1/uploads/bulk", {"count": count, "content_type": "image/jpeg"})["uploads"]
    list(puts.map(lambda n: api.put(uploads[n], images[(first + n) % len(images)]), range(count)))
    items = [{"upload_id": u["id"], "priority": "bulk", "idempotency_key": u["id"]} for u in uploads]
    answer = api.post("/v1/uploads/submit", {"items": items})
    if answer["refused"]:
        raise RuntimeError(f"bulk submit refused {answer['refused']}: {answer['results'][0]}")


def run(api_url: str, key: str, images: list[bytes], count: int, concurrency: int, path: str, bulk: int = 50) -> float:
    """Seconds to submit ``count`` images by ``path`` (multipart, direct, bulk); 503/429 answers
    retried are counted in ``RETRIES``."""
    api = Api(api_url, key, concurrency)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        if path == "bulk":
            chunks = [(first, min(bulk, count - first)) for first in range(0, count, bulk)]
            # Chunks in flight: a third of the PUT threads' number (5 for 16; measured here, 2
            # in flight gave 110/s, 4 gave 138/s, 6 with 24 threads 150/s).
            with ThreadPoolExecutor(max(2, concurrency // 3)) as chunk_pool:
                list(chunk_pool.map(lambda c: _direct_bulk(api, pool, images, *c), chunks))
        else:
            one = _direct if path == "direct" else _multipart
            list(pool.map(lambda n: one(api, images[n % len(images)]), range(count)))
    RETRIES[path] = RETRIES.get(path, 0) + api.retries
    return time.perf_counter() - started


def run_cli(api_url: str, key: str, folder: Path, concurrency: int, name: str) -> float:
    """Seconds ``dermasentinel batch submit FOLDER --direct`` takes, start to exit."""
    command = [sys.executable, "-m", "cli.main", "batch", "submit", str(folder), "--name", name, "--direct",
               "--concurrency", str(concurrency), "--api-url", api_url, "--api-key", key]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"batch submit --direct exited {done.returncode}: {done.stderr[-600:]}")
    return took


RETRIES: dict[str, int] = {}


# ---------------------------------------------------------------- CPU per process


def _process_groups() -> dict[str, list[psutil.Process]]:
    """This process (the client) and, on the embedded stack, its children by role."""
    me = psutil.Process()
    groups: dict[str, list[psutil.Process]] = {"client": [me]}
    for child in me.children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        role = ("api" if "uvicorn" in command else "object store" if "weed" in command
                else "postgres" if "postgres" in command else "redis" if "redis" in command else "other")
        groups.setdefault(role, []).append(child)
    return groups


def _cpu_seconds(groups: dict[str, list[psutil.Process]]) -> dict[str, float]:
    # Children that have exited (the CLI) count as the client's.
    exited = resource.getrusage(resource.RUSAGE_CHILDREN)
    totals = {"client": exited.ru_utime + exited.ru_stime}
    for role, members in groups.items():
        total = totals.get(role, 0.0)
        for member in members:
            try:
                times = member.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        totals[role] = total
    return totals


def measured(label: str, count: int, call) -> None:
    """Run ``call()`` (which submits ``count``) and print its rate and CPU ms per submission by process."""
    groups = _process_groups()
    before = _cpu_seconds(groups)
    load = os.getloadavg()[0]
    retried = sum(RETRIES.values())
    seconds = call()
    retried = sum(RETRIES.values()) - retried
    after = _cpu_seconds(groups)
    spent = {role: (after[role] - before[role]) * 1000 / count for role in before}
    total = sum(spent.values())
    cores = os.cpu_count() or 1
    parts = ", ".join(f"{role} {ms:.1f}" for role, ms in spent.items() if ms >= 0.05)
    print(f"  {label:<22} {count / seconds:6.1f} submissions/s ({seconds:.1f} s for {count}; "
          f"{retried} busy answers retried; load average {load:.1f})")
    print(f"  {'':<22} CPU ms per submission: {parts}; total {total:.1f} "
          f"-> at most {1000 * cores / total:.0f}/s on {cores} idle cores")


async def steps(api_url: str, key: str, images: list[bytes], count: int, concurrency: int) -> dict[str, float]:
    """The direct path one step at a time (all uploads, then all PUTs, then all submissions):
    which of the API and the object store limits it on this machine."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    rates = {}
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=120, limits=limits) as client, \
            httpx.AsyncClient(timeout=120, limits=limits) as store:
        gate = asyncio.Semaphore(concurrency)

        async def timed(name: str, calls) -> list:
            async def bounded(call):
                async with gate:
                    return await call

            started = time.perf_counter()
            out = await asyncio.gather(*(bounded(c) for c in calls))
            rates[name] = count / (time.perf_counter() - started)
            return out

        responses = await timed("POST /v1/uploads", (client.post("/v1/uploads", json={}) for _ in range(count)))
        uploads = [r.raise_for_status().json() for r in responses]
        puts = await timed("PUT to the store", (
            store.put(u["url"], content=images[n % len(images)], headers=u["headers"]) for n, u in enumerate(uploads)
        ))
        for r in puts:
            r.raise_for_status()
        submitted = await timed("POST /v1/analyses {upload_id}", (
            client.post("/v1/analyses", json={"upload_id": u["id"], "priority": "bulk"}) for u in uploads
        ))
        for r in submitted:
            r.raise_for_status()
    return rates


PATHS = {"multipart": "multipart", "direct": "direct, 1 by 1", "bulk": "direct, bulk",
         "cli": "batch submit --direct"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="submissions per path")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bulk", type=int, default=50, help="images per bulk call (at most 100)")
    parser.add_argument("--rounds", type=int, default=1, help="measure every path this many times, interleaved")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--skip-ingest", action="store_true", help="do not time the ingest worker")
    parser.add_argument("--api-url")
    parser.add_argument("--api-key")
    args = parser.parse_args()
    paths = [path.strip() for path in args.paths.split(",") if path.strip()]
    if unknown := set(paths) - set(PATHS):
        parser.error(f"unknown --paths {', '.join(sorted(unknown))}; known: {', '.join(PATHS)}")

    images = [photo(seed) for seed in range(8)]
    size = statistics.mean(len(i) for i in images) / 1e6
    print(f"{args.count} submissions per path, {args.concurrency} in flight, bulk calls of {args.bulk}, "
          f"JPEGs of {size:.2f} MB on average; {os.cpu_count()} cores")
    with contextlib.ExitStack() as stack:
        folder = None
        if "cli" in paths:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ingest-bench-"))) / "backlog"
            folder.mkdir()
            for n in range(args.count):
                (folder / f"photo-{n:05d}.jpg").write_bytes(distinct(images[n % len(images)], n))

        def one_path(url: str, key: str, path: str) -> float:
            if path == "cli":
                assert folder is not None
                return run_cli(url, key, folder, args.concurrency, f"ingest-bench-{uuid.uuid4().hex[:8]}")
            return run(url, key, images, args.count, args.concurrency, path, args.bulk)

        if args.api_url:
            for _ in range(args.rounds):
                for path in paths:
                    seconds = one_path(args.api_url, args.api_key, path)
                    print(f"  {PATHS[path]:<22} {args.count / seconds:6.1f} submissions/s")
            return

        context, key, tenant_id, workdir = stack.enter_context(
            bench_stack(rate_limit="100000/second", concurrent_uploads=1000))
        url = context.settings.api_url
        for _ in range(args.rounds):
            for path in paths:
                measured(PATHS[path], args.count, lambda path=path: one_path(url, key, path))
        rates = asyncio.run(steps(url, key, images, args.count, args.concurrency))
        print("  direct, one step at a time: " + ", ".join(f"{name} {rate:.0f}/s" for name, rate in rates.items()))
        if not args.skip_ingest:
            _time_ingest(context, tenant_id, workdir)
        _cancel_queued(context, tenant_id)


def _time_ingest(context, tenant_id: uuid.UUID, workdir: Path) -> None:
    """One CPU-role worker ingests every direct upload submitted above."""
    waiting = _pending_ingests(context, tenant_id)
    worker = start_worker(child_env(context.settings), workdir / "worker.log", role="cpu")
    started = time.perf_counter()
    try:
        while _pending_ingests(context, tenant_id):
            if time.perf_counter() - started > 900:
                raise RuntimeError("ingest did not finish within 15 minutes")
            time.sleep(0.5)
    finally:
        worker.stop()
    took = time.perf_counter() - started
    print(f"  ingest of the {waiting} direct uploads by one cpu worker (start-up included): "
          f"{took:.1f} s, {waiting / took:.1f}/s")


def _cancel_queued(context, tenant_id: uuid.UUID) -> None:
    with session_scope(context.session_factory) as session:
        session.execute(
            update(Analysis)
            .where(Analysis.tenant_id == tenant_id, Analysis.status == "queued")
            .values(status="canceled", cancel_reason=lifecycle.CANCEL_REQUESTED, completed_at=utcnow())
        )


def _pending_ingests(context, tenant_id: uuid.UUID) -> int:
    with context.session_factory() as session:
        return session.execute(
            select(func.count()).select_from(Analysis)
            .where(Analysis.tenant_id == tenant_id, Analysis.ingest_requested_at.is_not(None))
        ).scalar_one()


if __name__ == "__main__":
    main()
