"""Benchmark: submissions/s of 1 MB JPEGs, through the API (multipart) and direct (presigned PUT).

    python -m benchmarks.ingest [--count 300] [--concurrency 16] [--api-url URL --api-key KEY]

Both paths submit the same ~1 MB JPEGs (noise-textured photos, 1300x1300, quality 95):
- multipart: ``POST /v1/analyses`` with the image; the API reads, checks and re-encodes it;
- direct: ``POST /v1/uploads``, ``PUT`` the bytes to the presigned URL (the object store, not
  the API), ``POST /v1/analyses {"upload_id"}``; the ingest worker checks and re-encodes later.

Prints accepted submissions/s for each (target >= 100/s direct), the direct path's steps
measured one at a time (which of the API and the object store limits it), and how long one
CPU-role worker (the ``ingest`` queue) took to ingest every direct upload. No GPU worker runs:
the analyses stay queued and are canceled at the end.

With --api-url/--api-key it measures that running stack (its rate limits apply: raise
DERMASENTINEL_RATE_LIMIT and CONCURRENT_UPLOADS there); else it starts an embedded stack with
one API process and the tenant's rate limit lifted, as benchmarks/lanes.py does.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import time
import uuid

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import func, select, update

from benchmarks.batches import start_process
from benchmarks.lanes import bench_stack
from cli.processes import stop_process
from shared import analyses as lifecycle
from shared.db import session_scope
from shared.models import Analysis


def photo(seed: int, side: int = 1300) -> bytes:
    """A JPEG of about 1 MB: smooth colour with sensor-like noise (pure noise would be larger)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([180 - 60 * x, 120 + 40 * y, 100 + 30 * x * y], axis=-1)
    pixels = np.clip(base + rng.normal(0, 14, (side, side, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


async def _multipart(client: httpx.AsyncClient, data: bytes) -> None:
    response = await client.post("/v1/analyses", files={"image": ("p.jpg", data, "image/jpeg")},
                                 data={"priority": "bulk"})
    response.raise_for_status()


async def _direct(client: httpx.AsyncClient, store: httpx.AsyncClient, data: bytes) -> None:
    upload = (await client.post("/v1/uploads", json={"content_type": "image/jpeg"})).raise_for_status().json()
    (await store.put(upload["url"], content=data, headers=upload["headers"])).raise_for_status()
    response = await client.post("/v1/analyses", json={"upload_id": upload["id"], "priority": "bulk"})
    response.raise_for_status()


async def run(api_url: str, key: str, images: list[bytes], count: int, concurrency: int, direct: bool) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=120, limits=limits) as client, \
            httpx.AsyncClient(timeout=120, limits=limits) as store:
        gate = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            async with gate:
                data = images[n % len(images)]
                await (_direct(client, store, data) if direct else _multipart(client, data))

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(count)))
        return time.perf_counter() - started


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="submissions per path")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--api-url")
    parser.add_argument("--api-key")
    args = parser.parse_args()

    images = [photo(seed) for seed in range(8)]
    size = statistics.mean(len(i) for i in images) / 1e6
    print(f"{args.count} submissions per path, {args.concurrency} in flight, JPEGs of {size:.2f} MB on average")
    if args.api_url:
        for direct in (False, True):
            seconds = asyncio.run(run(args.api_url, args.api_key, images, args.count, args.concurrency, direct))
            print(f"  {'direct   ' if direct else 'multipart'}: {args.count / seconds:6.1f} submissions/s")
        return

    with bench_stack(rate_limit="100000/second", concurrent_uploads=1000) as (context, key, tenant_id, workdir):
        for direct in (False, True):
            seconds = asyncio.run(run(context.settings.api_url, key, images, args.count, args.concurrency, direct))
            print(f"  {'direct   ' if direct else 'multipart'}: {args.count / seconds:6.1f} submissions/s "
                  f"({seconds:.1f} s for {args.count})")
        rates = asyncio.run(steps(context.settings.api_url, key, images, args.count, args.concurrency))
        print("  direct, one step at a time: " + ", ".join(f"{name} {rate:.0f}/s" for name, rate in rates.items()))

        worker = start_process([sys.executable, "-m", "cli.main", "worker", "--role", "cpu"], context.settings,
                               workdir / "worker.log")
        started = time.perf_counter()
        try:
            while _pending_ingests(context, tenant_id):
                if time.perf_counter() - started > 900:
                    raise RuntimeError("ingest did not finish within 15 minutes")
                time.sleep(0.5)
        finally:
            stop_process(worker)
        took = time.perf_counter() - started
        print(f"  ingest of the {2 * args.count} direct uploads by one cpu worker (start-up included): "
              f"{took:.1f} s, {2 * args.count / took:.1f}/s")
        with session_scope(context.session_factory) as session:
            session.execute(
                update(Analysis)
                .where(Analysis.tenant_id == tenant_id, Analysis.status == "queued")
                .values(status="canceled", cancel_reason=lifecycle.CANCEL_REQUESTED, completed_at=lifecycle.utcnow())
            )


def _pending_ingests(context, tenant_id: uuid.UUID) -> int:
    with context.session_factory() as session:
        return session.execute(
            select(func.count()).select_from(Analysis)
            .where(Analysis.tenant_id == tenant_id, Analysis.ingest_requested_at.is_not(None))
        ).scalar_one()


if __name__ == "__main__":
    main()
