"""What makes an image reference pinned: an exact release tag (or a digest), never a floating one.

Shared by the compose and Kubernetes tests. "Exact" depends on the publisher's scheme: Postgres
and SeaweedFS releases are MAJOR.MINOR (``18.6``, ``4.48``; ``18`` floats), MinIO's are
``RELEASE.<timestamp>``, everything else needs MAJOR.MINOR.PATCH (``redis:8.10`` floats).
"""

from __future__ import annotations

import re

# repository (without docker.io/library/) -> the regex of an exact release
EXACT_RELEASE = {
    "postgres": r"\d+\.\d+",
    "chrislusf/seaweedfs": r"\d+\.\d+",
    "quay.io/minio/minio": r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
    "quay.io/minio/mc": r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
}
DEFAULT_EXACT = r"v?\d+\.\d+\.\d+"
# An optional variant after the version: -alpine, -alpine3.23, -bookworm, _large_disk …
VARIANT = r"(?:[-_][a-z][a-z0-9._-]*)?"
# Repositories that no longer exist where the reference points.
GONE = {
    "minio/minio": "removed from Docker Hub in September 2026; use quay.io/minio/minio or SeaweedFS",
    "minio/mc": "removed from Docker Hub in September 2026; use quay.io/minio/mc",
}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    last = image.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        image, tag = image.rsplit(":", 1)
    repository = re.sub(r"^(docker\.io/)?(library/)?", "", image)
    return repository, tag, digest


def image_problems(image: str) -> list[str]:
    """Why IMAGE is not pinned to an exact, pullable release (empty when it is)."""
    repository, tag, digest = split_image(image)
    problems = []
    if repository in GONE:
        problems.append(f"{image}: {GONE[repository]}")
    if digest is not None and not DIGEST.match("@" + digest):
        problems.append(f"{image}: malformed digest")
    if tag is None:
        if digest is None:
            problems.append(f"{image}: no tag means :latest")
        return problems
    if tag == "latest" or tag.startswith("latest"):
        problems.append(f"{image}: :latest floats")
        return problems
    exact = EXACT_RELEASE.get(repository, DEFAULT_EXACT)
    if not re.fullmatch(exact + VARIANT, tag) and digest is None:
        problems.append(f"{image}: tag {tag!r} is not an exact release (expected {exact}[-variant])")
    return problems
