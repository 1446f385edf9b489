"""Benchmark: how long an interactive job waits to be claimed while 10,000 bulk jobs are queued.

    python -m benchmarks.lanes [--bulk 10000] [--probes 5]
    python -m benchmarks.lanes --sweep-burst 2000 [--sweep-interval 5]   (issue 26)
    python -m benchmarks.lanes --burst 2000 [--probes 10]                 (issue 26)

Queues ``--bulk`` bulk jobs (rows inserted directly, one wake-up each in the bulk lane, one
shared image), starts one real GPU-role worker (SEG/CLS 128), waits until it is busy on the
bulk lane, then submits ``--probes`` interactive images through the API at random moments of
a GPU pass and prints, for each, the time from the row's creation to its claim
(``started_at``; target < 2 s). Also prints the claim query's plan (EXPLAIN ANALYZE) with the
bulk backlog in the table, to show it is answered from an index and not a scan.

``--burst N`` (issue 26) is the same with N bulk jobs, and also waits for each probe's result:
it prints, from the row's own timestamps, pick-up (``created_at`` -> ``started_at``) and pick-up
-> result written (``started_at`` -> ``completed_at``; target <= 2 s during a 2,000-job burst),
with the median and the largest of each. ``--with-cpu-io`` also runs a CPU and an IO worker
(reports, webhooks, sweeps of the finished bulk jobs compete for the same cores, as in a
real burst).

``--throughput SECONDS`` (issue 26, the cost of preemption) queues ``--burst`` bulk jobs (default
4000) and no interactive one, and counts the bulk jobs one GPU worker finishes in SECONDS (by
``completed_at``, after a warm-up), ``--rounds`` times per tree of ``--trees``: each a checkout
whose worker code runs (its folder as the worker's cwd and PYTHONPATH; default: this one),
alternated round by round on the same stack, so code versions are compared under the same load:

    python -m benchmarks.lanes --throughput 60 --rounds 3 --trees /work/main,.   [--with-cpu-io]

``--sweep-burst N`` (issue 26) measures the maintenance lane instead: one real CPU worker and
the real beat process, then N ingest and N report wake-ups queued at once (for ids with no row:
each costs the worker one lookup), and prints the time of every sweeper pass while the CPU
worker drains them (``dermasentinel:sweeper:last``, polled), with the largest gap (target
≤ 60 s; the sweeper used to wait behind the whole backlog).

Postgres, Redis and S3 come from DERMASENTINEL_DATABASE_URL / _BROKER_URL / _S3_* when set,
else from an embedded stack in a temporary folder. A fresh ``dsbench_*`` database is built by
the migrations and dropped afterwards; buckets carry a ``dsbench-`` prefix.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import func, select, text

from benchmarks.batches import bench_stack, cancel_queued, count_status, queue_bulk
from devstack import child_env, start_beat, start_worker
from shared import lifecycle
from shared.clock import utcnow
from shared.context import AppContext
from shared.jobs import broker_redis, enqueue_report
from shared.queues import Queue
from shared.tables import Analysis, AnalysisTransition
from worker.maintenance import SWEEPER_LAST_RUN
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def claim_plan(context: AppContext, limit: int = 4) -> list[str]:
    """EXPLAIN ANALYZE of the queries a GPU worker claims with, one per lane (rolled back),
    and the time of one whole claim (own job + both lanes + the update; rolled back too)."""
    lines = []
    with context.engine.connect() as connection:
        for priority in ("interactive", "bulk"):
            statement = lifecycle.lane_candidates(priority, limit, utcnow()).compile(
                dialect=context.engine.dialect
            )
            lines.append(f"-- {priority} lane:")
            plan = connection.exec_driver_sql("EXPLAIN ANALYZE " + str(statement), statement.params)
            lines += [row[0] for row in plan]
            connection.rollback()
    timings = []
    for _ in range(20):
        with context.session_factory() as session:
            started = time.perf_counter()
            lifecycle.claim_batch(session, uuid.uuid4(), limit, settings=context.settings)
            timings.append((time.perf_counter() - started) * 1000)
            session.rollback()
    lines.append(f"-- whole claim of {limit} (rolled back), 20 runs: median {statistics.median(timings):.1f} ms")
    return lines


def stage_times(context: AppContext, analysis_id: uuid.UUID, started_at) -> str:
    """Where a probe's time after its claim went: each recorded stage (``analysis_transitions``,
    the time of the transaction that wrote it) in ms after the claim."""
    with context.session_factory() as session:
        rows = session.execute(
            select(AnalysisTransition.status, AnalysisTransition.stage, AnalysisTransition.at)
            .where(AnalysisTransition.analysis_id == analysis_id).order_by(AnalysisTransition.id)
        ).all()
    return " ".join(f"{stage or status}@{(at - started_at).total_seconds() * 1000:.0f}" for status, stage, at in rows
                    if at >= started_at and status != "queued")


def measure(context: AppContext, key: str, tenant_id: uuid.UUID, bulk: int, probes: int,
            finish: bool = False) -> list[tuple]:
    """Per probe: (bulk jobs queued, created->claimed s, POST->claimed s, claimed->finished s or
    None). With ``finish``, waits for each probe's result before the next (``completed_at``)."""
    started = time.perf_counter()
    bulk_ids = queue_bulk(context, tenant_id, bulk)
    print(f"  queued {bulk} bulk jobs (rows + wake-ups) in {time.perf_counter() - started:.1f} s")
    with context.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE analyses"))
    print("  claim query plan with the backlog queued:")
    for line in claim_plan(context):
        print(f"    {line}")
    deadline = time.monotonic() + 300
    while count_status(context, bulk_ids[:200], "queued") == 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker never picked up the bulk lane")
        time.sleep(0.2)
    images = [encode_jpeg(make_lesion(seed=100 + n, size=(256, 320), radius_frac=0.22).image) for n in range(probes)]
    results = []
    with httpx.Client(base_url=context.settings.api_url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as client:
        for n, image in enumerate(images):
            time.sleep(0.5 + (n * 0.37) % 2.0)  # land at different moments of a GPU pass
            with context.session_factory() as session:
                waiting = session.execute(
                    select(func.count()).select_from(Analysis)
                    .where(Analysis.tenant_id == tenant_id, Analysis.status == "queued", Analysis.priority == "bulk")
                ).scalar_one()
            posted = utcnow()
            response = client.post("/v1/analyses", files={"image": ("probe.jpg", image, "image/jpeg")})
            response.raise_for_status()
            analysis_id = uuid.UUID(response.json()["id"])
            deadline = time.monotonic() + 300
            while True:
                with context.session_factory() as session:
                    row = session.get(Analysis, analysis_id)
                if row.started_at is not None and (not finish or row.completed_at is not None):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"probe {analysis_id} not {'finished' if finish else 'claimed'} in 300 s")
                time.sleep(0.02)
            done = (row.completed_at - row.started_at).total_seconds() if finish else None
            results.append((waiting, (row.started_at - row.created_at).total_seconds(),
                            (row.started_at - posted).total_seconds(), done,
                            stage_times(context, analysis_id, row.started_at) if finish else ""))
    cancel_queued(context, bulk_ids)
    return results


