"""Benchmark: seconds per image for Gate 1, Gate 2 and the whole pipeline, against the original.

    python -m worker.pipeline.bench [--seg-size 512] [--cls-size 512] [--batch-sizes 1 8]
                                    [--repeats 1] [--original-images 2] [--device auto]

"ours" is this package: Gate 1 as one batch, Gate 2 as one batch of N x views of fixed dihedral
views built on the device, channels_last, inference_mode. "original" is the original server's
way, measured in the same run on the same weights: one image at a time, NCHW, 5 views (1 plain
+ 4 random flips/rotations/brightness re-augmented on the CPU with albumentations). Weights are
seeded random (no download); speed does not depend on their values. The peak RSS is measured in
a fresh process that holds both models and analyses one image.
"""

import argparse
import copy
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import Image

from worker.pipeline import abcd, equity, quality
from worker.pipeline.decode import decode_image
from worker.pipeline.metadata import encode_metadata
from worker.pipeline.model_set import ModelSet
from worker.pipeline.networks import build_scalpel
from worker.pipeline.pipeline import LesionInput, Pipeline, PipelineOptions, _Item
from worker.pipeline.preprocess import network_transform
from worker.pipeline.synthetic import encode_jpeg, make_lesion

IMAGE_SIZE = (768, 1024)  # a typical dermatoscope frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.pipeline.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seg-size", type=int, default=512)
    parser.add_argument("--cls-size", type=int, default=512)
    parser.add_argument("--views", type=int, default=5, help="TTA views (ours and the original's)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (best round is kept)")
    parser.add_argument("--original-images", type=int, default=2, help="images timed the original way")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="torch", choices=["torch", "openvino", "auto"],
                        help="engine for 'ours' (benchmarks/engine.py compares the backends)")
    parser.add_argument("--max-forward-batch", type=int, default=PipelineOptions.max_forward_batch,
                        help="Gate 2 images per forward pass (views included)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS measurement")
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as model_dir:
        _write_random_scalpel(Path(model_dir))
        if args.memory_probe:
            _memory_probe(Path(model_dir), args)
            return
        _benchmark(Path(model_dir), args)


def _benchmark(model_dir: Path, args: argparse.Namespace) -> None:
    registry = ModelSet.load(model_dir, device=args.device, segmenter="unet", seed=0, backend=args.backend)
    options = PipelineOptions(
        seg_size=args.seg_size, cls_size=args.cls_size, tta_views=args.views, max_forward_batch=args.max_forward_batch
    )
    pipeline = Pipeline(registry, options)
    largest = max(args.batch_sizes)
    items = [
        LesionInput(encode_jpeg(make_lesion(i, IMAGE_SIZE, irregularity=0.4, variegation=0.5, hair=True).image), age=55)
        for i in range(max(largest, args.original_images))
    ]
    print(
        f"device={registry.device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"image={IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} JPEG seg_size={args.seg_size} cls_size={args.cls_size} "
        f"views={args.views} rounds={args.repeats} (best round; seconds per image)"
    )
    pipeline.run(items[:1])  # warm-up: allocator, kernels, lazy imports

    original = _OriginalWay(registry, args.seg_size, args.cls_size, args.views)
    original.analyse(items[0])  # warm-up for the NCHW copies
    decoded = [decode_image(item.image, options.max_image_pixels) for item in items[:largest]]
    # Rounds interleave ours and the original so that load from other processes hits both;
    # the best round of each measurement is kept.
    best: dict[tuple, np.ndarray] = {}
    for _ in range(max(1, args.repeats)):
        for batch_size in args.batch_sizes:
            batch, images = items[:batch_size], decoded[:batch_size]
            timings = np.array(
                [
                    _timed(lambda images=images: pipeline.segmenter.segment(
                        [pipeline.segmenter.network_input(i) for i in images]
                    )),
                    _timed(lambda images=images, batch=batch: _our_gate2(pipeline, images, batch)),
                    _timed(lambda batch=batch: pipeline.run(batch)),
                ]
            ) / batch_size
            key = ("ours", batch_size)
            best[key] = np.minimum(best.get(key, timings), timings)
        timings = np.array([original.analyse(item) for item in items[: args.original_images]]).mean(axis=0)
        best[("original", 1)] = np.minimum(best.get(("original", 1), timings), timings)
    rows = [(way, batch_size, *values) for (way, batch_size), values in best.items()]

    print(f"{'way':<10}{'batch':>6}{'gate1 s/img':>14}{'gate2 s/img':>14}{'pipeline s/img':>16}")
    for way, batch_size, gate1, gate2, whole in rows:
        print(f"{way:<10}{batch_size:>6}{gate1:>14.3f}{gate2:>14.3f}{whole:>16.3f}")
    baseline = rows[-1][4]
    for _way, batch_size, _, _, whole in rows[:-1]:
        print(f"speed-up of ours at batch {batch_size} over the original, whole pipeline: {baseline / whole:.2f}x")
    print("note: ours gives the same probability on every call; the original's random views do not")

    if not args.no_memory:
        probe = subprocess.run(
            [sys.executable, "-m", "worker.pipeline.bench", "--memory-probe", "--seg-size", str(args.seg_size),
             "--cls-size", str(args.cls_size), "--views", str(args.views), "--device", args.device,
             "--backend", args.backend],
            capture_output=True, text=True, check=True, env={**os.environ},
        )
        memory = json.loads(probe.stdout.strip().splitlines()[-1])
        print(
            f"peak RSS, fresh process holding both models: {memory['after_load_mib']:.0f} MiB after loading, "
            f"{memory['after_one_image_mib']:.0f} MiB after analysing one image"
        )
    print(f"peak RSS of this benchmark process: {_peak_rss_mib():.0f} MiB")


