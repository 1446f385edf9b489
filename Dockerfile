# DermaSentinel: two images from one Dockerfile (issue 25; docs/DEPLOY.md "Images").
#
#   docker build --target cpu  -t dermasentinel:0.1.0 .       the API, the cpu and io workers,
#                                                              beat and migrations: no torch, no CUDA
#   docker build --target cuda -t dermasentinel-cuda:0.1.0 .  the gpu workers (the default target)
#
# Both install locked dependencies with their hashes (requirements/cpu.txt, requirements/cuda.txt,
# generated from pyproject.toml by requirements/compile.sh; tests/deploy/test_locks.py holds them
# to it), then the package itself without resolving anything. The API and the cpu/io roles
# never import torch (the same test checks), so their image leaves out torch, torchvision, the
# networks' libraries, OpenVINO and the CUDA wheels.
#
# CUDA: on Linux x86-64 the torch wheel in the lock brings the CUDA runtime as nvidia-* wheels,
# so the cuda image runs the GPU worker on a host with the NVIDIA driver and Container Toolkit;
# no CUDA base image is needed. For another CUDA version, regenerate requirements/cuda.txt
# against that version's PyTorch index (requirements/compile.sh documents how).
#
# An exact Python release (3.11, as in development and CI); tests/test_compose.py refuses a
# floating base. Debian security updates arrive when the same tag is rebuilt upstream: rebuild
# these images regularly, or pin the digest as well (python:3.11.15-slim@sha256:…).
FROM python:3.11.15-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: torch/OpenCV threading; libglib2.0-0: OpenCV.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --home-dir /var/lib/dermasentinel --create-home dermasentinel \
    && mkdir -p /models \
    && chown dermasentinel /var/lib/dermasentinel

WORKDIR /app

ENV DERMASENTINEL_ENVIRONMENT=production \
    DERMASENTINEL_DATA_DIR=/var/lib/dermasentinel

EXPOSE 8000

# ---------------------------------------------------------------- the slim image: API, cpu, io
FROM base AS cpu
COPY requirements/cpu.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements.txt && rm /tmp/requirements.txt
# .dockerignore keeps the context to the package sources, pyproject.toml, README and the locks.
COPY . .
RUN pip install --no-deps . && rm -rf /app/build
USER dermasentinel
WORKDIR /var/lib/dermasentinel
CMD ["dermasentinel", "api", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------- the GPU workers' image
FROM base AS cuda
COPY requirements/cuda.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY . .
RUN pip install --no-deps . && rm -rf /app/build
USER dermasentinel
WORKDIR /var/lib/dermasentinel
CMD ["dermasentinel", "worker", "--role", "gpu"]
