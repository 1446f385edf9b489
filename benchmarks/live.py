"""Benchmark: what live progress (issue 25) costs the database.

    python -m benchmarks.live [--passes 60] [--batch-items 10000] [--followed 200]

[1] A GPU worker's writes for one pass of 8 jobs, as the engine makes them (claim, the
classification and reporting stage markers, the final status of each job; each its own
transaction), with the trigger that records state changes (migration 0018) on, then off:
the median per pass, and the difference.
[2] The change check each API process makes every SSE_POLL_SECONDS for its open streams
(``api.services.progress.latest_changes``), with ``--followed`` analyses and one batch of
``--batch-items`` items followed: the median time, and its plan.

Postgres comes from DERMASENTINEL_DATABASE_URL when set, else an embedded stack; a fresh
``dsbench_*`` database is built by the migrations and dropped afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import timedelta

from sqlalchemy import insert, select, text, update

from api.services.progress import latest_changes
from benchmarks.batches import bench_context, insert_batch
from shared import lifecycle
from shared.clock import utcnow
from shared.context import AppContext
from shared.db import session_scope
from shared.storage import image_key
from shared.tables import Analysis, AnalysisTransition, Tenant

TRIGGERS = ("analyses_transition_insert", "analyses_transition_update")


def queue(context: AppContext, tenant_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    now = utcnow()
    rows = [
        dict(id=i, tenant_id=tenant_id, priority="bulk", status="queued", attempt=0,
             image_key=image_key(tenant_id, i, "jpg"), image_sha256="1" * 64, image_content_type="image/jpeg",
             image_width=320, image_height=240, created_at=now + timedelta(microseconds=n), updated_at=now)
        for n, i in enumerate(ids)
    ]
    with session_scope(context.session_factory) as session:
        session.execute(insert(Analysis), rows)
    return ids


def one_pass(context: AppContext) -> float:
    started = time.perf_counter()
    with session_scope(context.session_factory) as session:
        claims = lifecycle.claim_batch(session, uuid.uuid4(), 8)
    for stage in ("classification", "reporting"):
        with session_scope(context.session_factory) as session:
            lifecycle.set_stage(session, claims, stage)
    for claim in claims:
        with session_scope(context.session_factory) as session:
            session.execute(
                update(Analysis).where(Analysis.id == claim.analysis_id)
                .values(status="succeeded", stage=None, completed_at=utcnow(), updated_at=utcnow())
            )
    assert len(claims) == 8
    return time.perf_counter() - started


def _triggers(context: AppContext, switch: str) -> None:
    with context.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for name in TRIGGERS:
            connection.execute(text(f"ALTER TABLE analyses {switch} TRIGGER {name}"))


def writes(context: AppContext, tenant_id: uuid.UUID, passes: int) -> dict[str, float]:
    """Passes alternate between the trigger on and off, so a busy machine's drift falls on both."""
    queue(context, tenant_id, (2 * passes + 1) * 8)
    one_pass(context)  # warm
    timings: dict[str, list[float]] = {"trigger on": [], "trigger off": []}
    try:
        for _ in range(passes):
            for label, switch in (("trigger on", "ENABLE"), ("trigger off", "DISABLE")):
                _triggers(context, switch)
                timings[label].append(one_pass(context) * 1000)
    finally:
        _triggers(context, "ENABLE")
    return {label: statistics.median(values) for label, values in timings.items()}


def change_check(context: AppContext, tenant_id: uuid.UUID, items: int, followed: int) -> tuple[float, list[str]]:
    batch_id = insert_batch(context, tenant_id, items)
    analyses = queue(context, tenant_id, followed)
    with context.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE analyses; ANALYZE analysis_transitions"))
    timings = []
    for _ in range(50):
        with session_scope(context.session_factory) as session:
            started = time.perf_counter()
            latest_changes(session, analyses, [batch_id])
            timings.append((time.perf_counter() - started) * 1000)
    with session_scope(context.session_factory) as session:
        rows = session.execute(select(AnalysisTransition.id).where(AnalysisTransition.batch_id == batch_id)).all()
        assert len(rows) == items, "every inserted item has its first transition"
    return statistics.median(timings), [f"{len(rows)} transitions in the batch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=60)
    parser.add_argument("--batch-items", type=int, default=10_000)
    parser.add_argument("--followed", type=int, default=200)
    args = parser.parse_args()
    with bench_context() as (context, _workdir, _port):
        with session_scope(context.session_factory) as session:
            tenant = Tenant(name="bench")
            session.add(tenant)
            session.flush()
            tenant_id = tenant.id
        medians = writes(context, tenant_id, args.passes)
        print(f"[1] one pass of 8 jobs (claim, 2 stage markers, 8 final writes), median of {args.passes}:")
        for label, ms in medians.items():
            print(f"    {label:12s} {ms:6.1f} ms")
        print(f"    the transition log adds {medians['trigger on'] - medians['trigger off']:+.1f} ms per pass")
        took, notes = change_check(context, tenant_id, args.batch_items, args.followed)
        print(f"[2] change check: {args.followed} analyses + 1 batch of {args.batch_items} items followed "
              f"({', '.join(notes)}): median {took:.2f} ms per check")


if __name__ == "__main__":
    main()
