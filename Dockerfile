# DermaSentinel: one image for the API, the workers (gpu, cpu, io), beat and migrations;
# docker-compose.yml picks the role with `command:`.
#
# PyTorch: on Linux x86-64, the torch wheel that `pip install .` takes from PyPI already
# bundles the CUDA runtime (nvidia-* wheels), so this image runs the GPU worker on a host with
# the NVIDIA driver and Container Toolkit. Which torch build to ship is the operator's choice:
# for a smaller CPU-only image (cpu/io workers, API) point TORCH_INDEX_URL at the PyTorch CPU
# wheel index; for another CUDA version, at that version's index. Torch is installed first so
# that `pip install .` keeps it.
# An exact Python release (3.11, as in development and CI); tests/test_compose.py refuses a
# floating base. Debian security updates arrive when the same tag is rebuilt upstream: rebuild
# this image regularly, or pin the digest as well (python:3.11.15-slim@sha256:…).
FROM python:3.11.15-slim

ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: torch/OpenCV threading; libglib2.0-0: OpenCV.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1; \
    fi

# .dockerignore keeps the context to the package sources, pyproject.toml and README.
COPY . .
RUN pip install . && rm -rf /app/build

RUN useradd --system --uid 10001 --home-dir /var/lib/dermasentinel --create-home dermasentinel \
    && mkdir -p /models \
    && chown dermasentinel /var/lib/dermasentinel
USER dermasentinel
WORKDIR /var/lib/dermasentinel

ENV DERMASENTINEL_ENVIRONMENT=production \
    DERMASENTINEL_DATA_DIR=/var/lib/dermasentinel

EXPOSE 8000
CMD ["dermasentinel", "api", "--host", "0.0.0.0", "--port", "8000"]
