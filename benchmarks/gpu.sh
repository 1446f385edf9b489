#!/usr/bin/env bash
# Engine numbers on a lent GPU (cannot run on the CPU-only development machine).
#
#   benchmarks/gpu.sh                 # from the repository root, with .venv built (pip install -e '.[test]')
#   IMAGES=256 benchmarks/gpu.sh      # fewer images for a short lease
#
# Prints, for one GPU worker at default sizes (512/512, 5 views), torch on CUDA with fp16
# autocast, channels_last and cudnn.benchmark:
#   1. raw network loop img/s at batch 1, 2, 4, ... 64 and the peak GPU memory of each;
#   2. the pipeline at GPU_BATCH_SIZE=64, the host cost per image (networks excluded) and
#      end to end through `dermasentinel up` (one GPU worker, BATCH_FILL_MS default 5 on CUDA).
# Target: >= 300 img/s per GPU worker end to end; when short of it the lines say what bounds it
# (raw loop = device bound; host ms x img/s >= cores x 1000 = host bound; uploads = API bound).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
IMAGES="${IMAGES:-512}"
SIZES=(--seg-size "${SEG_SIZE:-512}" --cls-size "${CLS_SIZE:-512}" --views "${TTA_VIEWS:-5}")

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
echo "cpus: $(nproc)"

echo "== raw network loop, torch-cuda fp16, batch 1..64 (peak GPU memory per batch) =="
"$PY" -m benchmarks.engine --device cuda --backends torch --autocast fp16 "${SIZES[@]}" \
  --batch-sizes 1 2 4 8 16 32 64 --images "$IMAGES" --no-pipeline --no-e2e --no-memory

echo "== pipeline, host cost and end to end at GPU_BATCH_SIZE=64 =="
"$PY" -m benchmarks.engine --device cuda --backends torch --autocast fp16 "${SIZES[@]}" \
  --batch-sizes 64 --pipeline-batch 64 --images "$IMAGES" --upload-concurrency 16 --no-memory
