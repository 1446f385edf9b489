"""The networks on a busy host: every pass spread over all the cores (``CPU_STREAMS=1``)
against Fusion's views side by side on single-request streams (issue 27, docs/ENGINE.md
"Streams").

    .venv/bin/python -m benchmarks.streams                 # 512/512, 5 views, PRECISION=auto
    .venv/bin/python -m benchmarks.streams --size 128 --images 4 --busy 0 0.5   # quick

The worker's own backend (``OpenVinoBackend``, seeded random Scalpel and Fusion, nothing
downloaded) runs the raw loop of U-Net + Fusion x views on ready tensors three ways: built with
``CPU_STREAMS=1`` (both networks LATENCY-compiled), one image per call; built with the
streams, one image per call (an interactive pass) and two per call (a bulk pass's step). Each
runs while a spinning process of this benchmark keeps ``--busy`` of one core busy in 20 ms
bursts, as the stack's other processes do. Alternated ``--rounds`` times; prints seconds per
image.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_SPINNER = """
import sys, time
share, period = float(sys.argv[1]), 0.02
while True:
    started = time.perf_counter()
    while time.perf_counter() - started < share * period:
        pass
    time.sleep(period * (1 - share))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.streams", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="SEG_SIZE and CLS_SIZE")
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--images", type=int, default=12, help="images per measurement")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--busy", type=float, nargs="+", default=[0.0, 0.3, 0.6],
                        help="share of one core a background process keeps busy")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    from benchmarks.engine import _pipeline, _random_checkpoints
    from worker.pipeline.metadata import METADATA_SIZE

    with tempfile.TemporaryDirectory(prefix="dsbench-streams-") as scratch:
        settings = argparse.Namespace(device="cpu", seg_size=args.size, cls_size=args.size, views=args.views,
                                      autocast="off", precision=args.precision)
        models, cache = _random_checkpoints(Path(scratch) / "models"), Path(scratch) / "engine"
        latency = _pipeline("openvino", models, cache, settings, streams=1).backend
        backend = _pipeline("openvino", models, cache, settings).backend
        if backend.parallel < 2:
            raise SystemExit("one CPU (or CPU_STREAMS=1): there are no streams to compare")
        rng = np.random.default_rng(0)
        images = rng.standard_normal((2, args.size, args.size, 3)).astype(np.float32)
        metadata = rng.standard_normal((2, METADATA_SIZE)).astype(np.float32)

        def loop(engine, per_call: int) -> float:
            started = time.perf_counter()
            for _ in range(args.images // per_call):
                engine.segment(images[:per_call])
                engine.classify(images[:per_call], metadata[:per_call], args.views, 1)
            return (time.perf_counter() - started) / (args.images // per_call * per_call)

        runs = {"CPU_STREAMS=1, one per call": (latency, 1), "streams, one per call": (backend, 1),
                "streams, two per call": (backend, 2)}
        for engine, per_call in runs.values():
            loop(engine, per_call)  # warm-up: kernels, the streams' requests
        print(f"streams benchmark: {backend.precision}, {args.size}/{args.size}, {args.views} views, "
              f"{backend.parallel} streams, {args.images} images per measurement (s/img)", flush=True)
        print(f"{'busy share of one core':>24}" + "".join(f"  {name:>27}" for name in runs))
        for _ in range(args.rounds):
            for busy in args.busy:
                spinner = subprocess.Popen([sys.executable, "-c", _SPINNER, str(busy)]) if busy > 0 else None
                try:
                    time.sleep(0.2)
                    seconds = [loop(engine, per_call) for engine, per_call in runs.values()]
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
                print(f"{busy:>24.2f}" + "".join(f"  {value:>27.3f}" for value in seconds), flush=True)


if __name__ == "__main__":
    main()
