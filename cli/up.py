"""``dermasentinel up``: the whole product on one machine, no Docker."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from devstack import ServiceStartError, Stack, StackEndpoints, child_env, free_port, is_port_free
from devstack.supervisor import Backoff, Supervisor
from shared.config import ENV_PREFIX, Settings

DEV_TENANT = "development"
SUPERVISE_INTERVAL_SECONDS = 0.5
ROLES = ("gpu", "cpu", "io")
# First restart after 1 s, then 2, 4, 8, at most 15 s apart while a process keeps dying;
# a process that stayed up 60 s starts again from 1 s.
RESTART_BACKOFF = Backoff(first=1.0, cap=15.0, healthy_after=60.0)


class _Stop(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (not an Exception,
    so no `except Exception` on the way mistakes it for a failure to retry)."""


def _raise_stop(signum, frame):
    raise _Stop()


def write_stack_env(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{ENV_PREFIX}{k}={v}\n" for k, v in values.items()))
    tmp.chmod(0o600)
    tmp.replace(path)


def _announce(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}")


def run_stack(host: str, port: int, demo: bool, exit_after_demo: bool) -> int:
    from shared.context import AppContext
    from shared.db import session_scope
    from shared.migrate import upgrade
    from shared.tenants import issue_key

    # Only what the operator set explicitly: a stale stack.env from an earlier run must not
    # point this run at services that are no longer there.
    explicit = Settings(_env_file=None)
    data_dir = explicit.data_dir.resolve()
    # One supervisor for the embedded services and the app's processes: any of them that
    # dies is restarted (same ports, same data) with backoff, and the console says so.
    supervisor = Supervisor(announce=_announce, backoff=RESTART_BACKOFF)
    # Services the operator named are used as they are; the others are embedded.
    stack = Stack(
        data_dir / "stack",
        given=StackEndpoints.from_settings(explicit),
        redis_persistent=True,
        supervisor=supervisor,
        log_dir=data_dir / "logs",
    )
    signal.signal(signal.SIGTERM, _raise_stop)
    exit_code = 0
    try:
        click.echo("starting Postgres, Redis and S3 (embedded, from pip packages)…")
        started = time.monotonic()
        endpoints = stack.start()
        # As uvicorn binds: a port held only by TIME_WAIT sockets of a crashed run is free to it.
        if port == 0 or not is_port_free(port, host):
            port = free_port(host)
        api_url = f"http://{host}:{port}"
        values: dict[str, str] = {
            "DATA_DIR": str(data_dir),
            "DATABASE_URL": endpoints.database_url or "",
            "BROKER_URL": endpoints.broker_url or "",
            "S3_ENDPOINT": endpoints.s3_endpoint or "",
            "S3_ACCESS_KEY": endpoints.s3_access_key or "",
            "S3_SECRET_KEY": endpoints.s3_secret_key or "",
            "S3_SECURE": str(endpoints.s3_secure).lower(),
            "API_URL": api_url,
            # A person reads these logs: readable lines unless the operator chose a format.
            "LOG_FORMAT": explicit.log_format if explicit.log_format != "auto" else "console",
        }
        upgrade(values["DATABASE_URL"])
        fields: dict[str, Any] = {k.lower(): v for k, v in values.items()}
        settings = Settings(**fields, _env_file=None)
        context = AppContext(settings)
        context.store.ensure_buckets()
        with session_scope(context.session_factory) as session:
            _, api_key = issue_key(session, DEV_TENANT, label="dermasentinel up")
        context.close()
        values["API_KEY"] = api_key
        write_stack_env(settings.stack_env_path, values)
        click.echo(f"services ready in {time.monotonic() - started:.1f}s; settings in {settings.stack_env_path}")

        # The operator's own DERMASENTINEL_* settings reach every process, under this run's values.
        env = child_env({ENV_PREFIX + k: v for k, v in values.items()}, inherit_settings=True)
        logs = stack.log_dir
        metrics_port = start_apps(stack, env, host, port)
        try:
            stack.wait_ready(api_url, timeout=120.0)
        except ServiceStartError as failure:
            raise click.ClickException(str(failure)) from None

        click.echo("")
        click.echo(f"DermaSentinel is running at {api_url}  (OpenAPI docs: {api_url}/docs)")
        click.echo(f"development API key: {api_key}")
        click.echo(f"logs: {logs}   API metrics: http://{host}:{metrics_port}/metrics   stop with Ctrl-C")
        click.echo("Research use only: DermaSentinel is NOT a certified medical device.")
        # The demo runs beside the supervision loop: restarts must come from the main thread,
        # where children are armed to die with this process.
        demo_run = _DemoRun(api_url, api_key) if demo else None
        while True:
            supervisor.check()
            if demo_run is not None and demo_run.finished():
                exit_code = demo_run.exit_code
                if exit_after_demo:
                    return exit_code
                demo_run = None
            time.sleep(SUPERVISE_INTERVAL_SECONDS)
    except (KeyboardInterrupt, _Stop):
        click.echo("\nstopping…")
        return exit_code
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        click.echo("stopped.")


def start_apps(stack: Stack, env: dict[str, str], host: str, port: int) -> int:
    """The app's own processes, supervised: the API, a gpu, cpu and io worker, beat. Returns the
    port the API serves its metrics on."""
    # Every process serves its own Prometheus metrics on a port of its own (docs/OBSERVABILITY.md);
    # the API never on its public port (issue 22).
    metrics_port = free_port(host)
    stack.api(env, host=host, port=port, args=["--no-access-log"], supervised=True, metrics_port=metrics_port)
    for role in ROLES:
        stack.worker(env, role=role, metrics_port=free_port(host), supervised=True)
    stack.beat(env, supervised=True)
    return metrics_port


class _DemoRun:
    def __init__(self, api_url: str, api_key: str):
        self.exit_code = 1
        self._thread = threading.Thread(target=self._run, args=(api_url, api_key), name="demo", daemon=True)
        self._thread.start()

    def _run(self, api_url: str, api_key: str) -> None:
        self.exit_code = run_demo(api_url, api_key)

    def finished(self) -> bool:
        return not self._thread.is_alive()


def run_demo(api_url: str, api_key: str) -> int:
    """Submit one synthetic lesion end to end and print what a user would see."""
    from cli.client import Client
    from cli.render import demo_problem, demo_summary
    from worker.pipeline.synthetic import encode_jpeg, make_lesion

    lesion = make_lesion(seed=7, size=(600, 800), ita=35.0, radius_frac=0.22, irregularity=0.5, variegation=0.6)
    client = Client(api_url, api_key)
    try:
        click.echo("\ndemo: submitting a synthetic lesion (age 54, female, torso)…")
        started = time.monotonic()
        analysis = client.submit(
            encode_jpeg(lesion.image), "demo-lesion.jpg",
            {"age": 54, "sex": "female", "site": "torso", "external_id": "demo-0001"},
        )
        analysis = client.wait(str(analysis.id), timeout=900)
        elapsed = time.monotonic() - started
        click.echo(f"demo: analysis {analysis.id} {analysis.status} in {elapsed:.1f}s")
        if analysis.status != "succeeded":
            click.echo(demo_problem(analysis), err=True)
            return 1
        for line in demo_summary(analysis):
            click.echo(line)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response = client.http.get(f"/v1/analyses/{analysis.id}/report.pdf")
            if response.status_code == 200:
                out = Path(os.environ.get("DERMASENTINEL_DATA_DIR", ".dermasentinel")) / "demo-report.pdf"
                out.write_bytes(response.content)
                click.echo(f"\ndemo: PDF report ({len(response.content):,} bytes) saved to {out}")
                return 0
            time.sleep(0.5)
        click.echo("demo: the PDF report was not ready within 120s", err=True)
        return 1
    finally:
        client.close()
