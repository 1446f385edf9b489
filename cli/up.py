"""``dermasentinel up``: the whole product on one machine, no Docker."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from devstack import (
    DataDirInUseError,
    DataDirLock,
    ServiceStartError,
    Stack,
    StackEndpoints,
    child_env,
    free_port,
    is_port_free,
)
from devstack.supervisor import Backoff, Supervisor
from shared.config import ENV_PREFIX, Settings, user_config_path

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

DEV_TENANT = "development"
SUPERVISE_INTERVAL_SECONDS = 0.5
ROLES = ("gpu", "cpu", "io")
# NICE of the API, the io worker and beat under `up`: below the analysis worker (issue 27).
BACKGROUND_NICE = 10
# The cpu worker (PDF/FHIR reports, archive ingest) lowest of all: while the networks keep the
# cores busy its work waits for their gaps, so reports are deferred behind the analysis lane and
# catch up as soon as it idles (issue 27, round 5; docs/ENGINE.md "Inference first").
DEFERRED_NICE = 19
# First restart after 1 s, then 2, 4, 8, at most 15 s apart while a process keeps dying;
# a process that stayed up 60 s starts again from 1 s.
RESTART_BACKOFF = Backoff(first=1.0, cap=15.0, healthy_after=60.0)


class _Stop(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (not an Exception,
    so no `except Exception` on the way mistakes it for a failure to retry)."""


def _raise_stop(signum, frame):
    raise _Stop()


# Issue 25: files `up` keeps in DATA_DIR beside stack.env.
UP_LOCK = "up.lock"  # held while this `up` runs: a second one on the same DATA_DIR is refused at once
METRICS_FILE = "metrics.json"  # each process' Prometheus URL (`dermasentinel status` lists them)


def write_stack_env(path: Path, values: dict[str, str], header: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + "".join(f"{ENV_PREFIX}{k}={v}\n" for k, v in values.items()))
    tmp.chmod(0o600)
    tmp.replace(path)


def read_stack_env(path: Path) -> dict[str, str]:
    """A stack.env's values by setting name (without the prefix); empty when there is none."""
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))
    return {name.strip().removeprefix(ENV_PREFIX): value.strip() for name, value in pairs}


def write_user_config(data_dir: Path, api_url: str) -> Path:
    """Tell client commands run from any folder where this stack is (issue 25): the user
    config names DATA_DIR (whose stack.env holds the development key) and the API's URL."""
    path = user_config_path()
    header = (
        "# Written by `dermasentinel up`: the stack client commands use when run from any folder.\n"
        f"# The development API key is in {data_dir / 'stack.env'}; DERMASENTINEL_* variables override both.\n"
    )
    write_stack_env(path, {"DATA_DIR": str(data_dir), "API_URL": api_url}, header=header)
    return path


