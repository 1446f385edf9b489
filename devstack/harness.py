"""`Stack`: the one way to run DermaSentinel on this machine, for `up`, the tests and the benchmarks.

    with Stack(work / "stack", given=StackEndpoints.from_settings(Settings())) as stack:
        endpoints = stack.start()                  # Postgres, Redis, S3: embedded unless given
        settings = Settings(**endpoints.settings_fields(), ...)
        api = stack.api(child_env(settings))       # an App: api.url, api.pid, api.stop()
        stack.worker(child_env(settings), role="gpu")
    # leaving the block stops the app processes, then the services

The app processes are the ones of `devstack.apps`; `supervised=True` hands one to the
stack's supervisor, which restarts it with backoff when the owner calls `supervisor.check()`
(`up` does); the others are plain children that `stop()` ends together.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from devstack._ports import LOOPBACK, free_port
from devstack._process import log_tail
from devstack.apps import (
    STOP_GRACE_SECONDS,
    App,
    api_command,
    api_env,
    beat_command,
    start_api,
    start_app,
    start_beat,
    start_worker,
    worker_command,
)
from devstack.errors import ServiceStartError
from devstack.postgres import PostgresHandle
from devstack.redis import RedisHandle
from devstack.s3 import S3Handle
from devstack.stack import EmbeddedStack, StackEndpoints
from devstack.supervisor import Supervised, Supervisor, describe_exit

# Supervisor layers: the app stops before the services it uses (SERVICES_LAYER = 0).
APP_LAYER = 1


class Stack:
    """Backing services (embedded, or `given`) and the app's processes, stopped together."""

    def __init__(
        self,
        data_dir: Path,
        *,
        given: StackEndpoints | None = None,
        redis_persistent: bool = False,
        supervisor: Supervisor | None = None,
        log_dir: Path | None = None,
        postgres: bool = True,
        redis: bool = True,
        s3: bool = True,
    ):
        """`log_dir`: where app processes log (default `data_dir/logs`, beside the services' logs).
        `postgres`/`redis`/`s3`=False: that service is neither started nor given."""
        self.services = EmbeddedStack(
            data_dir, postgres, redis, s3, given=given, redis_persistent=redis_persistent, supervisor=supervisor
        )
        self.supervisor = self.services.supervisor
        self.data_dir = self.services.data_dir
        self.log_dir = Path(log_dir) if log_dir is not None else self.data_dir / "logs"
        self._apps: list[App] = []

    # ---------------------------------------------------------------- services

    def start(self) -> StackEndpoints:
        """Start the services that are not given; returns once each answers. Idempotent."""
        return self.services.start()

    @property
    def endpoints(self) -> StackEndpoints:
        return self.services.endpoints

    @property
    def postgres(self) -> PostgresHandle | None:
        """The embedded Postgres while it runs (None if given, not wanted, or being restarted)."""
        return self.services.postgres

    @property
    def redis(self) -> RedisHandle | None:
        return self.services.redis

    @property
    def s3(self) -> S3Handle | None:
        return self.services.s3

    # ---------------------------------------------------------------- app processes

    def api(
        self,
        env: Mapping[str, str],
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        args: Sequence[str] = (),
        name: str = "api",
        supervised: bool = False,
        wait: bool = True,
        timeout: float = 60.0,
        metrics_port: int | None = None,
    ) -> App:
        """The API (uvicorn) on `port` (a free one if None or 0), its metrics on `metrics_port`
        if given; see `devstack.apps.start_api`."""
        if supervised:
            port = port or free_port(host)
            url = f"http://{host}:{port}"
            return self._supervise(name, api_command(port, host, args), api_env(env, url, metrics_port), url)
        app = start_api(env, self._log(name), port=port, host=host, args=args, name=name, wait=wait, timeout=timeout,
                        metrics_port=metrics_port)
        return self._keep(app)

    def worker(
        self,
        env: Mapping[str, str],
        *,
        role: str = "all",
        concurrency: int | None = None,
        metrics_port: int | None = None,
        name: str | None = None,
        supervised: bool = False,
        wait: bool = False,
    ) -> App:
        """A Celery worker of `role`; see `devstack.apps.start_worker`."""
        name = name or f"worker-{role}"
        if supervised:
            url = f"http://{LOOPBACK}:{metrics_port}/metrics" if metrics_port else None
            return self._supervise(name, worker_command(role, concurrency, metrics_port), env, url,
                                   heartbeat=_worker_heartbeat(env))
        app = start_worker(env, self._log(name), role=role, concurrency=concurrency, metrics_port=metrics_port,
                           name=name, wait=wait)
        return self._keep(app)

    def beat(self, env: Mapping[str, str], *, name: str = "beat", supervised: bool = False) -> App:
        """The scheduler (sweeper, webhook retries, retention)."""
        if supervised:
            return self._supervise(name, beat_command(), env, None)
        return self._keep(start_beat(env, self._log(name), name=name))

    def wait_ready(self, api_url: str, timeout: float = 120.0) -> None:
        """Until the API's /readyz says ready (database, broker, object store, a GPU worker).
        A supervised process that exits first is a start-up failure: ServiceStartError with its log."""
        deadline = time.monotonic() + timeout
        while True:
            for name, status in self.supervisor.exited().items():
                handle = self.supervisor.get(name)
                log_path = handle.process.log_path if handle else None
                raise ServiceStartError(name, describe_exit(status), log_path, log_tail(log_path) if log_path else "")
            try:
                if httpx.get(f"{api_url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                raise ServiceStartError("the API", f"not ready within {timeout:.0f}s (GET {api_url}/readyz)")
            time.sleep(0.5)

    def _log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _keep(self, app: App) -> App:
        self._apps = [kept for kept in self._apps if kept.poll() is None]
        self._apps.append(app)
        return app

    def _supervise(
        self, name: str, argv: list[str], env: Mapping[str, str], url: str | None,
        heartbeat: tuple[Callable[[Supervised], float | None], float] | None = None,
    ) -> App:
        log_path, child_env = self._log(name), dict(env)

        def launch(restart: bool) -> App:
            return start_app(name, argv, child_env, log_path, url=url)

        beat, hung_after = heartbeat if heartbeat else (None, None)
        handle = self.supervisor.start(name, launch, layer=APP_LAYER, stop_grace=STOP_GRACE_SECONDS,
                                       heartbeat=beat, hung_after=hung_after)
        assert isinstance(handle, App)
        return handle

    # ---------------------------------------------------------------- the end

    def stop(self) -> None:
        """Stop the unsupervised app processes (together: SIGTERM to all, one grace period), then
        the supervised ones, then the services. Safe to call twice."""
        apps, self._apps = self._apps, []
        try:
            for app in apps:
                app.process.request_stop()
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for app in apps:
                app.stop(grace=max(0.0, deadline - time.monotonic()))
        finally:
            self.services.stop()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()



def _worker_heartbeat(env: Mapping[str, str]) -> tuple[Callable[[Supervised], float | None], float] | None:
    """Issue 26: a worker's main process touches DATA_DIR/heartbeats/worker-<pid>
    (shared.liveness); `up` kills and restarts one whose file is older than WORKER_HUNG_SECONDS."""
    from shared.config import ENV_PREFIX, Settings
    from shared.liveness import file_age, heartbeat_file

    data_dir = env.get(ENV_PREFIX + "DATA_DIR")
    if not data_dir:
        return None
    default = Settings.model_fields["worker_hung_seconds"].default
    hung_after = float(env.get(ENV_PREFIX + "WORKER_HUNG_SECONDS", default))

    def age(handle: Supervised) -> float | None:
        return file_age(heartbeat_file(Path(data_dir), handle.process.pid))

    return age, hung_after