def sweep_burst(context: AppContext, workdir, burst: int) -> tuple[float, list[float]]:
    """Issue 26: sweeper passes while a CPU worker drains ``burst`` ingest + ``burst`` report
    wake-ups. Returns (seconds to drain, the passes' times relative to the burst)."""
    env = child_env(context.settings)
    worker = start_worker(env, workdir / "worker-cpu.log", role="cpu")
    beat = start_beat(env, workdir / "beat.log")
    client = broker_redis(context.settings, timeout=5)
    try:
        deadline = time.monotonic() + 120
        while client.get(SWEEPER_LAST_RUN) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("beat never swept")
            time.sleep(0.2)
        started = time.time()
        for _ in range(burst):
            lifecycle.enqueue_ingest(context.celery, uuid.uuid4())
            enqueue_report(context.celery, uuid.uuid4())
        print(f"  queued {burst} ingest + {burst} report wake-ups in {time.time() - started:.1f} s")
        passes: list[float] = []
        deadline = time.monotonic() + 1800
        while client.llen(Queue.ingest.value) + client.llen(Queue.reports.value) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the CPU worker did not drain the burst in 30 minutes")
            last = float(client.get(SWEEPER_LAST_RUN) or 0) - started
            if last > 0 and (not passes or last > passes[-1]):
                passes.append(last)
            time.sleep(0.25)
        return time.time() - started, passes
    finally:
        client.close()
        beat.stop()
        worker.stop()


