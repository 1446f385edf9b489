"""Locked dependencies for the Docker images (issue 25; requirements/compile.sh): both locks
cover pyproject.toml's dependencies at versions it allows, every pin carries a hash, the slim
lock holds no torch or CUDA, the Dockerfile installs from them, and the roles the slim image
serves (API, cpu, io) never import what it leaves out."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
sys.path.insert(0, str(LOCKS))
from cpu_inputs import GPU_ONLY  # noqa: E402  (requirements/ is no package)

# Distributions that are torch or CUDA: never in the slim image.
CUDA_OR_TORCH = re.compile(r"^(torch|torchvision|triton|openvino|nvidia-(?!ml-py)|cuda-)")


def _dependencies() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def _lock(name: str) -> tuple[dict[str, Version], dict[str, int]]:
    """(pins, hashes per pin) of requirements/<name>."""
    pins: dict[str, Version] = {}
    hashes: dict[str, int] = {}
    current = None
    for line in (LOCKS / name).read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            assert current not in pins, f"{name}: {current} pinned twice"
            pins[current] = Version(match.group(2))
            hashes[current] = 0
        elif current and line.strip().startswith("--hash=sha256:"):
            hashes[current] += 1
    return pins, hashes


@pytest.mark.parametrize(("lock", "leaves_out"), [("cuda.txt", frozenset()), ("cpu.txt", GPU_ONLY)])
def test_the_lock_covers_every_dependency_at_an_allowed_version(lock, leaves_out):
    pins, hashes = _lock(lock)
    for requirement in _dependencies():
        name = canonicalize_name(requirement.name)
        if name in leaves_out:
            assert name not in pins, f"{lock} installs {name}, which its image leaves out"
            continue
        assert name in pins, f"{lock} does not pin {requirement.name}: run requirements/compile.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, outside pyproject.toml's {requirement.specifier}"
        )
    assert all(count >= 1 for count in hashes.values()), [n for n, c in hashes.items() if not c]


def test_the_slim_lock_has_no_torch_and_no_cuda():
    pins, _ = _lock("cpu.txt")
    assert [name for name in pins if CUDA_OR_TORCH.match(name)] == []
    cuda, _ = _lock("cuda.txt")
    assert {"torch", "torchvision"} <= set(cuda)
    assert len(cuda) > len(pins)


def test_the_slim_inputs_are_pyprojects_less_the_networks():
    printed = subprocess.run([sys.executable, str(LOCKS / "cpu_inputs.py")], capture_output=True, text=True,
                             check=True).stdout
    assert printed == (LOCKS / "cpu.in").read_text(), "requirements/cpu.in is stale: run requirements/compile.sh"


def test_the_dockerfile_installs_each_image_from_its_lock_with_hashes():
    text = (ROOT / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM\s.*?\sAS\s+(\S+)\s*$\n(.*?)(?=^FROM\s|\Z)", text, re.MULTILINE | re.DOTALL))
    for stage, lock in (("cpu", "requirements/cpu.txt"), ("cuda", "requirements/cuda.txt")):
        body = stages[stage]
        assert lock in body and "--require-hashes" in body, stage
        # The package itself adds nothing the lock did not decide.
        assert re.search(r"pip install --no-deps \.", body), stage
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "requirements" not in ignored


def test_the_roles_of_the_slim_image_never_import_torch():
    """The API, and every module a cpu or io worker's tasks run, import none of GPU_ONLY."""
    modules = ["api.main", "cli.main", "worker.celery_app", "worker.reports", "worker.webhooks", "worker.ingest",
               "worker.maintenance", "worker.fhir_writeback", "worker.dicomweb", "worker.fhir_subscriptions"]
    top = sorted({name.replace("-", "_") for name in GPU_ONLY} | {"segmentation_models_pytorch"})
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "from api.main import create_app\n"
        f"print(sorted(m for m in {top!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
