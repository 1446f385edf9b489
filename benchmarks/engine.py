"""Benchmark the inference engine: raw network loops, pipeline, host cost and end to end, in one run.

    .venv/bin/dermasentinel bench                          # default sizes 512/512, 5 views
    .venv/bin/python -m benchmarks.engine --images 4 --seg-size 128 --cls-size 128   # quick

Everything below is measured in the same run on the same seeded random weights (a random
Scalpel checkpoint is written so the U-Net runs; nothing is downloaded), on 1024 x 768 JPEGs:

1. raw network loop per backend (OpenVINO once per ``--precisions``: fp32 and what PRECISION=auto
   resolves to, bf16 on CPUs that compute it natively): U-Net @SEG_SIZE + Fusion @CLS_SIZE x VIEWS
   on pre-made input tensors, nothing else (``--batch-sizes``: images per call, Gate 2 runs batch
   x views; default 1 and 2: OpenVINO runs Fusion's views on its CPU_STREAMS streams and Scalpel
   on all cores, and 2 per call is a bulk pass's step, as the worker runs them); the best of these
   is "the best raw loop" the end-to-end ratios are taken against;
2. pipeline per backend: ``Pipeline.run`` on the JPEG bytes, one batch at a time, serially;
3. host cost per image with the networks excluded (a stub backend answers instantly): wall
   and CPU milliseconds of decode, quality, network inputs, ABCD, ITA and artifacts;
4. end to end: ``dermasentinel up`` is started in a temporary DATA_DIR (with the random
   Scalpel, the chosen backend, precision and sizes), ``--images`` uploads are submitted at once
   and waited for; images/s from the first upload to the last final status. Measured twice in
   the same stack: quiet, then with a background load the benchmark makes itself (a steady
   stream of GETs of analyses and their list, and webhook deliveries to a loopback receiver,
   ``--load-gets`` and ``--load-webhooks`` per second);
5. ratios (end to end quiet and loaded / the best raw loop, etc.) and the peak RSS of a fresh
   worker-like process holding both models on each backend and precision, and of the stack's
   GPU worker;
6. whole-system host cost (issue 27; printed as "4b", after the end-to-end runs), from the
   quiet end-to-end window: the CPU seconds every process of the stack used (API, analysis,
   report and io workers, beat, Postgres, Redis, S3) per image, from the first upload until
   every analysis is final, its PDF and FHIR report stored and its webhooks
   (``analysis.succeeded``, ``analysis.report_ready``, to a loopback receiver) delivered, in
   decode+resize units: the CPU time of decoding one of the run's 1024 x 768 JPEGs (Pillow,
   RGB) and resizing it to SEG_SIZE (OpenCV, area), one thread, measured in the same run. The
   networks' own CPU is replayed in this process on the window's batch sizes and shown apart;
   the rest is the whole-stack host cost; the analysis worker's own share of it (both its
   processes, the networks' replay taken off) is issue 27's "host cost" (target <= 6 units
   at 64 px), printed on its own line; section 3's pipeline host cost is printed in units too.

On a CUDA machine ``--device cuda --backends torch --autocast fp16 --batch-sizes 1 2 4 ... 64``
also prints peak GPU memory per batch size (see benchmarks/gpu.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SIZE = (768, 1024)  # (height, width): a typical dermatoscope frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dermasentinel bench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--images", type=int, default=16, help="images per measurement (end to end: submitted at once)")
    parser.add_argument("--seg-size", type=int, default=512)
    parser.add_argument("--cls-size", type=int, default=512)
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["torch", "openvino"], choices=["torch", "openvino"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (OpenVINO runs on the CPU only)")
    parser.add_argument("--autocast", default="off", choices=["off", "fp16", "bf16"], help="CUDA torch only")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"], choices=["auto", "fp32", "bf16", "int8"],
                        help="OpenVINO precisions timed in the raw loop (the stack runs --precision)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                        help="PRECISION of the pipeline and of the end-to-end stack")
    parser.add_argument("--load-gets", type=float, default=20.0, help="background load: GETs per second")
    parser.add_argument("--load-webhooks", type=float, default=5.0, help="background load: webhook deliveries per s")
    parser.add_argument("--no-load", action="store_true", help="end to end quiet only")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2],
                        help="raw loop: images per network call (OpenVINO: 2 is a bulk pass's step on CPU_STREAMS)")
    parser.add_argument("--pipeline-batch", type=int, default=8, help="images per Pipeline.run (GPU_BATCH_SIZE)")
    parser.add_argument("--e2e-backend", default=None, help="backend of the stack (default: auto for the device)")
    parser.add_argument("--upload-concurrency", type=int, default=4, help="end to end: parallel uploads")
    parser.add_argument("--host-threads", type=int, default=None,
                        help="end to end: HOST_THREADS of the worker (default 2 on CPU, min(12, cpus) on CUDA)")
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end run through `up`")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process RSS probes")
    parser.add_argument("--perf", action="store_true",
                        help="also sample the analysis worker's pool process with Linux perf (cpu-clock) over the "
                             "quiet window and print its CPU split into the networks and the rest (needs `perf`)")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dsbench-engine-") as scratch:
        scratch = Path(scratch)
        model_dir = Path(args.model_dir) if args.model_dir else _random_checkpoints(scratch / "models")
        # The stack's DATA_DIR/engine: `up` (and the memory probes) reuse the converted IR.
        cache = Path(args.cache_dir) if args.cache_dir else scratch / "data" / "engine"
        if args.memory_probe:
            _memory_probe(model_dir, cache, args)
            return
        _run(args, model_dir, cache, scratch)


def _run(args: argparse.Namespace, model_dir: Path, cache: Path, scratch: Path) -> None:
    import torch

    from worker.pipeline.synthetic import encode_jpeg, make_lesion

    print(
        f"engine benchmark: device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"cpus={os.cpu_count()} image={IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} JPEG seg={args.seg_size} cls={args.cls_size} "
        f"views={args.views} images={args.images} autocast={args.autocast}",
        flush=True,
    )
    jpegs = [
        encode_jpeg(make_lesion(seed=i, size=IMAGE_SIZE, radius_frac=0.18 + 0.01 * (i % 5), irregularity=0.1 * (i % 7),
                                variegation=0.1 * (i % 6), ita=10 + 7 * (i % 8), hair=i % 2 == 0).image)
        for i in range(args.images)
    ]
    numbers: dict[str, float] = {}
    pipelines = {backend: _pipeline(backend, model_dir, cache, args) for backend in args.backends}
    raw_only = {}  # other OpenVINO precisions, timed in the raw loop only
    if "openvino" in args.backends and args.device == "cpu":
        shown = precision_of(pipelines["openvino"])
        for precision in args.precisions:
            built = _pipeline("openvino", model_dir, cache, args, precision)
            if precision_of(built) != shown and precision_of(built) not in {precision_of(p) for p in raw_only.values()}:
                raw_only[f"openvino-{precision_of(built)}"] = built

    print("\n1. raw network loop (U-Net + Fusion x views on ready tensors)", flush=True)
    timed = {(f"openvino-{precision_of(p)}" if b == "openvino" else b): p for b, p in pipelines.items()}
    for label, pipeline in {**timed, **raw_only}.items():
        for batch_size in args.batch_sizes:
            seconds, peak_gpu = _raw_loop(pipeline, args, batch_size)
            numbers[f"raw_{label}_b{batch_size}"] = seconds
            if peak_gpu:
                numbers[f"gpu_peak_gib_{label}_b{batch_size}"] = peak_gpu / 2**30
            gpu = f"  peak GPU memory {peak_gpu / 2**30:.2f} GiB" if peak_gpu else ""
            print(
                f"   {label:<16} batch {batch_size:>3}: {seconds:7.3f} s/img  "
                f"{1 / seconds:8.2f} img/s{gpu}",
                flush=True,
            )
    del raw_only
    best_label, best_raw = min(((k[4:], v) for k, v in numbers.items() if k.startswith("raw_")),
                               key=lambda kv: kv[1])
    numbers["best_raw_s_per_img"] = best_raw

    if not args.no_pipeline:
        print(f"\n2. pipeline per backend (Pipeline.run, batches of {args.pipeline_batch}, serial)", flush=True)
        for backend, pipeline in pipelines.items():
            seconds = _pipeline_loop(pipeline, jpegs, args.pipeline_batch)
            numbers[f"pipeline_{backend}"] = seconds
            print(f"   {pipeline.backend.name:<14} {precision_of(pipeline):<5} {seconds:7.3f} s/img  "
                  f"{1 / seconds:8.2f} img/s", flush=True)

    print("\n3. host cost per image, networks excluded (stub backend, one thread)", flush=True)
    host = _host_cost(next(iter(pipelines.values())), jpegs)
    numbers.update(host)
    units = [_decode_resize_unit(jpegs, args.seg_size)]
    print(f"   prepare (decode, quality, network inputs): {host['host_prepare_ms']:6.1f} ms wall "
          f"{host['host_prepare_cpu_ms']:6.1f} ms CPU", flush=True)
    print(f"   complete (ABCD, ITA, mask + overlay):      {host['host_complete_ms']:6.1f} ms wall "
          f"{host['host_complete_cpu_ms']:6.1f} ms CPU", flush=True)
    print(f"   total:                                     {host['host_ms']:6.1f} ms wall "
          f"{host['host_cpu_ms']:6.1f} ms CPU  (target <= 30 ms CPU)", flush=True)
    numbers["host_pipeline_units"] = host["host_cpu_ms"] / 1000 / units[0]
    print(f"   pipeline host cost = {numbers['host_pipeline_units']:.2f} decode+resize units/img "
          f"(unit {units[0] * 1000:.2f} ms CPU, see 4b)", flush=True)
    labels = {backend: f"openvino-{precision_of(p)}" if backend == "openvino" else backend
              for backend, p in pipelines.items()}
    del pipelines, timed  # released before `up` starts

    window: dict[str, Any] = {}  # the quiet end-to-end window: CPU per process, batch sizes
    if not args.no_e2e:
        backend = args.e2e_backend or ("torch" if args.device.startswith("cuda") else "openvino")
        print(f"\n4. end to end through `dermasentinel up` (backend {backend}, {args.images} uploads at once)",
              flush=True)
        e2e = _end_to_end(args, model_dir, scratch, jpegs, backend, window)
        numbers.update(e2e)
        window["backend"] = backend

    if not args.no_e2e and best_label.startswith(("openvino-", "torch_")):
        # The best raw loop again, right after the stack stopped: on a shared machine the load
        # of other tenants moves between minutes, so the ratios take the faster of the two.
        backend, _, rest = best_label.partition("-") if best_label.startswith("openvino-") else ("torch", "", "")
        again = _pipeline(backend, model_dir, cache, args, rest.rsplit("_b", 1)[0] if rest else None)
        seconds, _ = _raw_loop(again, args, int(best_label.rsplit("_b", 1)[1]))
        del again
        print(f"\n   best raw loop again after the end-to-end runs: {seconds:.3f} s/img", flush=True)
        numbers["best_raw_after_s_per_img"] = seconds
        best_raw = min(best_raw, seconds)
        numbers["best_raw_s_per_img"] = best_raw

    if window:
        units.append(_decode_resize_unit(jpegs, args.seg_size))
        networks = _replay_networks(args, model_dir, cache, window["backend"], window["batches"])
        numbers.update(_host_cost_units(window, units, networks, len(jpegs)))

    print("\n5. ratios and memory", flush=True)
    raw_ov = numbers.get("raw_openvino-fp32_b1")
    raw_torch = numbers.get("raw_torch_b1")
    if raw_ov and raw_torch:
        print(f"   raw loop OpenVINO fp32 vs torch: {raw_torch / raw_ov:.2f}x faster", flush=True)
    for key, seconds in sorted(numbers.items()):
        if key.startswith("raw_openvino-") and key != "raw_openvino-fp32_b1" and raw_ov and key.endswith("_b1"):
            print(f"   raw loop {key[4:-3]} vs OpenVINO fp32: {raw_ov / seconds:.2f}x faster", flush=True)
    for backend, label in labels.items():
        raw, whole = numbers.get(f"raw_{label}_b1"), numbers.get(f"pipeline_{backend}")
        if raw and whole:
            print(f"   pipeline / raw loop, {label}: {raw / whole:.2f}x of the raw rate", flush=True)
    print(f"   best raw loop: {best_label} {best_raw:.3f} s/img", flush=True)
    for state, target in (("quiet", 0.9), ("loaded", 0.85)):
        if f"e2e_{state}_img_s" in numbers:
            ratio = numbers[f"e2e_{state}_img_s"] * best_raw
            numbers[f"e2e_{state}_ratio"] = ratio
            print(f"   end to end {state} / best raw loop: {ratio:.2f}x  (target >= {target}x)", flush=True)
    if not args.no_memory and args.device == "cpu":
        probes = [(b, None) for b in args.backends if b != "openvino"]
        if "openvino" in args.backends:
            probes += [("openvino", p) for p in dict.fromkeys(["fp32", args.precision])]
        for backend, precision in probes:
            memory = _probe_memory(backend, model_dir, scratch / "data" / "engine", args, precision)
            label = backend + (f" {memory.get('precision')}" if precision else "")
            numbers[f"rss_{label.replace(' ', '_')}_mib"] = memory["peak_mib"]
            torch_note = "" if memory.get("torch_imported", True) else ", torch never imported"
            print(f"   fresh worker-like process, {label}: peak RSS {memory['peak_mib']:.0f} MiB with both models "
                  f"after one image and a pair{torch_note} (target <= 1229 MiB = 1.2 GiB)", flush=True)
    print("\nnumbers: " + json.dumps({k: round(v, 4) for k, v in numbers.items()}), flush=True)


# ---------------------------------------------------------------- measurements


def precision_of(pipeline) -> str:
    return str(pipeline.registry.precision)


def _pipeline(backend: str, model_dir: Path, cache: Path, args: argparse.Namespace, precision: str | None = None,
              streams: int | None = None):
    from shared.config import get_settings
    from worker.pipeline.model_set import ModelSet
    from worker.pipeline.pipeline import Pipeline, PipelineOptions

    started = time.perf_counter()
    # ir_cache_dir records the checkpoints beside the IR, so the probes and the stack start as a
    # restarted worker does (no torch import).
    registry = ModelSet.load(model_dir, device=args.device, segmenter="unet", seed=0, backend=backend,
                             ir_cache_dir=cache)
    # The worker's own options (Gate 2 forward batch, Gate 1 budget, …) at the sizes measured.
    options = PipelineOptions.from_settings(
        get_settings(), registry.device.type, seg_size=args.seg_size, cls_size=args.cls_size, tta_views=args.views,
        autocast=args.autocast, ir_cache_dir=cache,
        precision=(precision or args.precision) if backend == "openvino" else "auto",
        **({"streams": streams} if streams is not None else {}),
    )
    pipeline = Pipeline(registry, options)
    print(f"   built {pipeline.backend.name} {precision_of(pipeline)} in {time.perf_counter() - started:.1f} s",
          flush=True)
    return pipeline


def _raw_loop(pipeline, args: argparse.Namespace, batch_size: int) -> tuple[float, int]:
    """Seconds per image for the two networks alone; peak GPU bytes on CUDA."""
    import torch

    from worker.pipeline.metadata import encode_metadata

    rng = np.random.default_rng(0)
    seg = rng.standard_normal((batch_size, args.seg_size, args.seg_size, 3)).astype(np.float32)
    cls = rng.standard_normal((batch_size, args.cls_size, args.cls_size, 3)).astype(np.float32)
    meta = np.stack([encode_metadata(55, "female", "torso")] * batch_size)
    forward = pipeline.options.max_forward_batch
    backend = pipeline.backend

    def once() -> None:
        backend.segment(seg)
        backend.classify(cls, meta, args.views, forward)

    once()  # warm-up: kernels, allocator, cudnn.benchmark's choice
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    passes = max(1, -(-args.images // batch_size))
    started = time.perf_counter()
    for _ in range(passes):
        once()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / (passes * batch_size)
    return seconds, torch.cuda.max_memory_allocated() if cuda else 0


def _pipeline_loop(pipeline, jpegs: list[bytes], batch_size: int) -> float:
    from worker.pipeline.pipeline import LesionInput

    items = [LesionInput(data, age=55, sex="female", site="torso") for data in jpegs]
    pipeline.run(items[:1])
    started = time.perf_counter()
    for start in range(0, len(items), batch_size):
        pipeline.run(items[start : start + batch_size])
    return (time.perf_counter() - started) / len(items)


class _NoNetworks:
    """Answers Gate 1 with a centred disc and Gate 2 with 0.5, instantly: host cost alone."""

    name = "none"
    parallel = 1

    def segment(self, batch: np.ndarray) -> np.ndarray:
        size = batch.shape[1]
        yy, xx = np.mgrid[:size, :size]
        disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.3 * size) ** 2
        return np.repeat(disc[None], len(batch), axis=0)

    def classify(self, batch, metadata, views, max_batch) -> np.ndarray:
        return np.full((len(batch), views), 0.5)


def _host_cost(pipeline, jpegs: list[bytes]) -> dict[str, float]:
    import cv2

    from worker.pipeline.pipeline import LesionInput, Pipeline

    cv2.setNumThreads(1)
    stub = Pipeline(pipeline.registry, pipeline.options, backend=_NoNetworks())
    items = [LesionInput(data, age=55, sex="female", site="torso") for data in jpegs]
    stub.run(items[:1])
    totals = {"prepare": [0.0, 0.0], "complete": [0.0, 0.0]}
    for item in items:
        wall, cpu = time.perf_counter(), time.process_time()
        batch = stub.prepare([item])
        totals["prepare"][0] += time.perf_counter() - wall
        totals["prepare"][1] += time.process_time() - cpu
        stub.infer(batch)
        wall, cpu = time.perf_counter(), time.process_time()
        stub.complete(batch)
        totals["complete"][0] += time.perf_counter() - wall
        totals["complete"][1] += time.process_time() - cpu
    cv2.setNumThreads(-1)
    count = len(items)
    result = {
        "host_prepare_ms": totals["prepare"][0] / count * 1000,
        "host_prepare_cpu_ms": totals["prepare"][1] / count * 1000,
        "host_complete_ms": totals["complete"][0] / count * 1000,
        "host_complete_cpu_ms": totals["complete"][1] / count * 1000,
    }
    result["host_ms"] = result["host_prepare_ms"] + result["host_complete_ms"]
    result["host_cpu_ms"] = result["host_prepare_cpu_ms"] + result["host_complete_cpu_ms"]
    return result


# ---------------------------------------------------------------- end to end


def _end_to_end(args: argparse.Namespace, model_dir: Path, scratch: Path, jpegs: list[bytes], backend: str,
                window: dict[str, Any]) -> dict:
    from dermasentinel_client import Client

    from devstack import ServiceStartError, UpProcess

    data_dir = scratch / "data"
    up = UpProcess(data_dir, console_path=scratch / "up.log", settings={
        "MODEL_DIR": str(model_dir),
        "SEG_SIZE": str(args.seg_size),
        "CLS_SIZE": str(args.cls_size),
        "TTA_VIEWS": str(args.views),
        "BACKEND": backend,
        "DEVICE": args.device,
        "AUTOCAST": args.autocast,
        "PRECISION": args.precision,
        "GPU_BATCH_SIZE": str(args.pipeline_batch),
        "HOST_THREADS": str(
            args.host_threads or (min(12, os.cpu_count() or 1) if args.device.startswith("cuda") else 2)
        ),
        "LOG_LEVEL": "INFO",
        # The background load's webhook receiver listens on loopback; its test deliveries are
        # not to be rate-limited to the default 10 a minute.
        "WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8",
        "WEBHOOK_TEST_RATE": "1000/second",
    })
    started = time.perf_counter()
    numbers: dict[str, float] = {}
    try:
        try:
            up.start(timeout=600)
        except ServiceStartError as failure:
            raise SystemExit(str(failure)) from None
        process, api_url, api_key = up.process, up.api_url, up.api_key
        assert process is not None and api_url and api_key
        print(f"   stack up in {time.perf_counter() - started:.0f} s at {api_url}", flush=True)
        client = Client(base_url=api_url, api_key=api_key, timeout=120)
        fields: dict[str, Any] = {"age": 55, "sex": "female", "site": "torso"}
        # Quiet: every analysis' events go to a loopback endpoint, and the window closes once each
        # report is stored and its webhooks delivered (the whole-system host cost).
        hooks: _Webhooks | None = _Webhooks(client)
        warm = client.analyses.create(jpegs[0], filename="warm-up.jpg", **fields)  # the GPU worker loads its models
        client.analyses.wait(warm.id, timeout=1800, poll_interval=0.5)
        assert hooks is not None
        hooks.wait([str(warm.id)], timeout=600)  # its report too: the report worker's first render
        print(f"   warm-up analysis and report done {time.perf_counter() - started:.0f} s after start", flush=True)
        done = [str(warm.id)]
        for state in ("quiet",) if args.no_load else ("quiet", "loaded"):
            load = _BackgroundLoad(api_url, api_key, done, args.load_gets, args.load_webhooks) \
                if state == "loaded" else None
            try:
                rate, ids = _timed_batch(client, process.pid, jpegs, fields, args, state, load, hooks,
                                         data_dir / "logs", window if state == "quiet" else None)
            finally:
                if hooks is not None:
                    hooks.close()
                    hooks = None
            numbers[f"e2e_{state}_img_s"] = rate
            done += ids
        client.close()
        worker_rss = _gpu_worker_peak_rss(process.pid)
    finally:
        up.stop()
        engine_lines = [line for line in _read_logs(data_dir / "logs") if "engine:" in line]
        for line in engine_lines[-4:]:
            print("   worker log: " + line.split("engine: ", 1)[1], flush=True)
    if worker_rss:
        print(f"   the stack's GPU worker: peak RSS {worker_rss[0]:.0f} MiB (model load included), "
              f"{worker_rss[1]:.0f} MiB after the runs", flush=True)
    numbers["e2e_img_s"] = numbers["e2e_quiet_img_s"]
    numbers["e2e_worker_peak_rss_mib"] = worker_rss[0] if worker_rss else 0.0
    numbers["e2e_worker_rss_mib"] = worker_rss[1] if worker_rss else 0.0
    return numbers


def _timed_batch(client, root: int, jpegs: list[bytes], fields: dict, args: argparse.Namespace, state: str,
                 load: _BackgroundLoad | None, hooks: _Webhooks | None = None, log_dir: Path | None = None,
                 window: dict[str, Any] | None = None) -> tuple[float, list[str]]:
    """Submit every image at once and wait for all: images/s from the first upload to the last
    completion as the server recorded it (same host clock), so polling afterwards does not count.
    With ``hooks``, the CPU window stays open until every report is stored and every analysis'
    webhooks are delivered; ``window`` receives its CPU seconds per process and batch sizes."""
    if load is not None:
        load.start()
        time.sleep(2.0)  # the load is steady before the clock starts
    idle = None
    if window is not None:  # the stack's own idle CPU (beat, heartbeats, polling), for the record
        idle_before, idle_started = _cpu_by_process(root), time.perf_counter()
        time.sleep(3.0)
        idle_used = _cpu_delta(idle_before, _cpu_by_process(root))
        idle = sum(idle_used.values()) / (time.perf_counter() - idle_started)
        print(f"   {state}: idle stack before the window, CPU-s/s: " + ", ".join(
            f"{name} {seconds / 3.0:.3f}" for name, seconds in sorted(idle_used.items(), key=lambda kv: -kv[1])),
            flush=True)
    logged = len(_read_logs(log_dir)) if log_dir is not None else 0
    hooked = hooks.delivered if hooks is not None else 0
    sampler = _PerfSampler(root, log_dir) if window is not None and args.perf and log_dir is not None else None
    cpu_before = _cpu_by_process(root)
    own_before = sum(os.times()[:2])  # this process: the clients, the load and the receivers
    first, first_wall = time.perf_counter(), time.time()
    with ThreadPoolExecutor(args.upload_concurrency) as pool:
        created = list(pool.map(lambda i: client.analyses.create(jpegs[i], filename=f"bench-{state}-{i}.jpg", **fields),
                                range(len(jpegs))))
    uploads = time.perf_counter() - first
    statuses: dict[str, int] = {}
    finals = []
    for analysis in created:
        final = client.analyses.wait(analysis.id, timeout=3600, poll_interval=1.0)
        statuses[final.status] = statuses.get(final.status, 0) + 1
        finals.append(final)
    if hooks is not None:
        hooks.wait([str(a.id) for a in created], timeout=600)
    cpu_used = _cpu_delta(cpu_before, _cpu_by_process(root))
    own_used = sum(os.times()[:2]) - own_before
    if sampler is not None:
        sampler.stop(len(jpegs))
    seconds = time.perf_counter() - first
    if window is not None:
        lines = _read_logs(log_dir)[logged:] if log_dir is not None else []
        batches = [int(m.group(1)) for line in lines if (m := _BATCH_LINE.search(line))]
        window.update(cpu=cpu_used, seconds=seconds, idle_cpu_per_s=idle, batches=batches,
                      webhooks=hooks.delivered - hooked if hooks is not None else 0)
    load_report = load.stop() if load is not None else None
    last = max(datetime.fromisoformat((f.completed_at or "").replace("Z", "+00:00")).timestamp() for f in finals)
    total = last - first_wall
    rate = len(jpegs) / total
    models = sorted({f"{f.model.backend}/{f.model.precision}" for f in finals if f.model})
    print(f"   {state}: {len(jpegs)} images in {total:.1f} s (uploads {uploads:.1f} s): {rate:.3f} img/s, "
          f"{total / len(jpegs):.3f} s/img; statuses {statuses}; model {models}", flush=True)
    if hooks is not None:
        print(f"   {state}: " + hooks.reports_after(created, last, first_wall), flush=True)
    if load_report:
        print(f"   {state}: background load over {load_report['seconds']:.0f} s: {load_report['gets']} GETs "
              f"({load_report['gets'] / load_report['seconds']:.1f}/s, {load_report['get_errors']} failed), "
              f"{load_report['webhooks_sent']} webhook deliveries asked, {load_report['webhooks_received']} received",
              flush=True)
    shares = ", ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(cpu_used.items(), key=lambda kv: -kv[1]))
    shares += f"; and this benchmark's own process (uploads, polls, receivers, the load) {own_used:.1f}"
    print(f"   {state}: CPU seconds used by the stack's processes over the {seconds:.0f} s window "
          f"({os.cpu_count()} CPUs): {shares}", flush=True)
    return rate, [str(a.id) for a in created]


_BATCH_LINE = re.compile(r"engine: (\d+) jobs;")


class _PerfSampler:
    """``perf record -e cpu-clock -g`` on the analysis worker's pool process over a window: only
    the time it was on a CPU is sampled, so the split says where its CPU went without
    subtracting a replay of the networks (whose CPU moves run to run). A sample is the
    networks' when any frame of its call chain is OpenVINO's (its JIT kernels, plugin, core,
    Python binding) or TBB's: that puts their threads' waits and yields in the kernel and
    their copies in libc on their side (as far as the chains unwind: a shared object built
    without frame pointers can cut one short). The rest is the host work, shown by the shared
    object it was in."""

    HZ = 997
    # ``sched_yield``: only TBB's and OpenVINO's idle threads call it in this process (their call
    # chains stop at libc, which has no frame pointers).
    NETWORKS = ("/tmp/perf-", "[JIT]", "libopenvino", "libtbb", "_pyopenvino", "sched_yield")

    def __init__(self, root: int, log_dir: Path) -> None:
        self.output = log_dir / "worker.perf.data"
        pool = [pid for pid, (name, _) in _cpu_by_process(root).items() if name == "worker-gpu"]
        if shutil.which("perf") is None:
            print("   perf: not installed (Debian: linux-perf); no split", flush=True)
            pool = []
        self.process = subprocess.Popen(
            ["perf", "record", "-q", "-g", "-e", "cpu-clock", "-F", str(self.HZ), "-o", str(self.output),
             "-p", ",".join(map(str, pool))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ) if pool else None
        self.pool = pool
        time.sleep(0.5)  # perf attached before the window opens
        self.faults = self._minor_faults()

    def _minor_faults(self) -> int:
        """Page faults served without I/O so far (``minflt``) of the pool process: each is a page
        the kernel mapped and zeroed for it (a count, so it does not move with the host's speed)."""
        total = 0
        for pid in self.pool:
            try:
                total += int(_stat_fields(pid)[7])
            except OSError:
                pass
        return total

    def stop(self, images: int) -> None:
        if self.process is None:
            print("   perf: nothing sampled", flush=True)
            return
        faults = self._minor_faults() - self.faults
        mapped = faults * os.sysconf("SC_PAGE_SIZE") / 2**20
        print(f"   analysis worker pool process over the window: {faults / images:.0f} minor page faults per image "
              f"({mapped / images:.1f} MiB mapped and zeroed per image)", flush=True)
        self.process.send_signal(2)  # SIGINT: perf writes its file and exits
        self.process.wait(timeout=60)
        script = subprocess.run(["perf", "script", "-i", str(self.output), "-F", "ip,sym,dso"],
                                capture_output=True, text=True, check=False).stdout
        networks, host = 0, {}
        for sample in script.split("\n\n"):
            frames = [line.strip() for line in sample.splitlines() if line.strip()]
            if not frames:
                continue
            if any(marker in frame for frame in frames for marker in self.NETWORKS):
                networks += 1
            else:
                where = frames[0].rsplit("(", 1)[-1].rstrip(")").rsplit("/", 1)[-1]
                host[where] = host.get(where, 0) + 1
        total = networks + sum(host.values())
        if not total:
            print("   perf: no samples (perf missing or not permitted)", flush=True)
            return
        per_image = 1000 / self.HZ / images
        top = ", ".join(f"{dso} {n * per_image:.1f}" for dso, n in sorted(host.items(), key=lambda kv: -kv[1])[:8])
        print(f"   perf, analysis worker pool process over the window: {total * per_image:.1f} ms CPU/img, of which "
              f"the networks {networks * per_image:.1f} and the host work {(total - networks) * per_image:.1f} "
              f"ms/img ({top})", flush=True)


class _Webhooks:
    """A loopback endpoint for every event of the quiet run: each analysis' outcome and
    ``analysis.report_ready`` are signed and delivered by the io worker, as a deployment that
    listens for results has them."""

    def __init__(self, client) -> None:
        from devstack import Receiver

        self.client = client
        self.receiver = Receiver(204)
        self.endpoint = client.webhooks.create_endpoint(self.receiver.url).id

    def wait(self, ids: list[str], timeout: float) -> None:
        """Until every analysis' report is stored and its webhooks (outcome, report ready) arrived."""
        deadline = time.monotonic() + timeout
        wanted = set(ids)
        while time.monotonic() < deadline:
            reported = {r.json().get("data", {}).get("id") for r in list(self.receiver.requests)
                        if r.type == "analysis.report_ready"}
            finished = {r.json().get("data", {}).get("id") for r in list(self.receiver.requests)
                        if r.type in ("analysis.succeeded", "analysis.rejected", "analysis.failed")}
            if wanted <= reported and wanted <= finished:
                return
            time.sleep(0.1)
        raise SystemExit(f"webhooks: {len(wanted - reported)} report_ready and {len(wanted - finished)} outcome "
                         f"deliveries missing after {timeout:.0f} s")

    def reports_after(self, analyses: list, last_result: float, first_upload: float) -> str:
        """When the reports of ``analyses`` were stored (their ``analysis.report_ready`` events'
        timestamps, the server's clock) against the last result: issue 27 holds report requests
        while the analysis lane is busy (``REPORT_HOLD_SECONDS``)."""
        ids = {str(a.id) for a in analyses}
        stored = sorted(
            datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).timestamp()
            for r in list(self.receiver.requests)
            if r.type == "analysis.report_ready" and (body := r.json()).get("data", {}).get("id") in ids
        )
        if not stored:
            return "no report_ready events"
        before = sum(moment <= last_result for moment in stored)
        return (f"reports stored {stored[0] - first_upload:.1f}-{stored[-1] - first_upload:.1f} s after the first "
                f"upload, {before} of {len(stored)} before the last result ({last_result - first_upload:.1f} s)")

    @property
    def delivered(self) -> int:
        return len(self.receiver.requests)

    def close(self) -> None:
        self.client.webhooks.delete_endpoint(self.endpoint)
        self.receiver.stop()


