"""Per-request webhooks (``webhook_url`` + ``webhook_events_filter`` on POST /v1/analyses)
through the real API, worker and beat, to real loopback receivers: signed like a registered
endpoint's, only the analysis' own events, the filter honoured, the same address rules."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook, WebhookVerificationError

from api.services.webhook_endpoints import ANALYSIS_EVENT_TYPES
from devstack import Receiver
from shared.db import session_scope
from shared.tables import WebhookEndpoint
from tests.e2e.test_webhooks import UNSAFE_URLS, register
from worker.pipeline.synthetic import encode_jpeg, make_lesion

FINAL = {"succeeded", "rejected", "failed", "canceled"}


@pytest.fixture
def receiver():
    receivers: list[Receiver] = []

    def make(script=(200,)):
        receivers.append(Receiver(*script, per_message=True))
        return receivers[-1]

    yield make
    for r in receivers:
        r.close()


def lesion(seed: int) -> bytes:
    # The images tests/e2e/test_webhooks.py sees succeed.
    return encode_jpeg(make_lesion(seed=seed, size=(240, 320), radius_frac=0.2).image)


def submit(api, seed: int, headers=None, **fields):
    data = {k: v for k, v in fields.items() if v is not None}
    return api.post("/v1/analyses", files={"image": ("l.jpg", lesion(seed), "image/jpeg")}, data=data,
                    headers=headers or {})


def events_for(hook: Receiver, analysis_id: str) -> list[dict]:
    return [r for r in hook.requests if json.loads(r.body)["data"].get("id") == analysis_id]


def types_of(requests: list[dict]) -> list[str]:
    return sorted(json.loads(r.body)["type"] for r in requests)


def test_each_webhook_gets_its_own_analysis_signed_and_filtered(api, worker, beat, receiver, wait):
    tenant_wide, hook_a, hook_b = receiver(), receiver(), receiver()
    registered = register(api, tenant_wide.url)
    key_a = {"Idempotency-Key": f"req-a-{uuid.uuid4().hex[:8]}"}
    fields_a = {"external_id": "req-a", "webhook_url": hook_a.url,
                "webhook_events_filter": "analysis.succeeded,analysis.rejected,analysis.failed"}
    answer_a = submit(api, 11, headers=key_a, **fields_a)
    answer_b = submit(api, 12, external_id="req-b", webhook_url=hook_b.url)
    assert answer_a.status_code == answer_b.status_code == 202, answer_a.text + answer_b.text
    a, b = answer_a.json(), answer_b.json()
    assert a["webhook"]["url"] == hook_a.url and a["webhook"]["secret"].startswith("whsec_")
    assert a["webhook"]["events"] == ["analysis.failed", "analysis.rejected", "analysis.succeeded"]
    # Issue 25: no filter is every event of the analysis, listed.
    assert b["webhook"]["events"] == list(ANALYSIS_EVENT_TYPES) and b["webhook"]["secret"] != a["webhook"]["secret"]

    # Every event of both analyses has reached the tenant-wide endpoint (report_ready is last).
    wait(lambda: {a["id"], b["id"]} <= {json.loads(r.body)["data"]["id"]
                                         for r in tenant_wide.of_type("analysis.report_ready")},
         timeout=240, message="both reports' events at the tenant-wide endpoint")
    wait(lambda: len(hook_b.requests) >= 2 and hook_a.requests, timeout=60, message="the per-request webhooks")
    final_a = api.get(f"/v1/analyses/{a['id']}").json()["status"]
    assert final_a in FINAL - {"canceled"}

    # A: exactly its one final event (the filter drops report_ready), nothing of B's.
    assert events_for(hook_a, a["id"]) == hook_a.requests
    assert types_of(hook_a.requests) == [f"analysis.{final_a}"]
    # B: everything of its own (no filter), nothing of A's.
    assert events_for(hook_b, b["id"]) == hook_b.requests
    final_b = api.get(f"/v1/analyses/{b['id']}").json()["status"]
    assert types_of(hook_b.requests) == sorted(["analysis.report_ready", f"analysis.{final_b}"])
    # Signed with the secret from the submission's answer, exactly as a registered endpoint.
    for hook, secret in ((hook_a, a["webhook"]["secret"]), (hook_b, b["webhook"]["secret"])):
        for request in hook.requests:
            Webhook(secret).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(registered["secret"]).verify(hook_a.requests[0].body, hook_a.requests[0].headers)
    # The tenant-wide endpoint still gets everything, both analyses.
    assert {json.loads(r.body)["data"]["id"] for r in tenant_wide.requests} == {a["id"], b["id"]}

    # The per-request endpoint has a delivery log; it is not in the tenant's endpoint list.
    endpoint = api.get(f"/v1/webhook-endpoints/{a['webhook']['id']}").json()
    assert endpoint["analysis_id"] == a["id"] and endpoint["url"] == hook_a.url
    log = wait(lambda: [d for d in api.get(f"/v1/webhook-endpoints/{a['webhook']['id']}/deliveries").json()["data"]
                        if d["status"] == "delivered"], timeout=30, message="the delivery log")
    assert len(log) == 1
    listed = [e["id"] for e in api.get("/v1/webhook-endpoints").json()["data"]]
    assert listed == [registered["id"]]

    # A replay with Prefer: wait answers the final analysis, with the same webhook.
    replay = submit(api, 11, headers={**key_a, "Prefer": "wait=5"}, **fields_a)
    assert replay.status_code == 200 and replay.json()["status"] == final_a
    assert replay.json()["webhook"] == a["webhook"]
    assert len(hook_a.requests) == 1, "a replay sends nothing again"


def test_idempotent_replay_reuses_the_webhook_and_its_secret(api, receiver, context):
    hook = receiver()
    key = {"Idempotency-Key": f"visit-{uuid.uuid4().hex[:8]}"}
    first = submit(api, 21, headers=key, webhook_url=hook.url, webhook_events_filter="analysis.succeeded")
    again = submit(api, 21, headers=key, webhook_url=hook.url, webhook_events_filter="analysis.succeeded")
    assert first.status_code == again.status_code == 202, first.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["webhook"] == first.json()["webhook"], "the same endpoint, the same secret"
    with session_scope(context.session_factory) as session:
        count = session.execute(
            select(func.count()).select_from(WebhookEndpoint)
            .where(WebhookEndpoint.analysis_id == uuid.UUID(first.json()["id"]))
        ).scalar_one()
    assert count == 1, "a replay creates no second endpoint"

    other = receiver()
    conflict = submit(api, 21, headers=key, webhook_url=other.url, webhook_events_filter="analysis.succeeded")
    assert conflict.status_code == 409
    assert conflict.headers["content-type"].startswith("application/problem+json")
    plain = submit(api, 22)
    assert plain.status_code == 202 and "webhook" not in plain.json()


@pytest.mark.parametrize("url", UNSAFE_URLS)
def test_unsafe_urls_are_refused_like_registered_endpoints(api, url):
    as_endpoint = api.post("/v1/webhook-endpoints", json={"url": url})
    per_request = submit(api, 23, webhook_url=url)
    assert per_request.status_code == as_endpoint.status_code == 422, per_request.text
    assert per_request.headers["content-type"].startswith("application/problem+json")
    assert "webhook" in per_request.json()["detail"]
    # The JSON form (a direct upload) is checked the same way, before the upload is looked up.
    by_upload = api.post("/v1/analyses", json={"upload_id": str(uuid.uuid4()), "webhook_url": url})
    assert by_upload.status_code == 422
    assert api.get("/v1/analyses").json()["data"] == [], "nothing was created"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"webhook_events_filter": "batch.completed"}, "webhook_events_filter"),
        ({"webhook_events_filter": "analysis.succeeded,analysis.exploded"}, "webhook_events_filter"),
        ({"webhook_events_filter": "[1, 2"}, "webhook_events_filter"),
        ({"webhook_url": "not a url"}, "webhook_url"),
    ],
)
def test_bad_webhook_fields_are_422_with_the_field(api, receiver, fields, field):
    values = {"webhook_url": receiver().url, **fields}
    response = submit(api, 24, **values)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"].split(".")[0] for e in response.json()["errors"]] == [field]
    assert api.get("/v1/analyses").json()["data"] == []


def test_a_filter_without_a_url_is_refused(api):
    response = submit(api, 25, webhook_events_filter="analysis.succeeded")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "webhook_events_filter"
