"""Readiness reports each dependency on its own, says which one is down, answers within
its own short deadline while a dependency stalls, and never shows exception text."""

import asyncio
import socket
import time
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from api.routes.health import PROBE_TIMEOUT, check_readiness, readiness
from devstack import free_port
from shared.context import AppContext
from shared.jobs import broker_redis, forget_gpu_worker, report_gpu_worker


def test_readyz_is_ready_with_every_dependency_up_and_a_gpu_worker_consuming(api_url, worker, wait):
    body = wait(lambda: (b := httpx.get(f"{api_url}/readyz").json())["status"] == "ready" and b, timeout=120,
                message="readiness with the worker up")
    assert set(body["checks"]) == {"database", "broker", "object_store", "gpu_workers", "storage_space"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["gpu_workers"]["ready"] >= 1
    assert httpx.get(f"{api_url}/healthz").json() == {"status": "ok"}


def _closed_port() -> int:
    return free_port()  # free now, so nothing answers there


def _quiet_redis_db(settings, db: int = 8):
    """The session's Redis, but a database no worker of this session reports to."""
    parts = urlsplit(settings.broker_url)
    return settings.model_copy(update={"broker_url": urlunsplit(parts._replace(path=f"/{db}"))})


DOWN = {
    "object_store": lambda port: {"s3_endpoint": f"127.0.0.1:{port}"},
    "broker": lambda port: {"broker_url": f"redis://127.0.0.1:{port}/0"},
}


@pytest.mark.parametrize("dependency", sorted(DOWN))
def test_readiness_names_the_dependency_that_is_down(settings, dependency):
    port = _closed_port()
    context = AppContext(settings.model_copy(update=DOWN[dependency](port)))
    try:
        body = readiness(context)
    finally:
        context.close()
    assert body["status"] == "unavailable"
    check = body["checks"][dependency]
    assert check["ok"] is False
    assert check["error"].startswith("unreachable (")
    assert str(port) not in check["error"] and "127.0.0.1" not in check["error"], "no exception text"
    assert body["checks"]["database"]["ok"] is True


def test_readiness_says_not_ready_while_no_gpu_worker_consumes(settings):
    quiet = _quiet_redis_db(settings)
    context = AppContext(quiet)
    client = broker_redis(quiet)
    try:
        client.delete("dermasentinel:gpu-workers:ready", "dermasentinel:gpu-workers:broken")
        body = readiness(context)
        assert body["status"] == "unavailable"
        assert body["checks"]["gpu_workers"] == {"ok": False, "error": "no GPU worker is consuming analysis jobs"}
        # An API pod's probe may treat the GPU check as optional: reported, but still ready.
        lenient = asyncio.run(check_readiness(context, frozenset({"gpu_workers"})))
        assert lenient["status"] == "ready" and lenient["checks"]["gpu_workers"]["ok"] is False

        report_gpu_worker(client, "gpu@test:1", ready=False)
        body = readiness(context)
        assert body["checks"]["gpu_workers"]["ok"] is False
        assert "1 cannot load their models" in body["checks"]["gpu_workers"]["error"]

        report_gpu_worker(client, "gpu@test:1", ready=True)
        body = readiness(context)
        assert body["status"] == "ready", body
        assert body["checks"]["gpu_workers"]["ready"] == 1
    finally:
        forget_gpu_worker(client, "gpu@test:1")
        client.close()
        context.close()


def test_readiness_answers_within_its_deadline_while_the_object_store_stalls(settings):
    # A store that accepts connections and then says nothing: the worst kind of outage.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        context = AppContext(settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{port}"}))
        started = time.monotonic()
        try:
            body = readiness(context)
        finally:
            context.close()
        elapsed = time.monotonic() - started
    assert body["checks"]["object_store"] == {"ok": False, "error": f"did not answer within {PROBE_TIMEOUT:g} s"}
    assert body["status"] == "unavailable"
    assert elapsed < PROBE_TIMEOUT + 3


def test_metrics_are_not_served_on_the_public_port_by_default(api_url):
    # Issue 22: on METRICS_PORT (tests/e2e/test_metrics.py scrapes it) or with METRICS_TOKEN only.
    assert httpx.get(f"{api_url}/metrics").status_code == 404


def test_upload_while_the_object_store_is_down_is_503_and_saves_nothing(settings, tenant_key):
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from api.main import create_app
    from shared.tables import Analysis
    from worker.pipeline.synthetic import encode_jpeg, make_lesion

    down = settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{_closed_port()}"})
    app = create_app(down)
    context = AppContext(down)
    app.state.context = context  # no lifespan: it would refuse to start without S3
    try:
        client = TestClient(app)
        response = client.post(
            "/v1/analyses",
            headers={"Authorization": f"Bearer {tenant_key[1]}"},
            files={"image": ("l.jpg", encode_jpeg(make_lesion(seed=1, size=(96, 128)).image), "image/jpeg")},
        )
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert "object store" in response.json()["detail"]
        with context.session_factory() as session:
            count = session.execute(
                select(func.count()).select_from(Analysis).where(Analysis.tenant_id == tenant_key[0])
            ).scalar_one()
        assert count == 0
    finally:
        context.close()