class _BackgroundLoad:
    """A steady load beside the analyses, as a busy deployment has: GETs of finished analyses
    and of the list (``gets`` per second, the API, Postgres, S3 presigning), and webhook
    deliveries (``webhooks`` per second, ``POST /v1/webhook-endpoints/{id}/test``: the outbox,
    the io worker, signing, HTTP) to a loopback receiver. Paced, not flat out: the point is a
    realistic neighbour, not a denial of service."""

    def __init__(self, api_url: str, api_key: str, ids: list[str], gets: float, webhooks: float) -> None:
        import threading

        from dermasentinel_client import Client

        from devstack import Receiver

        self.receiver = Receiver(204)
        self.client = Client(base_url=api_url, api_key=api_key, timeout=30)
        self.endpoint = self.client.webhooks.create_endpoint(self.receiver.url).id
        self.ids, self.gets, self.webhooks = ids, gets, webhooks
        self.stopping = threading.Event()
        self.counts = {"gets": 0, "get_errors": 0, "webhooks_sent": 0}
        self.threads = [threading.Thread(target=self._paced, args=(gets, self._get), daemon=True),
                        threading.Thread(target=self._paced, args=(webhooks, self._webhook), daemon=True)]
        self.started = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()
        for thread in self.threads:
            thread.start()

    def stop(self) -> dict:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)
        seconds = time.perf_counter() - self.started
        time.sleep(1.0)
        received = len(self.receiver.requests)
        self.client.close()
        self.receiver.stop()
        return {**self.counts, "webhooks_received": received, "seconds": seconds}

    def _paced(self, rate: float, action) -> None:
        if rate <= 0:
            return
        interval, sent = 1.0 / rate, 0
        while not self.stopping.is_set():
            due = self.started + sent * interval
            pause = due - time.perf_counter()
            if pause > 0:
                self.stopping.wait(pause)
            action(sent)
            sent += 1

    def _get(self, n: int) -> None:
        try:
            if n % 5 == 4:
                next(iter(self.client.analyses.list(page_size=20)), None)
            else:
                self.client.analyses.get(self.ids[n % len(self.ids)])
            ok = True
        except Exception:  # a refused or timed-out request is a failed GET, counted
            ok = False
        self.counts["gets" if ok else "get_errors"] += 1

    def _webhook(self, n: int) -> None:
        try:
            self.client.webhooks.send_test(self.endpoint)
            self.counts["webhooks_sent"] += 1
        except Exception:  # counted as not sent
            pass


