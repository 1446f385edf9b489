"""Test fixtures on real services, and the fast tier.

The suite starts its own Postgres, Redis and S3 server from the pip packages once per
session (or uses DERMASENTINEL_TEST_DATABASE_URL / _BROKER_URL / _S3_* when set), builds a
fresh database by running the migrations, and uses buckets whose names carry a random
``dstest-`` prefix. Everything is started through ``devstack`` (the harness ``dermasentinel
up`` and the benchmarks use too), lazily: a session fixture starts its process only when a
test asks for it, so unit tests that need none start none.

Every fixture that starts a process (services, API, workers, beat, a browser, ``up``)
depends on ``starts_services``; each test whose fixtures reach it is marked ``services``
here, once, at collection. ``python -m pytest -m "not services"`` is the fast tier: a run
that selects no ``services`` test arms a guard that fails any test which starts a service
process anyway (docs/TESTING.md).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from devstack import Stack, StackEndpoints, child_env
from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
# Issue 25: `up` records its stack in the user config (XDG_CONFIG_HOME/dermasentinel/) and client
# commands read it: the suite, and every process it starts, uses a folder of its own instead.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="dermasentinel-test-config-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], True)
# Small networks and photos keep the suite fast; the minimum photo side drops to 32 px so the
# synthetic test images are analysed (the 256 px default is tested at the pipeline level).
TEST_SIZES = {"seg_size": 128, "cls_size": 128, "tta_views": 5, "min_image_side": 32}
SERVICES_MARK = "services"
# Programs that are services: a fast-tier test starting one of these is marked wrongly.
SERVICE_PROGRAMS = {"uvicorn", "celery", "redis-server", "postgres", "initdb", "pg_ctl", "weed", "chromium", "Orthanc",
                    "chromium-browser", "chrome", "headless_shell"}
SERVICE_SUBCOMMANDS = {"up", "api", "worker", "beat"}  # of `python -m cli.main`


# ---------------------------------------------------------------- the `services` marker


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "starts_services" in getattr(item, "fixturenames", ()):
            item.add_marker(SERVICES_MARK)


class _FastTierGuard:
    """Armed when no selected test is marked `services`: any service process started is an error."""

    def __init__(self) -> None:
        self.armed = False
        self.checked = 0
        self._original = subprocess.Popen.__init__

    def arm(self) -> None:
        """Check every subprocess.Popen of this process (devstack's too, and asyncio's)."""
        guard, original = self, self._original

        def popen_init(popen, *args, **kwargs):
            guard.check(args[0] if args else kwargs.get("args", ()))
            original(popen, *args, **kwargs)

        self.armed = True
        subprocess.Popen.__init__ = popen_init  # type: ignore[method-assign]

    def check(self, args) -> None:
        self.checked += 1
        argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        words = [os.path.basename(os.fsdecode(word)) for word in argv]
        if SERVICE_PROGRAMS & set(words) or ("cli.main" in words and SERVICE_SUBCOMMANDS & set(words)):
            raise RuntimeError(
                f"fast tier: this test started a service process ({' '.join(map(str, argv))[:200]}) "
                "but is not marked `services`; have the fixture that starts it depend on `starts_services` "
                "(tests/conftest.py)"
            )


_GUARD = _FastTierGuard()
_STARTED: list[str] = []  # what `starts_services` was asked for, in this session


def pytest_collection_finish(session):
    if session.items and not any(item.get_closest_marker(SERVICES_MARK) for item in session.items):
        _GUARD.arm()
    # One torch CPU thread in this process, as the training tests set it anyway (training's
    # `threads: 1`): on a busy 2-core machine two threads per operation spin against each
    # other, and a pipeline test that takes 10 s took 49 s. Processes the tests start keep
    # their own settings.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter):
    if _GUARD.armed:
        verdict = "a service fixture was instantiated" if _STARTED else "no service fixture was instantiated"
        terminalreporter.write_sep(
            "-", f"fast tier: no `services` test selected; {verdict}; {_GUARD.checked} subprocesses checked"
        )


@pytest.fixture(autouse=True)
def _log_ids_unbound():
    """Each test starts with no log ids bound in its thread. A worker task binds its job's ids
    for the rest of the task (``shared.logs.bind``) and Celery's signals clear them after it
    (worker/celery_app.py); a test that calls the task's function directly has no such signal,
    and its ids would be on every line of the tests after it."""
    from structlog.contextvars import clear_contextvars

    yield
    clear_contextvars()


@pytest.fixture(scope="session")
def starts_services(request):
    """Depended on by every fixture that starts a process; tests reaching it are marked `services`."""
    _STARTED.append(request.node.nodeid)
    if _GUARD.armed:
        pytest.fail("fast tier: a service fixture was requested by a test not marked `services`")


# ---------------------------------------------------------------- the stack


@pytest.fixture(scope="session")
def dev_stack(starts_services, tmp_path_factory):
    """The session's devstack.Stack: Postgres, Redis and S3 (embedded unless given by
    DERMASENTINEL_TEST_*), and the app processes the fixtures below start on it."""
    env = os.environ
    given = StackEndpoints(
        database_url=env.get("DERMASENTINEL_TEST_DATABASE_URL") or None,
        broker_url=env.get("DERMASENTINEL_TEST_BROKER_URL") or None,
        s3_endpoint=env.get("DERMASENTINEL_TEST_S3_ENDPOINT") or None,
        s3_access_key=env.get("DERMASENTINEL_TEST_S3_ACCESS_KEY") or None,
        s3_secret_key=env.get("DERMASENTINEL_TEST_S3_SECRET_KEY") or None,
    )
    # Not under pytest's tmp_path: a concurrent pytest run prunes old basetemp folders,
    # which would pull the data directory out from under a running Postgres. The app
    # processes log under tmp_path, kept after the run.
    stack_dir = Path(tempfile.mkdtemp(prefix="dermasentinel-test-stack-"))
    stack = Stack(stack_dir, given=given, log_dir=tmp_path_factory.mktemp("logs"))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(stack_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def services(dev_stack):
    """Connection settings for Postgres, Redis and S3: from env, else embedded."""
    endpoints = dev_stack.endpoints
    return {
        "database_url": endpoints.database_url,
        "broker_url": endpoints.broker_url,
        "s3_endpoint": endpoints.s3_endpoint,
        "s3_access_key": endpoints.s3_access_key,
        "s3_secret_key": endpoints.s3_secret_key,
    }


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
        # Every test's client comes from 127.0.0.1, and some send keys that are revoked or whose
        # tenant is gone on purpose: the per-address limit on unknown keys (issue 22; tested with
        # its own settings in tests/api/test_hostile_bodies.py) must not refuse the next test's
        # brand-new key.
        unknown_key_rate="1000/second",
        # Issue 26: the per-address limit before authentication likewise (tested with its own
        # settings in tests/api/test_ratelimit.py).
        client_address_rate="",
        webhook_retry_schedule="1,1,1,1",
        webhook_dispatch_interval_seconds=0.5,
        sweep_interval_seconds=1.0,
        stuck_after_seconds=20,
        # Issue 24: the monitoring tests run the drift check themselves; beat's would race them.
        drift_check_seconds=86400,
        # Issue 25: live progress streams send a heartbeat every second, so a test sees one soon.
        sse_heartbeat_seconds=1.0,
        **TEST_SIZES,
    )


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
def api_url(dev_stack, settings, context):
    """A real uvicorn API process."""
    api = dev_stack.api(child_env(settings))
    yield api.url
    api.stop()


@pytest.fixture(scope="session")
def worker(dev_stack, settings, context, api_url):
    """A real Celery worker process serving every queue, running the real pipeline."""
    process = dev_stack.worker(child_env(settings, api_url=api_url), role="all", concurrency=2, name="worker")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def beat(dev_stack, settings, context, api_url):
    """The real scheduler (sweeper, webhook retries)."""
    process = dev_stack.beat(child_env(settings, api_url=api_url))
    yield process
    process.stop()


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


@contextmanager
def unread_broker(settings: Settings, db: int, **update):
    """``settings`` on a Redis database no worker reads (``update`` applied too), emptied before
    and after, and a client on it: what a test publishes stays there to be counted."""
    from shared.jobs import broker_redis

    quiet = settings.model_copy(update={"broker_url": settings.broker_url.rsplit("/", 1)[0] + f"/{db}", **update})
    client = broker_redis(quiet)
    client.flushdb()
    try:
        yield quiet, client
    finally:
        client.flushdb()
        client.close()


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


@pytest.fixture
def spans():
    """The spans of ``shared.tracing``, to an in-memory exporter (the process-wide provider
    untouched); tracing is on while the test runs."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)
    provider.shutdown()
