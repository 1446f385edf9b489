"""The app's own processes: the API (uvicorn), Celery workers and beat, started one way.

`dermasentinel up` (supervised, through `devstack.Stack`), the test fixtures and the
benchmarks all start them here, with the same command lines:

    env = child_env(settings)                      # ours, minus the caller's DERMASENTINEL_*
    api = start_api(env, logs / "api.log")         # returns once /healthz answers
    worker = start_worker(env, logs / "worker.log", role="gpu")
    ...
    api.url, api.pid, api.stop(), worker.kill()

Each process is a child in its own process group that dies with this process (when started
from the main thread), its output appended to its log; `stop()` sends SIGTERM, waits, then
kills whatever is left of the group.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from devstack._ports import LOOPBACK, free_port
from devstack._process import ServiceProcess, log_tail

ENV_PREFIX = "DERMASENTINEL_"
STOP_GRACE_SECONDS = 15.0


class EnvSource(Protocol):
    """shared.config.Settings, or anything else that writes itself as DERMASENTINEL_* variables."""

    def as_env(self) -> dict[str, str]: ...


def child_env(
    settings: EnvSource | Mapping[str, str] | None = None, *, inherit_settings: bool = False, **fields: object
) -> dict[str, str]:
    """The environment of an app process: this process's, without its DERMASENTINEL_* variables
    (kept with `inherit_settings`, as `up` keeps the operator's), then `settings` (a Settings
    object, or variables by full name), then `fields` by setting name (`api_url=...`)."""
    env = {k: v for k, v in os.environ.items() if inherit_settings or not k.startswith(ENV_PREFIX)}
    if settings is not None:
        env.update(settings.as_env() if hasattr(settings, "as_env") else dict(settings))
    env.update({ENV_PREFIX + name.upper(): str(value) for name, value in fields.items()})
    return env


def api_command(port: int, host: str = LOOPBACK, args: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory",
            "--host", host, "--port", str(port), *args]


def worker_command(role: str = "all", concurrency: int | None = None, metrics_port: int | None = None) -> list[str]:
    command = [sys.executable, "-m", "cli.main", "worker", "--role", role]
    if concurrency is not None:
        command += ["--concurrency", str(concurrency)]
    if metrics_port is not None:
        command += ["--metrics-port", str(metrics_port)]
    return command


def beat_command() -> list[str]:
    return [sys.executable, "-m", "cli.main", "beat"]


@dataclass
class App:
    """A started app process. `url`: the API's base URL, or a worker's metrics URL if it serves one;
    `metrics_url`: the API's metrics URL, on a port of its own, when it serves them."""

    name: str
    process: ServiceProcess = field(repr=False)
    url: str | None = None
    stop_grace: float = STOP_GRACE_SECONDS
    metrics_url: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def poll(self) -> int | None:
        """The exit status once it has exited, else None."""
        return self.process.poll()

    def log(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Until `url` answers below 500. If the process exits first, or on timeout, it is stopped
        and ServiceStartError (quoting its log) is raised."""

        def answers() -> bool:
            return httpx.get(url, timeout=1.0).status_code < 500

        self.process.wait_until(answers, timeout, f"answer from {url}")

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, up to `grace` seconds (default `stop_grace`) to exit, then SIGKILL of its group."""
        self.process.stop(self.stop_grace if grace is None else grace)

    def kill(self) -> None:
        """SIGKILL of its whole group now, as a crash would."""
        self.process.stop(grace=0)


def start_app(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    log_path: Path,
    *,
    url: str | None = None,
    ready_url: str | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
    stop_grace: float = STOP_GRACE_SECONDS,
) -> App:
    """Spawn `argv`; with `ready_url`, return once it answers (see `App.wait_http`)."""
    process = ServiceProcess(name, argv, Path(log_path), None, env=dict(env), cwd=cwd, death_signal=signal.SIGKILL)
    app = App(name, process, url, stop_grace)
    if ready_url is not None:
        app.wait_http(ready_url, timeout)
    return app


def api_env(env: Mapping[str, str], url: str, metrics_port: int | None) -> dict[str, str]:
    """The API's environment: DERMASENTINEL_API_URL where it listens unless `env` names another,
    and DERMASENTINEL_METRICS_PORT when it serves its metrics on a port of their own."""
    env = dict(env)
    if not env.get(ENV_PREFIX + "API_URL"):
        env[ENV_PREFIX + "API_URL"] = url
    if metrics_port is not None:
        env[ENV_PREFIX + "METRICS_PORT"] = str(metrics_port)
    return env


def start_api(
    env: Mapping[str, str],
    log_path: Path,
    *,
    port: int | None = None,
    host: str = LOOPBACK,
    args: Sequence[str] = (),
    name: str = "api",
    wait: bool = True,
    timeout: float = 60.0,
    cwd: Path | None = None,
    metrics_port: int | None = None,
) -> App:
    """`uvicorn api.main:create_app` on `port` (a free one if None); DERMASENTINEL_API_URL is set
    to where it listens unless `env` names another. With `metrics_port` it serves its metrics
    there (`metrics_url`; never on `port`). With `wait`, returns once /healthz answers."""
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    app = start_app(name, api_command(port, host, args), api_env(env, url, metrics_port), log_path, url=url,
                    ready_url=f"{url}/healthz" if wait else None, timeout=timeout, cwd=cwd)
    if metrics_port:
        app.metrics_url = f"http://{LOOPBACK if host in ('0.0.0.0', '::') else host}:{metrics_port}/metrics"
    return app


def start_worker(
    env: Mapping[str, str],
    log_path: Path,
    *,
    role: str = "all",
    concurrency: int | None = None,
    metrics_port: int | None = None,
    name: str | None = None,
    wait: bool = False,
    timeout: float = 120.0,
    cwd: Path | None = None,
) -> App:
    """`dermasentinel worker --role ROLE`. With `metrics_port` its metrics are at `url`; with
    `wait` as well, returns once they answer (the worker has started)."""
    url = f"http://{LOOPBACK}:{metrics_port}/metrics" if metrics_port else None
    return start_app(name or f"worker-{role}", worker_command(role, concurrency, metrics_port), env, log_path,
                     url=url, ready_url=url if wait and url else None, timeout=timeout, cwd=cwd)


def start_beat(env: Mapping[str, str], log_path: Path, *, name: str = "beat", cwd: Path | None = None) -> App:
    """`dermasentinel beat`, the scheduler."""
    return start_app(name, beat_command(), env, log_path, cwd=cwd)
