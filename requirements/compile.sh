#!/usr/bin/env bash
# Lock the Docker images' Python dependencies (issue 25; docs/DEPLOY.md "Images").
#   cuda.txt: every dependency of pyproject.toml, torch with its CUDA wheels (the gpu image)
#   cpu.txt:  the same less the networks' stack (GPU_ONLY below): the slim image of the API,
#             cpu and io roles, which never import torch (tests/deploy/test_locks.py)
# Both for CPython 3.11 on x86-64 Linux (the Dockerfile's base), with hashes: the build runs
# `pip install --require-hashes`. Regenerate after changing pyproject.toml's dependencies:
#   bash requirements/compile.sh        (needs uv: `pip install uv`)
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header
        --annotation-style line --quiet)
"$UV" pip compile "${common[@]}" pyproject.toml -o requirements/cuda.txt
python3 requirements/cpu_inputs.py > requirements/cpu.in
"$UV" pip compile "${common[@]}" requirements/cpu.in -o requirements/cpu.txt
