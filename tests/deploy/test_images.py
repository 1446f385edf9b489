"""The pin check itself: it must refuse every floating form it is there to catch."""

import pytest

from tests.deploy.images import image_problems

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "image",
    [
        "postgres:18.6-alpine",
        "docker.io/library/postgres:18.6",
        "redis:8.10.2-alpine",
        "chrislusf/seaweedfs:4.48",
        "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z",
        "dermasentinel:0.1.0",
        "registry.example.org:5000/dermasentinel:0.1.0",
        f"ghcr.io/acme/dermasentinel@{DIGEST}",
        f"redis:8@{DIGEST}",
    ],
)
def test_pinned_images_pass(image):
    assert image_problems(image) == []


@pytest.mark.parametrize(
    "image",
    [
        "minio/minio:latest",
        "minio/minio:RELEASE.2025-09-07T16-13-09Z",  # the repository is gone
        "quay.io/minio/minio:latest",
        "postgres",
        "postgres:16-alpine",
        "postgres:alpine",
        "redis:7-alpine",
        "redis:8.10-alpine",
        "chrislusf/seaweedfs:latest",
        "chrislusf/seaweedfs:4",
        "dermasentinel:latest",
        "registry.example.org:5000/dermasentinel",
        "ghcr.io/acme/dermasentinel@sha256:short",
    ],
)
def test_floating_or_gone_images_fail(image):
    assert image_problems(image), f"{image} passed the pin check"
