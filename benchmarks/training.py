"""Benchmark training throughput and the model switch, on the synthetic data set.

    .venv/bin/python -m benchmarks.training                          # Fusion, 64 px, 3 epochs, CPU
    .venv/bin/python -m benchmarks.training --kind scalpel --size 128 --device cuda

Prints images/s of every training epoch (augmentation, forward, backward and the optimizer
step; validation excluded), then the time a worker needs to switch to the trained Fusion
checkpoint: load + build the backend the settings pick (OpenVINO on CPU converts the graph,
which dominates the switch). Nothing is downloaded; weights start random.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("fusion", "scalpel"), default="fusion")
    parser.add_argument("--size", type=int, default=64, help="network input size (multiple of 32)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--images-per-patient", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto", help="for the switch: auto, torch, openvino")
    args = parser.parse_args()

    from training.synthetic import write_synthetic_dataset
    from training.train import TrainConfig, train_fusion, train_scalpel

    with tempfile.TemporaryDirectory(prefix="dermasentinel-train-bench-") as folder:
        root = Path(folder)
        csv_path = write_synthetic_dataset(root / "data", patients=args.patients,
                                           images_per_patient=args.images_per_patient, size=max(args.size, 64))
        config = TrainConfig(out_dir=root / "out", image_size=args.size, epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=1e-3, folds=4, patience=args.epochs, device=args.device, progress=False,
                             version="bench")
        started = time.perf_counter()
        if args.kind == "fusion":
            result = train_fusion(root / "data" / "images", csv_path, config)
        else:
            result = train_scalpel(root / "data" / "images", root / "data" / "masks", config)
        total = time.perf_counter() - started
        cuda = args.device.startswith("cuda")
        device = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
        print(f"{args.kind} training on {device}, {args.size}px, batch {args.batch_size}, "
              f"{result.card['split']['train_images']} training images:")
        for record in result.history:
            print(f"  epoch {record['epoch']}: {record['images_per_second']:.1f} images/s "
                  f"(train loss {record['train_loss']:.4f})")
        print(f"  total with validation and calibration: {total:.1f} s")
        summary = {"kind": args.kind, "size": args.size, "device": device,
                   "images_per_second": [round(r["images_per_second"], 2) for r in result.history],
                   "total_seconds": round(total, 2)}
        if args.kind == "fusion":
            summary["switch_seconds"] = round(_switch_seconds(result.checkpoint, args, root), 2)
            print(f"  worker switch to it (load + {args.backend} backend build at {args.size}px): "
                  f"{summary['switch_seconds']:.2f} s")
        print(json.dumps(summary))


def _switch_seconds(checkpoint: Path, args, root: Path) -> float:
    """What ``ModelSwitch`` does after the download: load the registry and build the pipeline."""
    from shared.config import get_settings
    from worker.pipeline.model_set import ModelSet, ModelSource
    from worker.pipeline.pipeline import Pipeline, PipelineOptions

    started = time.perf_counter()
    registry = ModelSet.load(None, device=args.device, backend=args.backend,
                                  fusion_source=ModelSource(checkpoint, version="bench"))
    size = max(args.size, 64)
    options = PipelineOptions.from_settings(get_settings(), registry.device.type, seg_size=size, cls_size=size,
                                            ir_cache_dir=root / "engine")
    Pipeline(registry, options)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
