"""The edge of every request: a true bug is a problem+json 500 with an error id that is also
the request id, and HSTS is sent only over https."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from shared.logs import flush as flush_logs

BUG = "a bug"


def _app(settings, **update):
    app = create_app(settings.model_copy(update=update))

    def boom():
        raise RuntimeError(BUG)

    app.add_api_route("/v1/boom", boom)
    return app


def test_a_bug_is_a_problem_500_with_an_error_id(settings, caplog, capsys):
    client = TestClient(_app(settings), raise_server_exceptions=False)
    response = client.get("/v1/boom", headers={"X-Request-ID": "trace-abc-123"})
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["error_id"] == response.headers["x-request-id"] == "trace-abc-123"
    assert "trace-abc-123" in body["detail"] and "a bug" not in body["detail"]
    assert response.headers["cache-control"] == "no-store"
    # The same id is in the log, with the traceback (create_app's configure_logging writes
    # to stderr in place of the capturing handler, from its writer thread: flushed first).
    # The exception's message is not: it can quote SQL parameters, form values or the key.
    flush_logs()
    logged = caplog.text + capsys.readouterr().err
    assert "trace-abc-123" in logged and "RuntimeError" in logged
    assert "a bug" not in logged


def test_hsts_only_over_https(settings):
    app = _app(settings)
    assert "strict-transport-security" not in TestClient(app).get("/healthz").headers
    secure = TestClient(app, base_url="https://derma.example.org").get("/healthz")
    assert secure.headers["strict-transport-security"].startswith("max-age=")
    behind_proxy = TestClient(_app(settings, public_url="https://derma.example.org")).get("/healthz")
    assert "strict-transport-security" in behind_proxy.headers


def test_a_malformed_request_id_is_replaced(settings):
    response = TestClient(_app(settings)).get("/healthz", headers={"X-Request-ID": "bad id\twith junk"})
    assert response.headers["x-request-id"] != "bad id\twith junk"
    assert len(response.headers["x-request-id"]) == 32


def test_requests_past_the_edge_are_bounded_and_the_rest_wait_then_get_503(settings):
    """With every place taken, another key's request waits, then gets 503 + Retry-After
    (never a 500, never an unbounded queue); requests without a key are not held."""
    import asyncio

    import httpx

    app = create_app(settings.model_copy(update={"api_concurrency": 1, "api_db_wait_seconds": 0.3}))
    release = asyncio.Event()

    async def slow():
        await release.wait()
        return {"ok": True}

    app.add_api_route("/v1/slow", slow)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            holding = asyncio.create_task(client.get("/v1/slow", headers={"Authorization": "Bearer dsk_crowd"}))
            await asyncio.sleep(0.05)
            refused = await asyncio.wait_for(
                client.get("/v1/slow", headers={"Authorization": "Bearer dsk_clinic"}), timeout=5
            )
            health = await client.get("/healthz")
            waiting = asyncio.create_task(client.get("/v1/slow", headers={"Authorization": "Bearer dsk_clinic"}))
            await asyncio.sleep(0.05)
            release.set()
            return refused, health, await holding, await waiting

    refused, health, held, waited = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert health.status_code == 200
    assert held.status_code == 200 and waited.status_code == 200


def test_a_transaction_postgres_ended_for_a_concurrent_one_is_a_503_that_says_so(settings):
    from psycopg import errors as pg_errors
    from sqlalchemy.exc import OperationalError

    app = _app(settings)

    def deadlocked():
        raise OperationalError("DELETE FROM webhook_endpoints …", {}, pg_errors.DeadlockDetected("deadlock detected"))

    app.add_api_route("/v1/deadlocked", deadlocked)
    response = TestClient(app, raise_server_exceptions=False).get("/v1/deadlocked")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["detail"] == (
        "the database gave way to a concurrent change of the same records; nothing was saved, retry in a few seconds"
    )