def throughput(context: AppContext, tenant_id: uuid.UUID, workdir, seconds: float, rounds: int,
               trees: list[Path], bulk: int) -> dict[Path, list[float]]:
    """Bulk jobs/s of one GPU worker per tree and round (see the module docstring)."""
    bulk_ids = queue_bulk(context, tenant_id, bulk)
    rates: dict[Path, list[float]] = {tree: [] for tree in trees}

    def finished_since(since) -> int:
        with context.session_factory() as session:
            return session.execute(
                select(func.count()).select_from(Analysis)
                .where(Analysis.tenant_id == tenant_id, Analysis.priority == "bulk", Analysis.completed_at >= since)
            ).scalar_one()

    try:
        for round_ in range(rounds):
            for tree in trees:
                env = child_env(context.settings)
                env["PYTHONPATH"] = str(tree)
                worker = start_worker(env, workdir / f"worker-gpu-{round_}-{tree.name}.log", role="gpu", cwd=tree)
                try:
                    started = utcnow()
                    deadline = time.monotonic() + 300
                    while finished_since(started) < 2 * context.settings.gpu_batch_size:  # warm: compiled, draining
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"the worker of {tree} finished nothing in 300 s")
                        time.sleep(0.2)
                    window = utcnow()
                    time.sleep(seconds)
                    rate = finished_since(window) / seconds
                finally:
                    worker.stop()
                rates[tree].append(rate)
                print(f"  round {round_ + 1}, {tree}: {rate:.2f} bulk jobs/s", flush=True)
    finally:
        cancel_queued(context, bulk_ids)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bulk", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--burst", type=int, default=0,
                        help="issue 26: N bulk jobs queued, and each probe's pick-up -> result written too")
    parser.add_argument("--with-cpu-io", action="store_true",
                        help="also run a cpu and an io worker (reports and webhooks of the burst)")
    parser.add_argument("--sweep-burst", type=int, default=0,
                        help="issue 26: measure sweeper passes while N ingest + N report wake-ups drain")
    parser.add_argument("--sweep-interval", type=float, default=5.0, help="SWEEP_INTERVAL_SECONDS for --sweep-burst")
    parser.add_argument("--throughput", type=float, default=0.0,
                        help="issue 26: bulk jobs/s of one GPU worker over this many seconds, no interactive jobs")
    parser.add_argument("--rounds", type=int, default=3, help="--throughput: rounds per tree")
    parser.add_argument("--trees", default=".", help="--throughput: checkouts whose worker code runs, comma-separated")
    args = parser.parse_args()

    if args.throughput:
        trees = [Path(tree).resolve() for tree in args.trees.split(",")]
        with bench_stack() as (context, _key, tenant_id, workdir):
            extra = ([start_worker(child_env(context.settings), workdir / f"worker-{role}.log", role=role)
                      for role in ("cpu", "io")] if args.with_cpu_io else [])
            print(f"bulk jobs finished per second by one GPU worker, {args.throughput:g} s windows, no interactive "
                  f"jobs (SEG/CLS 128, GPU_BATCH_SIZE={context.settings.gpu_batch_size}"
                  f"{', + cpu and io workers' if extra else ''})", flush=True)
            try:
                rates = throughput(context, tenant_id, workdir, args.throughput, args.rounds, trees,
                                   args.burst or 4000)
            finally:
                for worker in extra:
                    worker.stop()
        for tree, values in rates.items():
            print(f"  {tree}: median {statistics.median(values):.2f} jobs/s over {len(values)} rounds "
                  f"({', '.join(f'{v:.2f}' for v in values)})")
        return

    if args.sweep_burst:
        with bench_stack(sweep_interval_seconds=args.sweep_interval) as (context, _key, _tenant, workdir):
            print(f"sweeper passes while one cpu worker drains {args.sweep_burst} ingest + {args.sweep_burst} "
                  f"report wake-ups (SWEEP_INTERVAL_SECONDS={args.sweep_interval:g})")
            drained, passes = sweep_burst(context, workdir, args.sweep_burst)
        gaps = [b - a for a, b in zip([0.0, *passes], passes, strict=False)]
        print(f"  drained in {drained:.1f} s; {len(passes)} sweeps meanwhile, at "
              + ", ".join(f"{p:.1f}" for p in passes[:40]) + (" …" if len(passes) > 40 else "") + " s")
        print(f"  largest gap between sweeps: {max(gaps, default=drained):.1f} s (target <= 60 s)")
        return

    bulk, finish = (args.burst, True) if args.burst else (args.bulk, False)
    with bench_stack() as (context, key, tenant_id, workdir):
        roles = ["gpu", "cpu", "io"] if args.with_cpu_io else ["gpu"]
        print(f"interactive submit -> claim{' -> result' if finish else ''} while {bulk} bulk jobs are queued "
              f"({' + '.join(roles)} worker(s), SEG/CLS 128, GPU_BATCH_SIZE={context.settings.gpu_batch_size})")
        workers = [start_worker(child_env(context.settings), workdir / f"worker-{role}.log", role=role)
                   for role in roles]
        try:
            results = measure(context, key, tenant_id, bulk, args.probes, finish)
        finally:
            for worker in workers:
                worker.stop()
    for waiting, to_claim, post_to_claim, to_finish, stages in results:
        print(f"  bulk queued {waiting:5d}: created->claimed {to_claim * 1000:6.0f} ms "
              f"(from the client's POST {post_to_claim * 1000:6.0f} ms)"
              + (f", claimed->result written {to_finish * 1000:6.0f} ms [ms after claim: {stages}]"
                 if to_finish is not None else ""))
    claims = [r[1] for r in results]
    print(f"  created->claimed over {len(claims)} probes: median {statistics.median(claims) * 1000:.0f} ms, "
          f"max {max(claims) * 1000:.0f} ms (target < 2000 ms)")
    if finish:
        written = [r[3] * 1000 for r in results]
        print(f"  claimed->result written over {len(written)} probes: "
              f"median {statistics.median(written):.0f} ms, max {max(written):.0f} ms (target <= 2000 ms)")


if __name__ == "__main__":
    main()