def check_port(host: str, port: int) -> None:
    """``--port N`` is honoured or refused, never swapped for another port (issue 25)."""
    # As uvicorn binds: a port held only by TIME_WAIT sockets of a crashed run is free to it.
    if port and not is_port_free(port, host):
        raise click.ClickException(
            f"port {port} on {host} is in use (another program, or another stack); stop it, choose another "
            "with --port N, or pass --port 0 for any free port"
        )


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """This run's hold on DATA_DIR; a second `up` on it is refused before it starts anything."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock("dermasentinel up", data_dir / UP_LOCK)
    try:
        lock.acquire()
    except DataDirInUseError:
        running = read_stack_env(data_dir / "stack.env").get("API_URL")
        where = f" (its API: {running})" if running else ""
        raise click.ClickException(
            f"another `dermasentinel up` is already running on {data_dir}{where}; use that one, stop it with "
            "Ctrl-C, or start another with DERMASENTINEL_DATA_DIR set to another folder"
        ) from None
    return lock


def development_key(session: Session, previous: str | None) -> str:
    """The development tenant's key: the one the last `up` on this DATA_DIR stored, while it is
    still an active key of that tenant; a new one only otherwise (issue 25: each `up` added one)."""
    from shared.tables import Tenant
    from shared.tenants import authenticate, issue_key

    if previous:
        grant = authenticate(session, previous)
        tenant = session.get(Tenant, grant.tenant_id) if grant is not None else None
        if tenant is not None and tenant.name == DEV_TENANT:
            return previous
    _, key = issue_key(session, DEV_TENANT, label="dermasentinel up")
    return key


def write_metrics_file(data_dir: Path, urls: dict[str, str]) -> None:
    path = data_dir / METRICS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(urls, indent=2) + "\n")
    tmp.replace(path)


def read_metrics_file(data_dir: Path) -> dict[str, str]:
    path = data_dir / METRICS_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def _announce(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}")


def run_stack(host: str, port: int, demo: bool, exit_after_demo: bool) -> int:
    from shared.context import AppContext
    from shared.db import session_scope
    from shared.migrate import upgrade

    # Only what the operator set explicitly: a stale stack.env from an earlier run must not
    # point this run at services that are no longer there.
    explicit = Settings(_env_file=None)
    data_dir = explicit.data_dir.resolve()
    # Refused before anything starts: a second `up` on this DATA_DIR, or a --port that is taken.
    up_lock = lock_data_dir(data_dir)
    try:
        check_port(host, port)
    except click.ClickException:
        up_lock.release()
        raise
    previous_key = read_stack_env(data_dir / "stack.env").get("API_KEY")
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
        if port == 0:
            port = free_port(host)
        else:
            check_port(host, port)  # taken while the services started
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
            api_key = development_key(session, previous_key)
        context.close()
        values["API_KEY"] = api_key
        write_stack_env(settings.stack_env_path, values)
        user_config = write_user_config(data_dir, api_url)
        click.echo(f"services ready in {time.monotonic() - started:.1f}s; settings in {settings.stack_env_path} "
                   f"(client commands find them from any folder through {user_config})")

        # The operator's own DERMASENTINEL_* settings reach every process, under this run's values.
        env = child_env({ENV_PREFIX + k: v for k, v in values.items()}, inherit_settings=True)
        logs = stack.log_dir
        metrics = start_apps(stack, env, host, port)
        write_metrics_file(data_dir, metrics)
        try:
            stack.wait_ready(api_url, timeout=120.0)
        except ServiceStartError as failure:
            raise click.ClickException(str(failure)) from None

        click.echo("")
        click.echo(f"DermaSentinel is running at {api_url}  (OpenAPI docs: {api_url}/docs)")
        click.echo(f"development API key: {api_key}")
        click.echo(f"logs: {logs}   metrics of each process: `dermasentinel status`   stop with Ctrl-C")
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
            (data_dir / METRICS_FILE).unlink(missing_ok=True)
            up_lock.release()
        click.echo("stopped.")


def start_apps(stack: Stack, env: dict[str, str], host: str, port: int) -> dict[str, str]:
    """The app's own processes, supervised: the API, a gpu, cpu and io worker, beat. Returns the
    URL each serves its Prometheus metrics on, by process (api, worker-gpu, …)."""
    # Every process serves its own Prometheus metrics on a port of its own (docs/OBSERVABILITY.md);
    # the API never on its public port (issue 22).
    metrics_port = free_port(host)
    # Inference first (issue 27): everything but the analysis worker runs at a lower CPU priority.
    background = {**env, ENV_PREFIX + "NICE": env.get(ENV_PREFIX + "NICE", str(BACKGROUND_NICE))}
    deferred = {**env, ENV_PREFIX + "NICE": env.get(ENV_PREFIX + "NICE", str(DEFERRED_NICE))}
    stack.api(background, host=host, port=port, args=["--no-access-log"], supervised=True, metrics_port=metrics_port)
    urls = {"api": f"http://{host}:{metrics_port}/metrics"}
    for role in ROLES:
        worker_port = free_port(host)
        settings = {"gpu": env, "cpu": deferred}.get(role, background)
        stack.worker(settings, role=role, metrics_port=worker_port, supervised=True)
        urls[f"worker-{role}"] = f"http://{host}:{worker_port}/metrics"
    stack.beat(background, supervised=True)
    return urls


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
    from cli.client import ApiError, connect
    from cli.render import demo_problem, demo_summary
    from worker.pipeline.synthetic import encode_jpeg, make_lesion

    lesion = make_lesion(seed=7, size=(600, 800), ita=35.0, radius_frac=0.22, irregularity=0.5, variegation=0.6)
    client = connect(api_url, api_key)
    try:
        click.echo("\ndemo: submitting a synthetic lesion (age 54, female, torso)…")
        started = time.monotonic()
        analysis = client.analyses.create(
            encode_jpeg(lesion.image), filename="demo-lesion.jpg", age=54, sex="female", site="torso",
            external_id="demo-0001",
        )
        analysis = client.analyses.wait(analysis.id, timeout=900)
        elapsed = time.monotonic() - started
        click.echo(f"demo: analysis {analysis.id} {analysis.status} in {elapsed:.1f}s")
        if analysis.status != "succeeded":
            click.echo(demo_problem(analysis), err=True)
            return 1
        for line in demo_summary(analysis):
            click.echo(line)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                pdf = client.analyses.report_pdf(analysis.id)
            except ApiError as exc:
                if exc.status_code not in (404, 409):  # 409: the report worker has not written it yet
                    raise
                time.sleep(0.5)
                continue
            out = Path(os.environ.get("DERMASENTINEL_DATA_DIR", ".dermasentinel")) / "demo-report.pdf"
            out.write_bytes(pdf)
            click.echo(f"\ndemo: PDF report ({len(pdf):,} bytes) saved to {out}")
            return 0
        click.echo("demo: the PDF report was not ready within 120s", err=True)
        return 1
    finally:
        client.close()
