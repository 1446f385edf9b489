"""``dermasentinel up``: the whole product on one machine, no Docker."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import click
import httpx

from cli.processes import Child, free_port, spawn, stop_all, tail
from shared.config import ENV_PREFIX, Settings

DEV_TENANT = "development"


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def write_stack_env(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{ENV_PREFIX}{k}={v}\n" for k, v in values.items()))
    tmp.chmod(0o600)
    tmp.replace(path)


def run_stack(host: str, port: int, demo: bool, exit_after_demo: bool) -> int:
    from shared.context import AppContext
    from shared.db import session_scope
    from shared.migrate import upgrade
    from shared.stack import EmbeddedStack
    from shared.tenants import issue_key

    # Only what the operator set explicitly: a stale stack.env from an earlier run must not
    # point this run at services that are no longer there.
    explicit = Settings(_env_file=None)
    data_dir = explicit.data_dir.resolve()
    stack = EmbeddedStack(
        data_dir / "stack",
        postgres=not explicit.database_url,
        redis=not explicit.broker_url,
        s3=not explicit.s3_endpoint,
        redis_persistent=True,
    )
    children: list[Child] = []
    signal.signal(signal.SIGTERM, _raise_stop)
    exit_code = 0
    try:
        click.echo("starting Postgres, Redis and S3 (embedded, from pip packages)…")
        started = time.monotonic()
        endpoints = stack.start()
        if port == 0 or not _port_free(host, port):
            port = free_port(host)
        api_url = f"http://{host}:{port}"
        values = {
            "DATA_DIR": str(data_dir),
            "DATABASE_URL": explicit.database_url or endpoints.database_url,
            "BROKER_URL": explicit.broker_url or endpoints.broker_url,
            "S3_ENDPOINT": explicit.s3_endpoint or endpoints.s3_endpoint,
            "S3_ACCESS_KEY": explicit.s3_access_key or endpoints.s3_access_key,
            "S3_SECRET_KEY": explicit.s3_secret_key.get_secret_value() or endpoints.s3_secret_key,
            "S3_SECURE": str(explicit.s3_secure if explicit.s3_endpoint else endpoints.s3_secure).lower(),
            "API_URL": api_url,
        }
        upgrade(values["DATABASE_URL"])
        settings = Settings(**{k.lower(): v for k, v in values.items()}, _env_file=None)
        context = AppContext(settings)
        context.store.ensure_buckets()
        with session_scope(context.session_factory) as session:
            _, api_key = issue_key(session, DEV_TENANT, label="dermasentinel up")
        context.close()
        values["API_KEY"] = api_key
        write_stack_env(settings.stack_env_path, values)
        click.echo(f"services ready in {time.monotonic() - started:.1f}s; settings in {settings.stack_env_path}")

        env = {**os.environ, **{ENV_PREFIX + k: v for k, v in values.items()}}
        logs = data_dir / "logs"
        children.append(spawn("api", ["uvicorn", "api.main:create_app", "--factory", "--host", host,
                                      "--port", str(port), "--no-access-log"], env, logs))
        for role in ("gpu", "cpu", "io"):
            children.append(spawn(f"worker-{role}", ["cli.main", "worker", "--role", role], env, logs))
        children.append(spawn("beat", ["cli.main", "beat"], env, logs))
        _wait_ready(api_url, children)

        click.echo("")
        click.echo(f"DermaSentinel is running at {api_url}  (OpenAPI docs: {api_url}/docs)")
        click.echo(f"development API key: {api_key}")
        click.echo(f"logs: {logs}   stop with Ctrl-C")
        click.echo("Research use only: DermaSentinel is NOT a certified medical device.")
        if demo:
            exit_code = run_demo(api_url, api_key)
            if exit_after_demo:
                return exit_code
        while True:
            for child in children:
                if child.process.poll() is not None:
                    click.echo(f"{child.name} exited with {child.process.returncode}:\n{tail(child.log_path)}", err=True)
                    return 1
            time.sleep(1.0)
    except (KeyboardInterrupt, _Stop):
        click.echo("\nstopping…")
        return exit_code
    finally:
        stop_all(children)
        stack.stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        click.echo("stopped.")


def _wait_ready(api_url: str, children: list[Child], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if child.process.poll() is not None:
                raise click.ClickException(f"{child.name} failed to start:\n{tail(child.log_path)}")
        try:
            if httpx.get(f"{api_url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise click.ClickException(f"the API did not become ready within {timeout:.0f}s")


def run_demo(api_url: str, api_key: str) -> int:
    """Submit one synthetic lesion end to end and print what a user would see."""
    from cli.client import Client
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
        analysis = client.wait(analysis["id"], timeout=900)
        elapsed = time.monotonic() - started
        click.echo(f"demo: analysis {analysis['id']} {analysis['status']} in {elapsed:.1f}s")
        if analysis["status"] != "succeeded":
            click.echo(f"demo: {analysis.get('rejection') or analysis.get('error')}", err=True)
            return 1
        result, model = analysis["result"], analysis["model"]
        click.echo(
            f"demo: {result['diagnosis']} p={result['probability']:.3f}±{result['uncertainty']:.3f} "
            f"risk={result['risk_band']} coverage={result['segmentation']['coverage']:.3f} "
            f"ITA={result['equity']['ita_degrees']:.1f}° ({result['equity']['skin_group']}) "
            f"segmenter={model['segmenter']} weights={model['weights']}"
        )
        click.echo("\n" + result["scribe_note"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response = client.http.get(f"/v1/analyses/{analysis['id']}/report.pdf")
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
