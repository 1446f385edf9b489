#!/usr/bin/env bash
# Engine numbers on a lent GPU (cannot run on the CPU-only development machine), in one command
# that fits an 8-minute lease on an H100/H200:
#
#   benchmarks/gpu.sh                 # from the repository root, with .venv built (pip install -e '.[test]')
#   IMAGES=256 benchmarks/gpu.sh      # fewer images for a short lease
#
# For one GPU worker at default sizes (512/512, 5 views), torch on CUDA with fp16 autocast,
# channels_last and cudnn.benchmark, it runs:
#   1. the raw network loop, img/s at batch 1, 2, 4, ... 64, and the peak GPU memory of each;
#   2. the pipeline at GPU_BATCH_SIZE=64 and the host cost per image (networks excluded);
#   3. end to end through `dermasentinel up` (one GPU worker, BATCH_FILL_MS default 5 on CUDA),
#      quiet and with the benchmark's own background load (GETs + webhook deliveries);
# and prints one table of all of it at the end (docs/ENGINE.md "GPU" keeps it).
# Target: >= 300 img/s per GPU worker end to end; when short of it the lines say what bounds it
# (raw loop = device bound; host ms x img/s >= cores x 1000 = host bound; uploads = API bound).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
IMAGES="${IMAGES:-512}"
SIZES=(--seg-size "${SEG_SIZE:-512}" --cls-size "${CLS_SIZE:-512}" --views "${TTA_VIEWS:-5}")
OUT="${OUT_DIR:-$(mktemp -d)}"
mkdir -p "$OUT"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | tee "$OUT/gpu.txt"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
echo "cpus: $(nproc)"

echo "== 1. raw network loop, torch-cuda fp16, batch 1..64 (peak GPU memory per batch) =="
timeout 240 "$PY" -m benchmarks.engine --device cuda --backends torch --autocast fp16 "${SIZES[@]}" \
  --batch-sizes 1 2 4 8 16 32 64 --images "$IMAGES" --no-pipeline --no-e2e --no-memory | tee "$OUT/raw.txt"

echo "== 2+3. pipeline, host cost and end to end (quiet and loaded) at GPU_BATCH_SIZE=64 =="
timeout 360 "$PY" -m benchmarks.engine --device cuda --backends torch --autocast fp16 "${SIZES[@]}" \
  --batch-sizes 64 --pipeline-batch 64 --images "$IMAGES" --upload-concurrency 16 --no-memory | tee "$OUT/e2e.txt"

"$PY" - "$OUT/raw.txt" "$OUT/e2e.txt" <<'PYEOF'
import json, sys
numbers = {}
for path in sys.argv[1:]:
    for line in open(path):
        if line.startswith("numbers: "):
            numbers.update(json.loads(line[len("numbers: "):]))
print("\n| measurement | value |\n|---|---|")
for key in sorted(k for k in numbers if k.startswith("raw_torch_b")):
    batch = key.rsplit("_b", 1)[1]
    memory = numbers.get(f"gpu_peak_gib_torch_b{batch}")
    extra = f", peak GPU memory {memory:.2f} GiB" if memory else ""
    print(f"| raw loop fp16, batch {batch} | {1 / numbers[key]:.1f} img/s{extra} |")
rows = [("pipeline_torch", "pipeline (Pipeline.run, batch 64)", lambda v: f"{1 / v:.1f} img/s"),
        ("host_cpu_ms", "host CPU per image, networks excluded", lambda v: f"{v:.1f} ms"),
        ("e2e_quiet_img_s", "end to end through `up`, quiet", lambda v: f"{v:.1f} img/s"),
        ("e2e_loaded_img_s", "end to end through `up`, background load", lambda v: f"{v:.1f} img/s"),
        ("e2e_quiet_ratio", "end to end quiet / best raw loop", lambda v: f"{v:.2f}x"),
        ("e2e_loaded_ratio", "end to end loaded / best raw loop", lambda v: f"{v:.2f}x"),
        ("e2e_worker_peak_rss_mib", "GPU worker peak RSS (host)", lambda v: f"{v:.0f} MiB")]
for key, label, fmt in rows:
    if key in numbers:
        print(f"| {label} | {fmt(numbers[key])} |")
PYEOF