def _decode_resize_unit(jpegs: list[bytes], size: int) -> float:
    """CPU seconds of one decode+resize unit: a 1024 x 768 JPEG of the run decoded by Pillow to
    RGB and resized to ``size`` (OpenCV, area), one thread; the median of five passes."""
    import cv2
    from PIL import Image

    def once(data: bytes) -> None:
        import io

        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
        cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA)

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        once(jpegs[0])
        passes = []
        for _ in range(5):
            started = time.process_time()
            for data in jpegs:
                once(data)
            passes.append((time.process_time() - started) / len(jpegs))
    finally:
        cv2.setNumThreads(threads)
    return float(np.median(passes))


def _replay_networks(args: argparse.Namespace, model_dir: Path, cache: Path, backend: str,
                     batches: list[int]) -> float:
    """CPU seconds the two networks take for the window's batches (as the worker logged them),
    run again here on the stack's backend, precision and sizes: the part of the analysis
    worker's CPU that is inference, not host work (best of two replays)."""
    pipeline = _pipeline(backend, model_dir, cache, args)
    rng = np.random.default_rng(0)
    from worker.pipeline.metadata import encode_metadata

    def run(batch: int) -> None:
        seg = rng.standard_normal((batch, args.seg_size, args.seg_size, 3)).astype(np.float32)
        cls = rng.standard_normal((batch, args.cls_size, args.cls_size, 3)).astype(np.float32)
        meta = np.stack([encode_metadata(55, "female", "torso")] * batch)
        pipeline.backend.segment(seg)
        pipeline.backend.classify(cls, meta, args.views, pipeline.options.max_forward_batch)

    for batch in sorted(set(batches)):
        run(batch)  # compiled shapes, as the worker's warm stack had them
    replays = []
    for _ in range(2):
        started = time.process_time()
        for batch in batches:
            run(batch)
        replays.append(time.process_time() - started)
    return min(replays)


