"""Test fixtures on real services.

The suite starts its own Postgres, Redis and S3 server from the pip packages once per
session (or uses DERMASENTINEL_TEST_DATABASE_URL / _BROKER_URL / _S3_* when set), builds a
fresh database by running the migrations, and uses buckets whose names carry a random
``dstest-`` prefix. Services are started lazily: unit tests that need none start none.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from cli.processes import free_port, stop_process, wait_http
from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_SIZES = {"seg_size": 128, "cls_size": 128, "tta_views": 5}


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """Connection settings for Postgres, Redis and S3: from env, else embedded."""
    env = os.environ
    given = {
        "database_url": env.get("DERMASENTINEL_TEST_DATABASE_URL"),
        "broker_url": env.get("DERMASENTINEL_TEST_BROKER_URL"),
        "s3_endpoint": env.get("DERMASENTINEL_TEST_S3_ENDPOINT"),
        "s3_access_key": env.get("DERMASENTINEL_TEST_S3_ACCESS_KEY"),
        "s3_secret_key": env.get("DERMASENTINEL_TEST_S3_SECRET_KEY"),
    }
    from devstack import EmbeddedStack

    # Not under pytest's tmp_path: a concurrent pytest run prunes old basetemp folders,
    # which would pull the data directory out from under a running Postgres.
    stack_dir = Path(tempfile.mkdtemp(prefix="dermasentinel-test-stack-"))
    stack = EmbeddedStack(
        stack_dir,
        postgres=not given["database_url"],
        redis=not given["broker_url"],
        s3=not given["s3_endpoint"],
    )
    endpoints = stack.start()
    values = {
        "database_url": given["database_url"] or endpoints.database_url,
        "broker_url": given["broker_url"] or endpoints.broker_url,
        "s3_endpoint": given["s3_endpoint"] or endpoints.s3_endpoint,
        "s3_access_key": given["s3_access_key"] or endpoints.s3_access_key,
        "s3_secret_key": given["s3_secret_key"] or endpoints.s3_secret_key,
    }
    yield values
    stack.stop()
    shutil.rmtree(stack_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def test_database_url(services):
    """A brand-new database for this session, built by the migrations."""
    from shared.migrate import scratch_database

    with scratch_database(services["database_url"], "dstest") as url:
        yield url


@pytest.fixture(scope="session")
def settings(services, test_database_url, tmp_path_factory) -> Settings:
    prefix = f"dstest-{secrets.token_hex(3)}"
    assert prefix.startswith("dstest-"), "tests only ever touch buckets named dstest-*"
    return Settings(
        _env_file=None,
        environment="test",
        data_dir=tmp_path_factory.mktemp("data"),
        database_url=test_database_url,
        broker_url=services["broker_url"],
        s3_endpoint=services["s3_endpoint"],
        s3_access_key=services["s3_access_key"],
        s3_secret_key=services["s3_secret_key"],
        s3_bucket_prefix=prefix,
        webhook_allow_cidrs="127.0.0.0/8",
        webhook_retry_schedule="1,1,1,1",
        webhook_dispatch_interval_seconds=0.5,
        sweep_interval_seconds=1.0,
        stuck_after_seconds=20,
        **TEST_SIZES,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """A child's environment: ours, minus any DERMASENTINEL_* of the caller, plus the settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}
    return {**env, **settings.as_env()}


@pytest.fixture(scope="session")
def context(settings):
    from shared.context import AppContext

    ctx = AppContext(settings)
    ctx.store.ensure_buckets()
    yield ctx
    for purpose in ("images", "artifacts"):
        bucket = settings.bucket(purpose)
        assert bucket.startswith("dstest-")
        if ctx.store.client.bucket_exists(bucket):
            for obj in ctx.store.client.list_objects(bucket, recursive=True):
                ctx.store.client.remove_object(bucket, obj.object_name)
            ctx.store.client.remove_bucket(bucket)
    ctx.close()


@pytest.fixture(scope="session")
def api_url(settings, context, tmp_path_factory):
    """A real uvicorn API process."""
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "api.log"
    env = settings_env(settings.model_copy(update={"api_url": f"http://127.0.0.1:{port}"}))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port)],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", process, log)
    yield url
    stop_process(process)


class WorkerProcess:
    def __init__(self, settings: Settings, log: Path, role: str = "all", concurrency: int = 2):
        self.settings, self.log, self.role, self.concurrency = settings, log, role, concurrency
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "worker", "--role", self.role,
                 "--concurrency", str(self.concurrency)],
                env=settings_env(self.settings), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace=15)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, 9)
            self.process.wait()
            self.process = None


@pytest.fixture(scope="session")
def worker(settings, context, api_url, tmp_path_factory):
    """A real Celery worker process serving every queue, running the real pipeline."""
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    proc = WorkerProcess(settings.model_copy(update={"api_url": api_url}), log)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def beat(settings, context, api_url, tmp_path_factory):
    """The real scheduler (sweeper, webhook retries)."""
    log = tmp_path_factory.mktemp("logs") / "beat.log"
    env = settings_env(settings.model_copy(update={"api_url": api_url}))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "beat"], env=env, cwd=ROOT,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    yield process
    stop_process(process)


@pytest.fixture
def tenant_key(context):
    """A fresh tenant and its API key for each test (isolation by tenant, not truncation)."""
    from shared.db import session_scope
    from shared.tenants import issue_key

    with session_scope(context.session_factory) as session:
        tenant, key = issue_key(session, f"test-{uuid.uuid4().hex[:10]}")
    return tenant.id, key


@pytest.fixture
def api(api_url, tenant_key):
    """An HTTP client for the real API, authenticated as a fresh tenant."""
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {tenant_key[1]}"}, timeout=60
    ) as client:
        yield client


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.25, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def wait():
    return wait_for


@pytest.fixture
def wait_final(api):
    def _wait(analysis_id: str, timeout: float = 180.0, client: httpx.Client | None = None) -> dict:
        http = client or api

        def final():
            body = http.get(f"/v1/analyses/{analysis_id}").json()
            return body if body["status"] in {"succeeded", "rejected", "failed", "canceled"} else None

        return wait_for(final, timeout, message=f"analysis {analysis_id} to finish")

    return _wait
