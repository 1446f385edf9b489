"""Issue 24 through the real API and the real worker: GET /v1/monitoring answers the tenant's own
numbers (never another tenant's; `models:read`; audited), and with DRIFT_ACTION=review_all a
drift puts the tenant in safety mode, so the next result the worker finalizes is
`clinician_review` with the reason `drift`, until `dermasentinel monitor clear` (two images); the
`model.drift_detected` event reaches the tenant's webhook, signed, once."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select
from standardwebhooks import Webhook

from cli.main import cli
from devstack import Receiver
from shared import drift
from shared.config import get_settings
from shared.context import AppContext
from shared.db import session_scope
from shared.scopes import Scope
from shared.tables import AuditEvent, Tenant
from shared.tenants import issue_key
from tests import drift_streams as streams
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def _client(api_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_monitoring_answers_the_tenants_own_numbers(api, api_url, context, tenant_key):
    tenant_id, _ = tenant_key
    version = streams.new_version()
    streams.record(context, version, streams.reference())
    streams.insert(context, tenant_id, version, streams.stable_stream(seed=31, count=30) + [streams.Item("failed")])

    answer = api.get("/v1/monitoring")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    [model] = [m for m in body["models"] if m["model_version"] == version]
    assert model["window"]["results"] == 31 and model["window"]["failed"] == 1
    assert model["probability"]["count"] == 30 and model["probability"]["reference"]["source"] == "evaluation"
    assert model["probability"]["status"] == "insufficient_data"
    assert body["thresholds"]["psi"] == 0.25 and body["safety_mode"]["active"] is False
    with context.session_factory() as session:
        [row] = session.execute(select(AuditEvent).where(
            AuditEvent.tenant_id == tenant_id, AuditEvent.action == "monitoring.read")).scalars()
    assert row.outcome == "success" and row.detail == {"models": len(body["models"])}

    with session_scope(context.session_factory) as session:
        _, other_key = issue_key(session, f"other-{uuid.uuid4().hex[:8]}")
        _, narrow_key = issue_key(session, f"narrow-{uuid.uuid4().hex[:8]}", scopes=[Scope.analyses_read])
    with _client(api_url, other_key) as other:
        theirs = other.get("/v1/monitoring")
    assert theirs.status_code == 200 and version not in {m["model_version"] for m in theirs.json()["models"]}
    with _client(api_url, narrow_key) as narrow:
        refused = narrow.get("/v1/monitoring")
    assert refused.status_code == 403 and "models:read" in refused.json()["detail"]


@pytest.fixture
def run_cli(settings, monkeypatch):
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(cli, list(args))
    get_settings.cache_clear()


def _submit(api, wait_final, seed: int) -> dict:
    image = encode_jpeg(make_lesion(seed=seed, size=(240, 320), radius_frac=0.22).image)
    created = api.post("/v1/analyses", files={"image": ("lesion.jpg", image, "image/jpeg")},
                       data={"age": "54", "sex": "female", "site": "torso"})
    assert created.status_code == 202, created.text
    return wait_final(created.json()["id"])


def test_review_all_reviews_every_new_result_until_cleared(api, worker, wait, wait_final, context, tenant_key,
                                                         run_cli):
    tenant_id, _ = tenant_key
    version = streams.new_version()
    streams.record(context, version, streams.reference())
    streams.insert(context, tenant_id, version, streams.shifted_stream(seed=32, count=200))
    with Receiver(200) as hook:
        endpoint = api.post("/v1/webhook-endpoints", json={"url": hook.url, "events": ["model.drift_detected"]})
        assert endpoint.status_code == 201, endpoint.text
        review_all = AppContext(context.settings.replace(drift_action="review_all"))
        try:
            assert len(drift.check_drift(review_all, tenant_ids=[tenant_id]).opened) == 1
            assert drift.check_drift(review_all, tenant_ids=[tenant_id]).opened == []
        finally:
            review_all.close()
        # The event reaches the tenant's webhook, signed, once.
        [sent] = wait(lambda: hook.of_type("model.drift_detected"), timeout=60, message="the drift event")
        payload = Webhook(endpoint.json()["secret"]).verify(sent.body, sent.headers)
        assert payload["data"]["model_version"] == version and payload["data"]["safety_mode"] is True
        assert "skin_group_psi" in payload["data"]["measures"]["exceeded"]
    assert api.get("/v1/monitoring").json()["safety_mode"]["active"] is True

    during = _submit(api, wait_final, seed=41)
    assert during["status"] == "succeeded", during
    assert during["result"]["disposition"] == "clinician_review"
    assert "drift" in during["result"]["disposition_reasons"]
    assert during["result"]["safety_netting"] is None

    with context.session_factory() as session:
        name = session.get(Tenant, tenant_id).name
    cleared = run_cli("monitor", "clear", "--tenant", name)
    assert cleared.exit_code == 0, cleared.output
    assert f"cleared drift of {name}, model {version} (safety mode ended)" in cleared.output
    assert api.get("/v1/monitoring").json()["safety_mode"]["active"] is False
    time.sleep(context.settings.safety_mode_cache_seconds + 0.5)  # the worker's cached flag expires

    after = _submit(api, wait_final, seed=42)
    assert after["status"] == "succeeded", after
    assert "drift" not in after["result"]["disposition_reasons"]
