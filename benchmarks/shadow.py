"""Benchmark: what a shadow at fraction 0.2 adds to the active model's interactive-lane latency.

    python -m benchmarks.shadow [--probes 30] [--rounds 2] [--gap 0.2 1.0]

One real GPU-role worker (SEG/CLS 128, 5 TTA views, this machine's CPU) serves a registered,
active Fusion model (seeded random weights); a second registered model is the candidate.
Interactive images are submitted one at a time, each ``--gap`` seconds (uniform) after the
previous one's result is final, in alternating phases in the same run: shadow off, shadow at
``--fraction`` (0.2), off, on, … (``--rounds`` pairs, ``--probes`` images per phase; the first
job after each switch is a warm-up and not counted). Latency is the server's: the row's
``created_at`` to ``completed_at``. Prints median, p90 and mean per setting, their ratio
(target: the shadow adds < 10 %), and how many shadow outputs were stored.

Why the shadow does not delay the result (worker/shadow.py): it is offered only after the pass's
results are written, runs on its own thread one image at a time, and is skipped (or its rest
dropped) while the GPU lane is behind (a full pass, a claimable job waiting, or a shadow still
busy). What remains is contention for the CPU when a job arrives while a shadow image runs.

Postgres, Redis and S3 come from DERMASENTINEL_DATABASE_URL / _BROKER_URL / _S3_* when set, else
from an embedded stack in a temporary folder (a scratch ``dsbench_*`` database, ``dsbench-`` buckets).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import statistics
import time
import uuid

import httpx
from sqlalchemy import func, select

from benchmarks.batches import bench_stack
from devstack import child_env, start_worker
from shared import model_registry, model_rollout
from shared.context import AppContext
from shared.db import session_scope
from shared.tables import Analysis, ShadowOutput
from worker.pipeline.synthetic import encode_jpeg, make_lesion

FINAL = {"succeeded", "rejected", "failed", "canceled"}


def _checkpoint(seed: int, version: str) -> bytes:
    import torch

    from worker.pipeline.networks import FusionNet

    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save({"model_state_dict": FusionNet().state_dict(), "version": version}, buffer)
    return buffer.getvalue()


def _register(context: AppContext, seed: int, version: str) -> uuid.UUID:
    data = _checkpoint(seed, version)
    with session_scope(context.session_factory) as session:
        row, _ = model_registry.register(session, context.store, kind="fusion", data=data,
                                         sha256=hashlib.sha256(data).hexdigest(), version=version)
        return row.id


def _probe(context: AppContext, client: httpx.Client, image: bytes) -> float:
    """Submit one interactive image, wait for its final status; the server's latency in seconds."""
    response = client.post("/v1/analyses", files={"image": ("probe.jpg", image, "image/jpeg")})
    response.raise_for_status()
    analysis_id = uuid.UUID(response.json()["id"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with context.session_factory() as session:
            row = session.get(Analysis, analysis_id)
            if row is not None and row.status in FINAL:
                assert row.completed_at is not None
                return (row.completed_at - row.created_at).total_seconds()
        time.sleep(0.01)
    raise RuntimeError(f"analysis {analysis_id} did not finish within 300 s")


def _shadow(context: AppContext, candidate: str, fraction: float) -> None:
    with session_scope(context.session_factory) as session:
        if fraction > 0:
            model_rollout.start_shadow(session, "fusion", candidate, fraction, "benchmark")
        elif model_rollout.open_rollouts(session, "fusion"):
            model_rollout.stop(session, "fusion", model_rollout.SHADOW, "benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=30, help="counted images per phase")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of phases (off, on)")
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--gap", type=float, nargs=2, default=(0.2, 1.0),
                        help="seconds (uniform) between a result and the next submission")
    args = parser.parse_args()
    rng = random.Random(7)
    latencies: dict[str, list[float]] = {"off": [], "on": []}
    phases: list[tuple[str, float]] = []  # each phase's median: how much the machine itself wanders
    with bench_stack(model_check_seconds=0.5) as (context, key, tenant_id, workdir):
        incumbent_id = _register(context, 1, "bench-incumbent")
        _register(context, 2, "bench-candidate")
        with session_scope(context.session_factory) as session:
            model_registry.activate(session, "fusion", str(incumbent_id))
        worker = start_worker(child_env(context.settings), workdir / "worker.log", role="gpu", concurrency=1)
        images = [encode_jpeg(make_lesion(seed=200 + n, size=(384, 512), radius_frac=0.22).image)
                  for n in range(16)]
        try:
            with httpx.Client(base_url=context.settings.api_url, headers={"Authorization": f"Bearer {key}"},
                              timeout=60) as client:
                for _ in range(3):  # start-up: models loaded, backends built
                    _probe(context, client, images[0])
                for _ in range(args.rounds):
                    for phase in ("off", "on"):
                        _shadow(context, "bench-candidate", args.fraction if phase == "on" else 0.0)
                        time.sleep(1.0)  # the worker reads the rollouts every MODEL_CHECK_SECONDS (0.5)
                        _probe(context, client, images[1])  # warm-up: the shadow's pipeline is built here
                        time.sleep(1.0)
                        measured = []
                        for n in range(args.probes):
                            measured.append(_probe(context, client, images[n % len(images)]))
                            time.sleep(rng.uniform(*args.gap))
                        latencies[phase] += measured
                        phases.append((phase, statistics.median(measured)))
            with context.session_factory() as session:
                stored = session.scalar(select(func.count()).select_from(ShadowOutput))
        finally:
            worker.stop()
    print(f"interactive latency (created -> completed), one GPU-role worker on this CPU, SEG/CLS 128, "
          f"{args.rounds} x {args.probes} probes per setting, gap {args.gap[0]}-{args.gap[1]} s")
    summary = {}
    for phase, values in latencies.items():
        values = sorted(values)
        p90 = values[int(0.9 * (len(values) - 1))]
        summary[phase] = (statistics.median(values), p90, statistics.fmean(values))
        label = "shadow off" if phase == "off" else f"shadow {args.fraction:g}"
        print(f"  {label:<11} median {summary[phase][0] * 1000:6.0f} ms  p90 {p90 * 1000:6.0f} ms  "
              f"mean {summary[phase][2] * 1000:6.0f} ms")
    print("  phase medians in order: " + ", ".join(f"{phase} {median * 1000:.0f}" for phase, median in phases))
    off, on = summary["off"], summary["on"]
    print(f"  shadow adds: median {100 * (on[0] / off[0] - 1):+.1f} %, p90 {100 * (on[1] / off[1] - 1):+.1f} %, "
          f"mean {100 * (on[2] / off[2] - 1):+.1f} % (target < 10 %)")
    print(f"  shadow outputs stored: {stored} of {args.rounds * (args.probes + 1)} jobs in the shadow phases "
          f"(expected about {args.fraction:.0%}, fewer when skipped as behind)")


if __name__ == "__main__":
    main()
