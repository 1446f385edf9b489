"""Precision against fp32 on a synthetic-trained model: agreement and raw-loop speed, in one run.

    .venv/bin/python -m benchmarks.precision                    # trains a small model first (~3-6 min)
    .venv/bin/python -m benchmarks.precision --model-dir DIR    # best_fusion.pth / best_scalpel.pth already trained

What it does (issue 27, docs/ENGINE.md "Precision"):

1. unless ``--model-dir`` is given, writes the synthetic data set (``training.synthetic``) and
   trains Fusion and Scalpel on it with ``training.train`` (what ``dermasentinel train`` runs)
   at ``--train-size`` pixels, a few epochs: a model whose probabilities spread over the
   disposition thresholds (the calibrated operating point from its card), not an untrained one;
2. runs the whole pipeline (OpenVINO CPU) over ``--images`` synthetic lesions per precision
   (fp32, bf16 where native, int8 when NNCF is installed) and compares with fp32: |dp| of the
   reported probability p50 / p95 / max, disposition agreement, Gate 1 mask IoU (mean, min);
3. times the raw network loop (U-Net + Fusion x views on ready inputs, batch 1) per precision
   at ``--speed-size`` (default 512, the service's size), rounds interleaved so that load from
   other processes hits every precision alike; the best round is kept.

Bounds (``worker.pipeline.backends.PRECISION_BOUNDS``): bf16 |dp| p95 <= 0.005 and >= 99.5%
equal dispositions; int8 |dp| p95 <= 0.02, >= 98% equal dispositions and >= 2x the fp32 loop.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from worker.pipeline.backends import PRECISION_BOUNDS, native_bf16


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model-dir", type=Path, help="trained checkpoints (else a small model is trained here)")
    parser.add_argument("--images", type=int, default=200, help="synthetic lesions compared per precision")
    parser.add_argument("--size", type=int, default=128, help="SEG_SIZE = CLS_SIZE of the agreement run")
    parser.add_argument("--speed-size", type=int, default=512, help="SEG_SIZE = CLS_SIZE of the raw loop timing")
    parser.add_argument("--speed-images", type=int, default=4, help="images per raw-loop round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--keep", type=Path, help="copy the trained checkpoints here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dsbench-precision-") as scratch:
        root = Path(scratch)
        model_dir = args.model_dir or _train(root, args)
        _run(args, model_dir, root / "engine")


def _train(root: Path, args: argparse.Namespace) -> Path:
    import shutil

    from training.synthetic import write_synthetic_dataset
    from training.train import TrainConfig, train_fusion, train_scalpel

    data = root / "synthetic"
    csv_path = write_synthetic_dataset(data, patients=32, images_per_patient=4, size=args.train_size, seed=0)
    common = {"image_size": args.train_size, "epochs": args.epochs, "batch_size": 16, "learning_rate": 1e-3,
              "folds": 4, "patience": args.epochs, "progress": False}
    started = time.perf_counter()
    fusion = train_fusion(data / "images", csv_path,
                          TrainConfig(out_dir=root / "fusion", version="synthetic-precision-1", **common))
    scalpel = train_scalpel(data / "images", data / "masks",
                            TrainConfig(out_dir=root / "scalpel", version="synthetic-precision-1", **common))
    model_dir = root / "models"
    model_dir.mkdir()
    shutil.copy(fusion.checkpoint, model_dir / "fusion.pth")
    shutil.copy(scalpel.checkpoint, model_dir / "scalpel.pth")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(fusion.checkpoint, args.keep / "fusion.pth")
        shutil.copy(scalpel.checkpoint, args.keep / "scalpel.pth")
    print(f"trained Fusion and Scalpel on synthetic data ({args.train_size} px, {args.epochs} epochs) in "
          f"{time.perf_counter() - started:.0f} s; Fusion card validation: "
          f"{json.dumps(fusion.card.get('validation', {}), default=str)[:300]}", flush=True)
    return model_dir


def _lesions(count: int) -> list:
    from worker.pipeline.pipeline import LesionInput
    from worker.pipeline.synthetic import encode_jpeg, make_lesion

    rng = np.random.default_rng(7)
    items = []
    for i in range(count):
        positive = rng.random() < 0.4
        lesion = make_lesion(
            seed=int(rng.integers(0, 2**31 - 1)), size=(240, 320), ita=float(rng.uniform(-40, 62)),
            radius_frac=float(rng.uniform(0.2, 0.3)),
            irregularity=float(rng.uniform(0.6, 1.0) if positive else rng.uniform(0.0, 0.3)),
            variegation=float(rng.uniform(0.6, 1.0) if positive else rng.uniform(0.0, 0.3)),
            hair=bool(rng.random() < 0.3),
        )
        items.append(LesionInput(encode_jpeg(lesion.image), age=int(rng.integers(25, 85)),
                                 sex=("male", "female")[i % 2], site="torso"))
    return items


def _pipeline(model_dir: Path, cache: Path, precision: str, size: int, views: int):
    from worker.pipeline.model_set import ModelSet
    from worker.pipeline.pipeline import Pipeline, PipelineOptions

    options = PipelineOptions(seg_size=size, cls_size=size, tta_views=views, min_image_side=32, max_forward_batch=1,
                              gate1_memory_mb=16, ir_cache_dir=cache, precision=precision)
    started = time.perf_counter()
    pipeline = Pipeline(ModelSet.load(model_dir, device="cpu", segmenter="unet", backend="openvino"), options)
    print(f"   built {precision} at {size} px in {time.perf_counter() - started:.1f} s "
          f"(model.precision {pipeline.registry.provenance().precision})", flush=True)
    return pipeline


def _agreement(args: argparse.Namespace, model_dir: Path, cache: Path, precisions: list[str]) -> dict:
    from worker.pipeline.pipeline import Finding

    items = _lesions(args.images)
    outputs: dict[str, dict] = {}
    for precision in precisions:
        pipeline = _pipeline(model_dir, cache, precision, args.size, args.views)
        prepared = pipeline.prepare(items)
        masks = pipeline.backend.segment(np.stack([item.seg_input for item in prepared.items]))
        outcomes = pipeline.run(items)
        findings = [o for o in outcomes if isinstance(o, Finding)]
        outputs[precision] = {
            "p": np.array([o.result.probability if isinstance(o, Finding) else np.nan for o in outcomes]),
            "disposition": [o.result.disposition if isinstance(o, Finding) else type(o).__name__ for o in outcomes],
            "masks": masks, "findings": len(findings),
        }
        del pipeline
    reference = outputs["fp32"]
    print(f"   fp32: {reference['findings']}/{args.images} findings; probability p10/p50/p90 "
          f"{np.nanpercentile(reference['p'], [10, 50, 90]).round(3).tolist()}; dispositions "
          f"{ {d: reference['disposition'].count(d) for d in sorted(set(reference['disposition']))} }", flush=True)
    report = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        other = outputs[precision]
        both = ~np.isnan(reference["p"]) & ~np.isnan(other["p"])
        delta = np.abs(other["p"][both] - reference["p"][both])
        agree = np.mean([a == b for a, b in zip(reference["disposition"], other["disposition"], strict=True)])
        ious = [float((a & b).sum() / max(1, (a | b).sum())) for a, b in zip(reference["masks"], other["masks"],
                                                                            strict=True)]
        row = {"dp_p50": float(np.percentile(delta, 50)), "dp_p95": float(np.percentile(delta, 95)),
               "dp_max": float(delta.max()), "disposition_agreement": float(agree),
               "mask_iou_mean": float(np.mean(ious)), "mask_iou_min": float(np.min(ious)), "compared": int(both.sum())}
        report[precision] = row
        bound_p95, bound_agree = PRECISION_BOUNDS[precision]
        verdict = "within" if row["dp_p95"] <= bound_p95 and agree >= bound_agree else "OUTSIDE"
        print(f"   {precision} vs fp32 over {row['compared']} images: |dp| p50 {row['dp_p50']:.2e} p95 "
              f"{row['dp_p95']:.2e} max {row['dp_max']:.2e}; dispositions equal {agree:.1%}; mask IoU mean "
              f"{row['mask_iou_mean']:.4f} min {row['mask_iou_min']:.4f}  ({verdict} the bounds: p95 <= "
              f"{bound_p95}, >= {bound_agree:.1%})", flush=True)
    return report


def _speed(args: argparse.Namespace, model_dir: Path, cache: Path, precisions: list[str]) -> dict:
    from worker.pipeline.metadata import encode_metadata

    pipelines = {p: _pipeline(model_dir, cache, p, args.speed_size, args.views) for p in precisions}
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, args.speed_size, args.speed_size, 3)).astype(np.float32)
    meta = encode_metadata(55, "female", "torso")[None]

    def once(pipeline) -> None:
        pipeline.backend.segment(image)
        pipeline.backend.classify(image, meta, args.views, 1)

    for pipeline in pipelines.values():
        once(pipeline)  # warm-up
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for precision, pipeline in pipelines.items():
            started = time.perf_counter()
            for _ in range(args.speed_images):
                once(pipeline)
            seconds = (time.perf_counter() - started) / args.speed_images
            best[precision] = min(best.get(precision, seconds), seconds)
    for precision, seconds in best.items():
        print(f"   {precision:<5} {seconds:7.3f} s/img  {best['fp32'] / seconds:5.2f}x fp32", flush=True)
    return best


def _run(args: argparse.Namespace, model_dir: Path, cache: Path) -> None:
    precisions = ["fp32"] + [p for p in args.precisions if p != "fp32"]
    if "bf16" in precisions and not native_bf16():
        print("   this CPU does not compute bf16 natively: bf16 skipped (PRECISION=auto runs fp32 here)")
        precisions.remove("bf16")
    if "int8" in precisions:
        try:
            import nncf  # noqa: F401
        except ImportError:
            print("   nncf is not installed (pip install '.[int8]'): int8 skipped")
            precisions.remove("int8")
    print(f"\n1. agreement with fp32: pipeline at {args.size} px, {args.views} views, {args.images} synthetic lesions",
          flush=True)
    report = _agreement(args, model_dir, cache, precisions)
    print(f"\n2. raw network loop at {args.speed_size} px (U-Net + Fusion x {args.views} views, batch 1), best of "
          f"{args.rounds} interleaved rounds", flush=True)
    speed = _speed(args, model_dir, cache, precisions)
    print("\nnumbers: " + json.dumps({"agreement": report, "raw_s_per_img": speed}, default=float))


if __name__ == "__main__":
    main()
