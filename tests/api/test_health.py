"""Readiness reports each dependency on its own, and says which one is down."""

import httpx
import pytest

from api.routes.health import readiness
from cli.processes import free_port
from shared.context import AppContext


def test_readyz_is_ready_with_every_dependency_up(api_url):
    body = httpx.get(f"{api_url}/readyz").json()
    assert body["status"] == "ready"
    assert all(check["ok"] for check in body["checks"].values())
    assert httpx.get(f"{api_url}/healthz").json() == {"status": "ok"}


def _closed_port() -> int:
    return free_port()  # free now, so nothing answers there


DOWN = {
    "object_store": lambda port: {"s3_endpoint": f"127.0.0.1:{port}"},
    "broker": lambda port: {"broker_url": f"redis://127.0.0.1:{port}/0"},
}


@pytest.mark.parametrize("dependency", sorted(DOWN))
def test_readiness_names_the_dependency_that_is_down(settings, dependency):
    context = AppContext(settings.model_copy(update=DOWN[dependency](_closed_port())))
    try:
        body = readiness(context)
    finally:
        context.close()
    assert body["status"] == "unavailable"
    assert body["checks"][dependency]["ok"] is False
    assert "error" in body["checks"][dependency]
    assert all(check["ok"] for name, check in body["checks"].items() if name != dependency)


def test_metrics_are_prometheus_text(api_url):
    httpx.get(f"{api_url}/healthz")
    text = httpx.get(f"{api_url}/metrics").text
    assert "dermasentinel_http_requests_total" in text


def test_upload_while_the_object_store_is_down_is_503_and_saves_nothing(settings, tenant_key):
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from api.main import create_app
    from shared.models import Analysis
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