def _our_gate2(pipeline: Pipeline, images: list[np.ndarray], batch: list[LesionInput]) -> list[np.ndarray]:
    """Gate 2 exactly as the pipeline runs it: preprocess the batch, N x views on the device."""
    work = [
        _Item(i, image, encode_metadata(item.age, item.sex, item.site), None, 0.0)
        for i, (image, item) in enumerate(zip(images, batch, strict=True))
    ]
    for item in work:
        item.cls_input = network_transform(pipeline.options.cls_size)(image=item.image)["image"]
    return pipeline._classify(work)


class _OriginalWay:
    """The original server's per-request path, rebuilt for timing (NCHW, no batching, random TTA)."""

    def __init__(self, registry: ModelSet, seg_size: int, cls_size: int, views: int) -> None:
        if registry.scalpel is None or registry.fusion is None:
            raise ValueError("timing the original way needs both networks in the registry (segmenter unet)")
        self.device = registry.device.as_torch()
        self.scalpel = copy.deepcopy(registry.scalpel).to(memory_format=torch.contiguous_format)
        self.fusion = copy.deepcopy(registry.fusion).to(memory_format=torch.contiguous_format)
        self.seg_transform = network_transform(seg_size)
        self.cls_transform = network_transform(cls_size)
        self.views = views
        self.random_view = A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
                A.Rotate(limit=90, p=0.5),
                A.RandomBrightnessContrast(p=0.5),
                A.Resize(cls_size, cls_size),
                A.Normalize(),
            ]
        )
        self.resize = A.Resize(seg_size, seg_size)

    def analyse(self, item: LesionInput) -> tuple[float, float, float]:
        start = time.perf_counter()
        image = decode_image(item.image, 40_000_000)
        quality.blur_score(image)
        gate1_start = time.perf_counter()
        tensor = torch.from_numpy(self.seg_transform(image=image)["image"].transpose(2, 0, 1)).unsqueeze(0)
        with torch.no_grad():
            mask = (torch.sigmoid(self.scalpel(tensor.to(self.device))) > 0.5)[0, 0].cpu().numpy()
        gate1 = time.perf_counter() - gate1_start
        small = self.resize(image=image)["image"]
        abcd.compute_concepts(small, mask)
        equity.estimate_skin_tone(small, mask)
        overlay = small.astype(np.float32)
        overlay[mask] = 0.6 * overlay[mask] + 0.4 * np.array([0, 255, 255], dtype=np.float32)
        Image.fromarray(overlay.astype(np.uint8)).save(io.BytesIO(), format="PNG")
        gate2_start = time.perf_counter()
        views = [self.cls_transform(image=image)["image"]]
        views += [self.random_view(image=image)["image"] for _ in range(self.views - 1)]
        batch = torch.from_numpy(np.stack(views).transpose(0, 3, 1, 2).copy()).to(self.device)
        metadata = np.zeros((self.views, 11), dtype=np.float32)
        metadata[:, 0] = (item.age - 50) / 20 if item.age is not None else 0.0
        with torch.no_grad():
            torch.sigmoid(self.fusion(batch, torch.from_numpy(metadata).to(self.device))).cpu()
        gate2 = time.perf_counter() - gate2_start
        return gate1, gate2, time.perf_counter() - start


def _memory_probe(model_dir: Path, args: argparse.Namespace) -> None:
    registry = ModelSet.load(model_dir, device=args.device, segmenter="unet", seed=0, backend=args.backend)
    after_load = _peak_rss_mib()
    pipeline = Pipeline(registry, PipelineOptions(seg_size=args.seg_size, cls_size=args.cls_size, tta_views=args.views))
    pipeline.run([LesionInput(encode_jpeg(make_lesion(0, IMAGE_SIZE).image))])
    print(json.dumps({"after_load_mib": after_load, "after_one_image_mib": _peak_rss_mib()}))


def _write_random_scalpel(model_dir: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(build_scalpel().state_dict(), model_dir / "scalpel.pth")


def _timed(work: Callable[..., object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss, not inherited over exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
