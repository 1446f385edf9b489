"""`dermasentinel up` as a new user runs it: embedded stack, migrations, processes, demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}
    env.update(DERMASENTINEL_DATA_DIR=str(data_dir), DERMASENTINEL_SEG_SIZE="128", DERMASENTINEL_CLS_SIZE="128")
    return env


def test_up_runs_the_demo_end_to_end_and_stops_cleanly(tmp_path):
    data_dir = tmp_path / "ds"
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


def test_up_stops_everything_on_sigterm(tmp_path):
    data_dir = tmp_path / "ds"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--port", "0"],
        env=_env(data_dir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        stack_env = data_dir / "stack.env"
        deadline = time.monotonic() + 120
        api_url = None
        while time.monotonic() < deadline and api_url is None:
            if stack_env.exists():
                values = dict(line.split("=", 1) for line in stack_env.read_text().splitlines())
                try:
                    if httpx.get(values["DERMASENTINEL_API_URL"] + "/readyz", timeout=1).status_code == 200:
                        api_url = values["DERMASENTINEL_API_URL"]
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        assert api_url, "the stack never became ready"
        ready = httpx.get(api_url + "/readyz").json()
        assert ready["status"] == "ready"
        assert set(ready["checks"]) == {"database", "broker", "object_store"}

        # A client command reaches this stack through stack.env, with no exports.
        tenants = subprocess.run(
            [sys.executable, "-m", "cli.main", "tenants", "create", "clinic-a"],
            env=_env(data_dir), cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert tenants.returncode == 0, tenants.stderr
        assert "dsk_" in tenants.stdout

        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0, out[-3000:]
        assert "stopped." in out
        try:
            httpx.get(api_url + "/healthz", timeout=1)
            raise AssertionError("the API still answers after stop")
        except httpx.HTTPError:
            pass
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