def _host_cost_units(window: dict[str, Any], units: list[float], networks: float, images: int) -> dict[str, float]:
    """Print and return the whole-system host cost of the quiet window in decode+resize units."""
    unit = min(units)
    cpu: dict[str, float] = dict(window["cpu"])
    stack = sum(cpu.values())
    host = stack - networks
    per_image = host / images
    print(f"\n4b. whole-system host cost (quiet window: {images} uploads through the API, analyses, PDF+FHIR "
          f"reports, {window['webhooks']} webhooks delivered; {window['seconds']:.1f} s, batches {window['batches']})",
          flush=True)
    print(f"   decode+resize unit (1024x768 JPEG -> RGB -> {unit * 1000:.2f} ms CPU; measured before and after "
          f"the stack: {', '.join(f'{u * 1000:.2f}' for u in units)} ms, the lower taken)", flush=True)
    print(f"   stack CPU in the window: {stack:.2f} s = {stack / images * 1000:.1f} ms/img = "
          f"{stack / images / unit:.2f} units/img, of which the networks (replayed here on batches "
          f"{window['batches']}): {networks:.2f} s = {networks / images / unit:.2f} units/img", flush=True)
    worker = "worker-gpu"
    rows = sorted(cpu.items(), key=lambda kv: -kv[1])
    for name, seconds in rows:
        own = seconds - networks if name == worker else seconds
        note = " (networks excluded)" if name == worker else ""
        print(f"     {name + note:<34} {own:6.2f} s  {own / images / unit:6.2f} units/img", flush=True)
    if window.get("idle_cpu_per_s") is not None:
        idle = window["idle_cpu_per_s"] * window["seconds"]
        print(f"   (the idle stack used {window['idle_cpu_per_s']:.3f} CPU-s/s before the window: "
              f"{idle / images / unit:.2f} units/img of the window's length)", flush=True)
    print(f"   whole-stack host cost = {per_image / unit:.2f} decode+resize units per image; "
          f"{per_image * 1000:.1f} ms CPU/img", flush=True)
    # Issue 27's "host cost": the analysis worker's own CPU per image (both its processes, the
    # networks' replay taken off); the API, report and io workers are counted above, apart.
    own = (cpu.get(worker, 0.0) + cpu.get(f"{worker} (main)", 0.0) - networks) / images
    print(f"   analysis worker host cost = {own / unit:.2f} units/img (target <= 6); "
          f"{own * 1000:.1f} ms CPU/img", flush=True)
    return {"host_unit_ms": unit * 1000, "host_stack_cpu_s": stack, "host_networks_cpu_s": networks,
            "host_cost_units": per_image / unit, "host_stack_units": stack / images / unit,
            "host_worker_units": own / unit}


