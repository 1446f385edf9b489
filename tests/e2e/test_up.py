"""`dermasentinel up` as a new user runs it: embedded stack, migrations, processes, demo."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from worker.pipeline.synthetic import encode_jpeg, make_lesion

ROOT = Path(__file__).resolve().parents[2]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}
    env.update(DERMASENTINEL_DATA_DIR=str(data_dir), DERMASENTINEL_SEG_SIZE="128", DERMASENTINEL_CLS_SIZE="128")
    return env


@pytest.fixture
def data_dir():
    # Not under pytest's tmp_path: a concurrent pytest run resets its root to 0700, which
    # locks the Postgres account (when run as root) out of its data directory.
    folder = Path(tempfile.mkdtemp(prefix="dermasentinel-test-up-"))
    yield folder / "ds"
    shutil.rmtree(folder, ignore_errors=True)


def test_up_runs_the_demo_end_to_end_and_stops_cleanly(data_dir):
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "up", "--port", "0", "--exit-after-demo"],
        env=_env(data_dir), cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "development API key: dsk_" in out
    assert "demo: analysis" in out and "succeeded" in out
    assert "weights=untrained" in out and "segmenter=classical" in out
    assert "FINDINGS" in out and "UNTRAINED MODEL" in out
    assert "not a certified medical device" in out
    assert (data_dir / "demo-report.pdf").read_bytes().startswith(b"%PDF")
    stack_env = (data_dir / "stack.env").read_text()
    for name in ("DATABASE_URL", "BROKER_URL", "S3_ENDPOINT", "API_URL", "API_KEY"):
        assert f"DERMASENTINEL_{name}=" in stack_env
    assert "stopped." in out


class RunningUp:
    """`dermasentinel up` in the background, its console in a file, ready to be poked at."""

    def __init__(self, data_dir: Path, console: Path):
        self.data_dir, self.console_path = data_dir, console
        with console.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "up", "--port", "0"],
                env=_env(data_dir), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.api_url = self._wait_ready()
        self.api_key = self.stack_env()["DERMASENTINEL_API_KEY"]

    def stack_env(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in (self.data_dir / "stack.env").read_text().splitlines())

    def console(self) -> str:
        return self.console_path.read_text(errors="replace")

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.console()[-3000:]
            if "DermaSentinel is running at" in self.console():
                return self.stack_env()["DERMASENTINEL_API_URL"]
            time.sleep(0.5)
        raise AssertionError(f"the stack never became ready:\n{self.console()[-3000:]}")

    def child(self, text: str) -> psutil.Process:
        """The direct child of `up` whose command line (or process title) contains `text`."""
        for child in psutil.Process(self.process.pid).children():
            if text in " ".join(child.cmdline()):
                return child
        raise AssertionError(f"no child of up runs {text!r}")

    def wait_console(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.console():
            assert time.monotonic() < deadline, f"{text!r} never appeared:\n{self.console()[-3000:]}"
            time.sleep(0.2)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def running_up(data_dir):
    started = []

    def start() -> RunningUp:
        started.append(RunningUp(data_dir, data_dir.parent / "console.log"))
        return started[-1]

    yield start
    for up in started:
        up.kill()


def test_up_restarts_what_dies_serves_jobs_and_stops_everything_on_sigterm(running_up):
    """One `up` through its life: ready, a killed worker and a killed Redis come back on the
    same address, a job still succeeds, a client command finds the stack through stack.env,
    and SIGTERM stops every process it started. (kill -9 of `up` itself, and the orphans it
    must not leave, is the chaos fault `up-kill` in tests/chaos.)"""
    up = running_up()
    ready = httpx.get(up.api_url + "/readyz").json()
    assert ready["status"] == "ready"
    assert {"database", "broker", "object_store"} <= set(ready["checks"])

    gpu_worker, redis_server = up.child("--role gpu"), up.child("redis-server")
    redis_port = urlsplit(up.stack_env()["DERMASENTINEL_BROKER_URL"]).port

    gpu_worker.kill()
    redis_server.kill()

    up.wait_console("worker-gpu exited (killed by SIGKILL)")
    up.wait_console("redis exited (killed by SIGKILL)")
    up.wait_console("worker-gpu restarted")
    up.wait_console("redis restarted")
    assert up.child("--role gpu").pid != gpu_worker.pid
    # The others were configured with the old address: the broker must be back on it.
    assert up.child(f"redis-server 127.0.0.1:{redis_port}").pid != redis_server.pid

    headers = {"Authorization": f"Bearer {up.api_key}"}
    lesion = make_lesion(seed=3, size=(300, 400), radius_frac=0.22)
    created = httpx.post(
        up.api_url + "/v1/analyses", headers=headers, timeout=30,
        files={"image": ("lesion.jpg", encode_jpeg(lesion.image), "image/jpeg")}, data={"site": "torso"},
    )
    assert created.status_code == 202, created.text
    deadline = time.monotonic() + 180
    while (analysis := httpx.get(f"{up.api_url}/v1/analyses/{created.json()['id']}", headers=headers).json())[
        "status"
    ] in ("queued", "processing"):
        assert time.monotonic() < deadline, analysis
        time.sleep(0.5)
    assert analysis["status"] == "succeeded", analysis
    assert up.process.poll() is None

    # A client command reaches this stack through stack.env, with no exports.
    tenants = subprocess.run(
        [sys.executable, "-m", "cli.main", "tenants", "create", "clinic-a"],
        env=_env(up.data_dir), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert tenants.returncode == 0, tenants.stderr
    assert "dsk_" in tenants.stdout

    everything = psutil.Process(up.process.pid).children(recursive=True)
    assert any(p.ppid() != up.process.pid for p in everything), "expected grandchildren (pool, backends)"
    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(timeout=60) == 0, up.console()[-3000:]
    assert "stopped." in up.console()
    with pytest.raises(httpx.HTTPError):
        httpx.get(up.api_url + "/healthz", timeout=1)
    assert [(p.pid, " ".join(p.cmdline())[:80]) for p in everything if _alive(p)] == []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
