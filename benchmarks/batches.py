"""Benchmark: batch progress latency with a big batch, and interactive latency behind a bulk backlog.

    python -m benchmarks.batches [--items 10000] [--other-items 90000] [--requests 300]
                                 [--bulk 500] [--probes 5] [--skip-lanes]

1. Inserts ``--items`` analyses into one batch directly through SQLAlchemy (a realistic mix:
   most finished over the last minutes, some processing, the rest queued), then times
   ``GET /v1/batches/{id}`` through a real uvicorn API process: p50 / p95 / max in ms. Also
   times one full CSV triage export of the batch.
2. Starts one real GPU-role worker (``python -m cli.main worker --role gpu``, SEG/CLS 128),
   queues ``--bulk`` bulk jobs (rows + wake-ups in the bulk lane, one shared image), and once
   the worker is busy on them submits an interactive image through the API, ``--probes``
   times: prints the time from submit to ``started_at`` and how many bulk jobs were waiting.

Postgres, Redis and S3 come from DERMASENTINEL_DATABASE_URL / _BROKER_URL / _S3_* when set,
else from an embedded stack in a temporary folder. A fresh ``dsbench_*`` database is built by
the migrations and dropped afterwards; buckets carry a ``dsbench-`` prefix.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import delete, insert, select, text, update

from devstack import Stack, StackEndpoints, child_env, free_port, start_api, start_worker
from shared import clinical
from shared.clinical import disposition
from shared.clock import utcnow
from shared.config import Settings
from shared.context import AppContext
from shared.db import session_scope
from shared.jobs import enqueue_analysis
from shared.migrate import scratch_database
from shared.storage import IMAGES, image_key
from shared.tables import Analysis, Batch
from shared.tenants import issue_key
from worker.pipeline.synthetic import encode_jpeg, make_lesion

ROOT = Path(__file__).resolve().parent.parent
SKIN_GROUPS = clinical.SKIN_GROUPS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---------------------------------------------------------------- set-up


@contextlib.contextmanager
def bench_context(**overrides) -> Iterator[tuple[AppContext, Path, int]]:
    """Postgres, Redis and S3 (given or embedded), a scratch ``dsbench_*`` database, settings for
    an API on a free loopback port and ``dsbench-`` buckets. Yields the context, a work folder
    and the port; ``overrides`` are further Settings fields."""
    workdir = Path(tempfile.mkdtemp(prefix="dsbench-"))
    stack = Stack(workdir / "stack", given=StackEndpoints.from_settings(Settings(_env_file=None)))
    endpoints = stack.start()
    cleanup = contextlib.ExitStack()
    finished = False
    try:
        database_url = cleanup.enter_context(scratch_database(endpoints.database_url, "dsbench"))
        port = free_port()
        settings = Settings(
            _env_file=None,
            environment="test",
            data_dir=workdir / "data",
            **{**endpoints.settings_fields(), "database_url": database_url},
            s3_bucket_prefix=f"dsbench-{secrets.token_hex(3)}",
            api_url=f"http://127.0.0.1:{port}",
            log_level="WARNING",
            **overrides,
        )
        context = AppContext(settings)
        cleanup.callback(context.close)
        context.store.ensure_buckets()
        yield context, workdir, port
        finished = True
    except BaseException:
        print(f"benchmark failed: its logs and data stay in {workdir}", file=sys.stderr)
        raise
    finally:
        cleanup.close()
        stack.stop()
        if finished:  # each run's object store holds gigabytes: a finished run leaves nothing behind
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def bench_stack(**overrides) -> Iterator[tuple[AppContext, str, uuid.UUID, Path]]:
    """``bench_context`` (SEG/CLS 128 unless overridden), a tenant and a real uvicorn API
    process. Yields the context, an API key, the tenant id, a work folder."""
    with bench_context(**{"seg_size": 128, "cls_size": 128, **overrides}) as (context, workdir, port):
        settings = context.settings
        api = None
        try:
            with session_scope(context.session_factory) as session:
                tenant, key = issue_key(session, "bench")
                tenant_id = tenant.id
            api = start_api(child_env(settings), workdir / "api.log", port=port, args=["--log-level", "warning"])
            yield context, key, tenant_id, workdir
        finally:
            if api is not None:
                api.stop()


# ---------------------------------------------------------------- 1. progress latency


def _result(rng: random.Random, probability: float) -> dict:
    """A stored result of the full shape the pipeline writes (the API reads it typed)."""
    group = rng.choice(SKIN_GROUPS)
    return {
        "diagnosis": clinical.diagnosis(probability),
        "probability": probability,
        "uncertainty": rng.uniform(0.0, 0.25),
        "tta_probabilities": [probability] * 5,
        "risk_band": clinical.risk_band(probability),
        "segmentation": {"coverage": rng.uniform(0.05, 0.4)},
        "concepts": {"asymmetry": rng.random(), "border": rng.random(), "color": rng.random(),
                     "diameter_px": rng.uniform(50, 400), "diameter_mm": None},
        "equity": {
            "ita_degrees": rng.uniform(-40, 60),
            "skin_group": group,
            "bias_warning": clinical.group_bias_warning(group),
        },
        "quality": {"blur_score": rng.uniform(100, 400)},
        "disposition": rng.choice(disposition.DISPOSITIONS),
        "disposition_reasons": [],
    }


def _model(rng: random.Random) -> dict:
    """A stored provenance: trained or untrained weights, half each."""
    weights = rng.choice(("trained", "untrained"))
    fusion = {"name": "fusion-effnet-b3", "version": "bench", "sha256": None, "seed": 0}
    return {"segmenter": "classical", "weights": weights, "scalpel": None, "fusion": fusion, "version": "bench"}


def insert_batch(
    context: AppContext, tenant_id: uuid.UUID, items: int, seed: int = 0, *, finished_long_ago: bool = False
) -> uuid.UUID:
    """One batch of ``items`` rows: 60% succeeded, 5% rejected, 1% failed over the last ten
    minutes, 4% processing, the rest queued. ``finished_long_ago``: every row final, an hour old."""
    rng = random.Random(seed)
    now = utcnow() - (timedelta(hours=1) if finished_long_ago else timedelta(0))
    with session_scope(context.session_factory) as session:
        batch = Batch(tenant_id=tenant_id, name="bench", created_at=now - timedelta(minutes=15))
        session.add(batch)
        session.flush()
        batch_id = batch.id
    rows = []
    for n in range(items):
        analysis_id = uuid.uuid4()
        created = now - timedelta(minutes=15) + timedelta(milliseconds=n)
        share = n / items if not finished_long_ago else rng.random() * 0.66
        row = dict(
            id=analysis_id, tenant_id=tenant_id, batch_id=batch_id, priority="bulk", attempt=1,
            image_key=image_key(tenant_id, analysis_id, "jpg"), image_sha256=f"{n:064x}",
            image_content_type="image/jpeg", image_width=640, image_height=480,
            created_at=created, updated_at=created, enqueued_at=created,
            status="queued", result=None, rejection=None, error=None, probability=None, model=None,
            started_at=None, completed_at=None,
        )
        if share < 0.70:
            finished = now - timedelta(seconds=rng.uniform(0, 600))
            row.update(started_at=finished - timedelta(seconds=2), completed_at=finished)
            if share < 0.60:
                probability = rng.random()
                row.update(status="succeeded", result=_result(rng, probability), probability=probability,
                           model=_model(rng))
            elif share < 0.65:
                row.update(status="rejected", rejection={"code": "blurry", "detail": "blur score 12 < 100"})
            elif share < 0.66:
                row.update(status="failed", error={"code": "attempts_exhausted", "detail": "gave up"})
            else:
                row.update(status="canceled")
        elif share < 0.74:
            row.update(status="processing", started_at=now)
        rows.append(row)
    with session_scope(context.session_factory) as session:
        for start in range(0, len(rows), 2000):
            session.execute(insert(Analysis), rows[start:start + 2000])
    with context.engine.connect() as connection:
        connection.execute(text("ANALYZE analyses"))
        connection.commit()
    return batch_id


def insert_other_batches(context: AppContext, items: int, per_batch: int = 10_000) -> None:
    """Other tenants' finished batches, so the table is bigger than the batch we ask about."""
    with session_scope(context.session_factory) as session:
        other, _ = issue_key(session, "bench-others")
        other_id = other.id
    for seed in range(1, items // per_batch + 1):
        insert_batch(context, other_id, per_batch, seed=seed, finished_long_ago=True)


def vacuum(context: AppContext) -> None:
    """What autovacuum does in steady state: sets the visibility map, so counts read the index only."""
    with context.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE analyses"))


def drop_batch_rows(context: AppContext, batch_id: uuid.UUID) -> None:
    """The fake rows have no images: keep the worker of part 2 from claiming them."""
    with session_scope(context.session_factory) as session:
        session.execute(delete(Analysis).where(Analysis.batch_id == batch_id))


def plans(context: AppContext, batch_id: uuid.UUID) -> list[str]:
    """The indexes Postgres uses for the two progress queries."""
    since = utcnow() - timedelta(minutes=5)
    queries = {
        # lifecycle.batch_tally: statuses, shown dispositions and weights from the index alone.
        "counts": (
            "SELECT status, shown_disposition, weights_status, count(*) FROM analyses WHERE batch_id = :b "
            "GROUP BY status, shown_disposition, weights_status",
            {"b": batch_id},
        ),
        "throughput": (
            "SELECT count(*), min(completed_at) FROM analyses WHERE batch_id = :b AND completed_at >= :t",
            {"b": batch_id, "t": since},
        ),
    }
    lines = []
    with context.engine.connect() as connection:
        for name, (sql, params) in queries.items():
            plan = [r[0] for r in connection.execute(text("EXPLAIN ANALYZE " + sql), params)]
            scans = [p.strip() for p in plan if "Scan" in p]
            took = [p.strip() for p in plan if p.startswith("Execution Time")]
            lines.append(f"  {name}: {scans[0] if scans else plan[0]} | {took[0] if took else ''}")
    return lines


def measure_progress(api_url: str, key: str, batch_id: uuid.UUID, requests: int) -> list[float]:
    timings = []
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for n in range(requests + 20):
            started = time.perf_counter()
            response = client.get(f"/v1/batches/{batch_id}")
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            if n >= 20:
                timings.append(elapsed)
        body = response.json()
        print(
            f"  batch: total {body['total']}, done {body['done']} ({body['percent_done']}%), "
            f"throughput {body['throughput_per_minute']}/min, ETA {body['eta_seconds']} s"
        )
        started = time.perf_counter()
        csv_bytes = client.get(f"/v1/batches/{batch_id}/results", params={"format": "csv"}).content
        export_ms = (time.perf_counter() - started) * 1000
        rows = csv_bytes.count(b"\n") - 1
        print(f"  triage CSV export: {export_ms:.0f} ms for {rows} rows, {len(csv_bytes) / 1e6:.1f} MB")
    return timings


# ---------------------------------------------------------------- 2. lanes


def queue_bulk(context: AppContext, tenant_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    key = image_key(tenant_id, ids[0], "jpg")
    image = encode_jpeg(make_lesion(seed=1, size=(256, 320), radius_frac=0.22).image)
    context.store.put(IMAGES, key, image, "image/jpeg")
    now = utcnow()
    rows = [
        dict(
            id=analysis_id, tenant_id=tenant_id, priority="bulk", status="queued", attempt=0, image_key=key,
            image_sha256="1" * 64, image_content_type="image/jpeg", image_width=320, image_height=240,
            created_at=now + timedelta(microseconds=n), updated_at=now, enqueued_at=now,
        )
        for n, analysis_id in enumerate(ids)
    ]
    with session_scope(context.session_factory) as session:
        session.execute(insert(Analysis), rows)
    for analysis_id in ids:
        enqueue_analysis(context.celery, analysis_id, "bulk")
    return ids


def count_status(context: AppContext, ids: list[uuid.UUID], status: str) -> int:
    with context.session_factory() as session:
        return len(session.execute(
            select(Analysis.id).where(Analysis.id.in_(ids), Analysis.status == status)
        ).all())


def measure_lane(context: AppContext, api_url: str, key: str, tenant_id, bulk: int, probes: int) -> list[tuple]:
    bulk_ids = queue_bulk(context, tenant_id, bulk)
    deadline = time.monotonic() + 180
    while count_status(context, bulk_ids, "queued") == bulk:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker never picked up the bulk lane")
        time.sleep(0.2)
    results = []
    images = [encode_jpeg(make_lesion(seed=100 + n, size=(256, 320), radius_frac=0.22).image) for n in range(probes)]
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for n, image in enumerate(images):
            time.sleep(random.Random(n).uniform(0.5, 2.5))  # land at a random point of a GPU pass
            waiting = count_status(context, bulk_ids, "queued")
            posted = utcnow()
            response = client.post("/v1/analyses", files={"image": ("probe.jpg", image, "image/jpeg")})
            response.raise_for_status()
            analysis_id = response.json()["id"]
            while True:
                body = client.get(f"/v1/analyses/{analysis_id}").json()
                if body["status"] in ("succeeded", "rejected", "failed"):
                    break
                time.sleep(0.05)
            with context.session_factory() as session:
                row = session.get(Analysis, uuid.UUID(analysis_id))
            results.append((
                waiting,
                (row.started_at - row.created_at).total_seconds(),
                (row.started_at - posted).total_seconds(),
                (row.completed_at - row.created_at).total_seconds(),
            ))
    with context.session_factory() as session:
        passes = session.execute(
            select(Analysis.started_at, Analysis.completed_at).where(
                Analysis.id.in_(bulk_ids), Analysis.completed_at.is_not(None)
            )
        ).all()
    if passes:
        seconds = statistics.median((done - start).total_seconds() for start, done in passes)
        print(f"  {len(passes)} bulk jobs finished meanwhile; median GPU pass (claim -> result) {seconds:.2f} s")
    cancel_queued(context, bulk_ids)
    return results


def cancel_queued(context, ids) -> None:
    """Leave no benchmark job behind: whatever of ``ids`` is still queued ends canceled."""
    with session_scope(context.session_factory) as session:
        session.execute(
            update(Analysis)
            .where(Analysis.id.in_(ids), Analysis.status == "queued")
            .values(status="canceled", completed_at=utcnow())
        )


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--other-items", type=int, default=90_000, help="other tenants' rows in the table")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--bulk", type=int, default=500)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--skip-lanes", action="store_true", help="only measure batch progress")
    args = parser.parse_args()

    with bench_stack(rate_limit="100000/second") as (context, key, tenant_id, workdir):
        settings = context.settings
        worker = None
        try:
            print(f"[1] GET /v1/batches/{{id}} with {args.items} items in the batch, {args.other_items} other rows")
            started = time.perf_counter()
            insert_other_batches(context, args.other_items)
            batch_id = insert_batch(context, tenant_id, args.items)
            print(f"  inserted {args.items + args.other_items} rows in {time.perf_counter() - started:.1f} s")
            for phase in ("just loaded, before any VACUUM", "after VACUUM (steady state: index-only scans)"):
                if phase.startswith("after"):
                    vacuum(context)
                print(f"  -- {phase}")
                timings = measure_progress(settings.api_url, key, batch_id, args.requests)
                print(
                    f"  GET /v1/batches/{{id}} over {len(timings)} requests: p50 {statistics.median(timings):.1f} ms, "
                    f"p95 {percentile(timings, 0.95):.1f} ms, max {max(timings):.1f} ms"
                )
                print("\n".join(plans(context, batch_id)))
            drop_batch_rows(context, batch_id)

            if args.skip_lanes:
                return
            print(f"[2] interactive submit -> start while {args.bulk} bulk jobs wait (one gpu worker, SEG/CLS 128)")
            worker = start_worker(child_env(settings), workdir / "worker.log", role="gpu")
            for waiting, to_start, post_to_start, to_done in measure_lane(
                context, settings.api_url, key, tenant_id, args.bulk, args.probes
            ):
                print(
                    f"  bulk waiting {waiting:4d}: submit->started {to_start * 1000:7.0f} ms "
                    f"(from client POST {post_to_start * 1000:7.0f} ms), submit->finished {to_done * 1000:7.0f} ms"
                )
        finally:
            if worker is not None:
                worker.stop()


if __name__ == "__main__":
    main()