def _read_logs(log_dir: Path) -> list[str]:
    lines = []
    for path in sorted(log_dir.glob("worker-gpu*.log")):
        lines += path.read_text(errors="replace").splitlines()
    return lines


def _gpu_worker_peak_rss(root: int) -> tuple[float, float] | None:
    """(peak, current) RSS in MiB of the biggest process under ``root`` serving the analysis queues."""
    peak = None
    for pid in _descendants(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if "--role gpu" not in cmdline:
            continue
        hwm, now = re.search(r"VmHWM:\s+(\d+) kB", status), re.search(r"VmRSS:\s+(\d+) kB", status)
        if hwm and now:
            peak = max(peak or (0.0, 0.0), (int(hwm.group(1)) / 1024, int(now.group(1)) / 1024))
    return peak


def _cpu_by_process(root: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every process under ``root``, with a role name."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in _descendants(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = _stat_fields(pid)
        except OSError:
            continue
        found[pid] = (_role(cmdline), (int(fields[11]) + int(fields[12])) / ticks, int(fields[1]))
    # A prefork worker's main process (Celery's consumer: it takes the broker's messages and hands
    # them to its pool process) is shown apart from the pool process that runs the tasks.
    parents = {found[pid][2] for pid in found if found[pid][0] == "worker-gpu"}
    return {pid: (f"{name} (main)" if name == "worker-gpu" and pid in parents else name, seconds)
            for pid, (name, seconds, _) in found.items()}


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name: [0] state, [1] ppid, [7] minflt, [11] utime, [12] stime."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _role(cmdline: str) -> str:
    for marker, name in (("--role gpu", "worker-gpu"), ("--role cpu", "worker-cpu (reports)"),
                         ("--role io", "worker-io"), ("uvicorn", "api"), (" beat", "beat"),
                         ("postgres", "postgres"), ("redis", "redis"), ("weed", "s3"), ("multiprocessing", "api")):
        if marker in cmdline:
            return name
    return "other"


def _cpu_delta(before: dict, after: dict) -> dict[str, float]:
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        used[name] = used.get(name, 0.0) + seconds - before.get(pid, (name, 0.0))[1]
    return used


def _descendants(root: int) -> list[int]:
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        try:
            tasks = Path(f"/proc/{pid}/task").iterdir()
            children = [int(c) for task in tasks for c in (task / "children").read_text().split()]
        except OSError:
            continue
        found.extend(children)
        frontier.extend(children)
    return found


# ---------------------------------------------------------------- memory and checkpoints


def _probe_memory(backend: str, model_dir: Path, cache: Path, args: argparse.Namespace,
                  precision: str | None = None) -> dict:
    probe = subprocess.run(
        [sys.executable, "-m", "benchmarks.engine", "--memory-probe", backend, "--model-dir", str(model_dir),
         "--cache-dir", str(cache), "--precision", precision or "auto",
         "--seg-size", str(args.seg_size), "--cls-size", str(args.cls_size), "--views", str(args.views)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return json.loads(probe.stdout.strip().splitlines()[-1])


def _memory_probe(model_dir: Path, cache: Path, args: argparse.Namespace) -> None:
    """A fresh process as a restarted CPU worker holds it (OpenVINO IR already cached): both
    models on one backend, one image analysed, then two in one pass (a bulk pass's step, one
    image per stream)."""
    from shared.memory import keep_freed_memory_for_reuse, release_freed_memory
    from worker.pipeline.pipeline import LesionInput
    from worker.pipeline.synthetic import encode_jpeg, make_lesion

    pipeline = _pipeline_quiet(args.memory_probe, model_dir, cache, args)
    keep_freed_memory_for_reuse()  # as the worker does after loading (worker/runtime.py)
    release_freed_memory()
    with open("/proc/self/status") as status:
        loaded = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    pipeline.run([LesionInput(encode_jpeg(make_lesion(0, IMAGE_SIZE).image), age=50)])
    pipeline.run([LesionInput(encode_jpeg(make_lesion(seed, IMAGE_SIZE).image), age=50) for seed in (1, 2)])
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mib": peak, "load_peak_mib": loaded, "precision": precision_of(pipeline),
                      "torch_imported": "torch" in sys.modules}))


def _pipeline_quiet(backend: str, model_dir: Path, cache: Path, args: argparse.Namespace):
    from shared.config import get_settings
    from worker.pipeline.model_set import ModelSet
    from worker.pipeline.pipeline import Pipeline, PipelineOptions

    # As the worker loads it (worker/runtime.py): with the IR cached, torch is never imported.
    registry = ModelSet.load(model_dir, device="cpu", segmenter="unet", seed=0, backend=backend, ir_cache_dir=cache)
    options = PipelineOptions.from_settings(get_settings(), "cpu", seg_size=args.seg_size, cls_size=args.cls_size,
                                            tta_views=args.views, ir_cache_dir=cache,
                                            precision=args.precision if backend == "openvino" else "auto")
    return Pipeline(registry, options)


def _random_checkpoints(model_dir: Path) -> Path:
    """A seeded random Scalpel checkpoint, so Gate 1 is the U-Net (speed does not depend on
    the weights' values); Fusion stays the seeded untrained network."""
    import torch

    from worker.pipeline.networks import build_scalpel

    model_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(build_scalpel().state_dict(), model_dir / "scalpel.pth")
    return model_dir


if __name__ == "__main__":
    main()
