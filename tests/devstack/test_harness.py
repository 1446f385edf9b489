"""devstack.Stack and the app processes: the one way `up`, the tests and the benchmarks start them."""

import os
import signal
import sys
import time

import httpx
import pytest

from devstack import Backoff, ServiceStartError, Stack, StackEndpoints, Supervisor, child_env, start_app
from devstack.apps import api_command, worker_command
from shared.config import Settings

GIVEN = StackEndpoints(
    database_url="postgresql+psycopg://u:p@db.example:5432/ds",
    broker_url="redis://broker.example:6379/0",
    s3_endpoint="s3.example:9000",
    s3_access_key="key",
    s3_secret_key="secret",
    s3_secure=True,
)


# ---------------------------------------------------------------- no processes


def test_child_env_drops_the_callers_settings_and_adds_the_given_ones(monkeypatch):
    settings = Settings(_env_file=None, seg_size=128)
    monkeypatch.setenv("DERMASENTINEL_DATABASE_URL", "postgresql://stale")
    monkeypatch.setenv("DS_UNRELATED", "kept")
    env = child_env(settings, api_url="http://127.0.0.1:1")
    assert env["DS_UNRELATED"] == "kept"
    assert env["DERMASENTINEL_DATABASE_URL"] == settings.as_env()["DERMASENTINEL_DATABASE_URL"] != "postgresql://stale"
    assert env["DERMASENTINEL_SEG_SIZE"] == "128"
    assert env["DERMASENTINEL_API_URL"] == "http://127.0.0.1:1"
    assert child_env(inherit_settings=True)["DERMASENTINEL_DATABASE_URL"] == "postgresql://stale"


def test_the_command_lines_are_the_products_own():
    assert api_command(8000, args=["--no-access-log"]) == [
        sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--host", "127.0.0.1", "--port", "8000",
        "--no-access-log",
    ]
    assert worker_command("gpu", metrics_port=9100) == [
        sys.executable, "-m", "cli.main", "worker", "--role", "gpu", "--metrics-port", "9100"
    ]


def test_services_that_are_given_are_not_started(tmp_path):
    with Stack(tmp_path / "stack", given=GIVEN) as stack:
        assert stack.endpoints == GIVEN
        assert stack.supervisor.names() == [] and stack.postgres is None


def test_endpoints_come_from_settings_and_become_settings_again():
    settings = Settings(_env_file=None, database_url=GIVEN.database_url, s3_endpoint="s3.example:9000",
                        s3_access_key="key", s3_secret_key="secret")
    found = StackEndpoints.from_settings(settings)
    assert (found.database_url, found.broker_url, found.s3_secret_key) == (GIVEN.database_url, None, "secret")
    assert found.settings_fields() == {"database_url": GIVEN.database_url, "s3_endpoint": "s3.example:9000",
                                       "s3_access_key": "key", "s3_secret_key": "secret", "s3_secure": False}


# ---------------------------------------------------------------- app processes on the session's stack


def test_an_api_process_serves_and_stops_with_nothing_left(dev_stack, settings, context):
    api = dev_stack.api(child_env(settings))
    group = api.pid
    assert httpx.get(f"{api.url}/healthz", timeout=5).status_code == 200
    assert api.log_path.parent == dev_stack.log_dir
    api.stop()
    assert api.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api.url}/healthz", timeout=2)


def test_an_app_that_exits_at_start_is_named_with_its_log(tmp_path):
    with pytest.raises(ServiceStartError, match="broken failed to start") as failure:
        start_app("broken", [sys.executable, "-c", "print('no such module'); raise SystemExit(3)"], child_env(),
                  tmp_path / "broken.log", ready_url="http://127.0.0.1:9/healthz", timeout=30)
    assert "no such module" in str(failure.value)


def test_a_supervised_app_that_dies_is_started_again(starts_services, tmp_path, settings):
    said: list[str] = []
    supervisor = Supervisor(announce=said.append, backoff=Backoff(first=0.1))
    stack = Stack(tmp_path / "stack", given=StackEndpoints.from_settings(settings), supervisor=supervisor)
    try:
        stack.start()
        beat = stack.beat(child_env(settings), supervised=True)
        os.kill(beat.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not any(line.startswith("beat restarted") for line in said):
            assert time.monotonic() < deadline, said
            supervisor.check()
            time.sleep(0.05)
        again = supervisor.get("beat")
        assert again is not None and again.process.pid != beat.pid
    finally:
        stack.stop()
    assert supervisor.names() == []
