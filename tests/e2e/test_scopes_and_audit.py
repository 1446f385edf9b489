"""Issue 22 through the real API: a key does only what its scopes allow (403 naming the missing
one), and every operation on patient data leaves an audit row naming the key, never holding it."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from sqlalchemy import select, update

from shared.db import session_scope
from shared.tables import AuditEvent, Tenant
from shared.tenants import issue_key
from worker.pipeline.synthetic import encode_jpeg, make_lesion

IMAGE = encode_jpeg(make_lesion(seed=5, size=(96, 128)).image)


def _as(api_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _rows(context, tenant_id, **where) -> list[AuditEvent]:
    with context.session_factory() as session:
        query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.seq)
        for column, value in where.items():
            query = query.where(getattr(AuditEvent, column) == value)
        return list(session.execute(query).scalars())


def _submit(client: httpx.Client, **fields) -> httpx.Response:
    return client.post("/v1/analyses", files={"image": ("l.jpg", IMAGE, "image/jpeg")}, data=fields)


@pytest.fixture
def reader(api, api_url):
    """A key of the same tenant holding only `analyses:read`, made over the API by the admin key."""
    created = api.post("/v1/api-keys", json={"name": "viewer", "scopes": ["analyses:read"]})
    assert created.status_code == 201, created.text
    assert created.json()["scopes"] == ["analyses:read"]
    with _as(api_url, created.json()["key"]) as client:
        yield client, created.json()["id"]


def test_a_read_only_key_reads_but_cannot_submit_or_make_keys(api, reader):
    client, _ = reader
    submitted = _submit(api, external_id="mrn-scope-1")
    assert submitted.status_code == 202
    analysis_id = submitted.json()["id"]

    assert client.get(f"/v1/analyses/{analysis_id}").status_code == 200
    assert client.get("/v1/analyses").status_code == 200

    refused = _submit(client)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "'analyses:write'" in refused.json()["detail"]
    keys = client.post("/v1/api-keys", json={"name": "escalate"})
    assert keys.status_code == 403 and "'keys:manage'" in keys.json()["detail"]
    assert client.get("/v1/webhook-endpoints").status_code == 403
    assert client.post(f"/v1/analyses/{analysis_id}/cancel").status_code == 403


def test_a_key_cannot_grant_a_scope_it_does_not_hold(api, api_url):
    narrow = api.post("/v1/api-keys", json={"name": "key admin", "scopes": ["keys:manage", "analyses:read"]})
    assert narrow.status_code == 201
    with _as(api_url, narrow.json()["key"]) as client:
        wider = client.post("/v1/api-keys", json={"scopes": ["analyses:write"]})
        assert wider.status_code == 403 and "'analyses:write'" in wider.json()["detail"]
        same = client.post("/v1/api-keys", json={"label": "copy"})
        assert same.status_code == 201
        assert sorted(same.json()["scopes"]) == ["analyses:read", "keys:manage"]
    unknown = api.post("/v1/api-keys", json={"scopes": ["everything"]})
    assert unknown.status_code == 422
    listed = {k["id"]: k for k in api.get("/v1/api-keys").json()["data"]}
    assert listed[narrow.json()["id"]]["scopes"] == ["analyses:read", "keys:manage"] or sorted(
        listed[narrow.json()["id"]]["scopes"]) == ["analyses:read", "keys:manage"]


def test_the_last_key_that_can_manage_keys_cannot_be_revoked(api, api_url, tenant_key):
    reader = api.post("/v1/api-keys", json={"scopes": ["analyses:read"]}).json()
    (admin,) = [k for k in api.get("/v1/api-keys").json()["data"] if k["id"] != reader["id"]]
    refused = api.delete(f"/v1/api-keys/{admin['id']}")
    assert refused.status_code == 409 and "keys:manage" in refused.json()["detail"]


def test_reads_writes_and_refusals_leave_audit_rows_that_hold_no_key_or_patient_field(
    api, reader, context, tenant_key
):
    tenant_id, admin_key = tenant_key
    client, reader_id = reader
    submitted = _submit(api, external_id="mrn-audit-7731", age="61", site="lower extremity")
    assert submitted.status_code == 202, submitted.text
    analysis_id = submitted.json()["id"]
    read = client.get(f"/v1/analyses/{analysis_id}", headers={"User-Agent": "clinic-viewer/2.1"})
    assert read.status_code == 200
    missing = client.get(f"/v1/analyses/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert _submit(client).status_code == 403

    (submit,) = _rows(context, tenant_id, action="analysis.submit", outcome="success")
    assert submit.resource_id == analysis_id and submit.status_code == 202
    assert submit.actor.startswith("key:") and submit.actor != f"key:{reader_id}"
    (seen,) = _rows(context, tenant_id, action="analysis.read", resource_id=analysis_id)
    assert seen.actor == f"key:{reader_id}" and seen.outcome == "success"
    assert seen.request_id == read.headers["x-request-id"]
    assert seen.user_agent == "clinic-viewer/2.1" and seen.client_address
    (lost,) = _rows(context, tenant_id, action="analysis.read", outcome="not_found")
    assert lost.status_code == 404 and lost.actor == f"key:{reader_id}"
    (denied,) = _rows(context, tenant_id, action="analysis.submit", outcome="denied")
    assert denied.status_code == 403 and denied.actor == f"key:{reader_id}"

    everything = json.dumps([{c.name: str(getattr(r, c.name)) for c in AuditEvent.__table__.columns}
                             for r in _rows(context, tenant_id)])
    for secret in (admin_key, client.headers["authorization"].split()[1], "mrn-audit-7731"):
        assert secret not in everything
    seqs = [r.seq for r in _rows(context, tenant_id)]
    assert seqs == list(range(1, len(seqs) + 1)), "one gapless chain per tenant"


def test_a_disabled_tenant_s_keys_get_401_and_come_back_when_enabled(api, context, tenant_key, wait):
    tenant_id, _ = tenant_key
    assert api.get("/v1/analyses").status_code == 200

    def set_disabled(disabled: bool) -> None:
        with session_scope(context.session_factory) as session:
            session.execute(update(Tenant).where(Tenant.id == tenant_id)
                            .values(disabled_at=__import__("shared.clock").clock.utcnow() if disabled else None))

    set_disabled(True)
    try:
        refused = wait(lambda: (r := api.get("/v1/analyses")).status_code == 401 and r, timeout=15, interval=0.3,
                       message="the disabled tenant's key to be refused")
        assert "disabled" in refused.json()["detail"]
    finally:
        set_disabled(False)
    wait(lambda: api.get("/v1/analyses").status_code == 200, timeout=15, interval=0.3,
         message="the key to work again")


def test_a_key_made_by_tenants_create_holds_every_scope(context):
    with session_scope(context.session_factory) as session:
        tenant, key = issue_key(session, f"admin-{uuid.uuid4().hex[:8]}")
        from shared.tenants import authenticate

        grant = authenticate(session, key)
    assert grant is not None and grant.tenant_id == tenant.id
    from shared.scopes import ALL_SCOPES

    assert grant.scopes == {scope.value for scope in ALL_SCOPES}


def test_a_revoked_key_and_a_disabled_tenant_stop_at_once_not_after_the_key_cache(api, api_url, context, settings):
    """The API caches keys for AUTH_CACHE_SECONDS (5 s); a revocation is announced to every API
    process (shared.revocations), so the next request after it is refused."""
    import time

    from shared import revocations, tenant_data
    from shared.tables import Tenant as TenantRow

    assert settings.auth_cache_seconds >= 5
    created = api.post("/v1/api-keys", json={"name": "short-lived"}).json()
    with _as(api_url, created["key"]) as client:
        assert client.get("/v1/analyses").status_code == 200  # now cached
        assert api.delete(f"/v1/api-keys/{created['id']}").status_code == 200
        started = time.monotonic()
        while client.get("/v1/analyses").status_code != 401:
            assert time.monotonic() - started < 2.0, "the revoked key still works from the cache"
            time.sleep(0.05)

    with session_scope(context.session_factory) as session:
        tenant, key = issue_key(session, f"disable-{uuid.uuid4().hex[:8]}")
    with _as(api_url, key) as client:
        assert client.get("/v1/analyses").status_code == 200
        with session_scope(context.session_factory) as session:
            row = session.get(TenantRow, tenant.id)
            tenant_data.set_disabled(session, row, True, settings=settings)
        started = time.monotonic()
        while client.get("/v1/analyses").status_code != 401:
            assert time.monotonic() - started < 2.0, "the disabled tenant's key still works from the cache"
            time.sleep(0.05)
    assert revocations.parse(revocations.message(tenant_id=tenant.id)) == (tenant.id, None)
