"""GET /v1/audit-events against the real API (issue 22): a tenant reads its own trail, newest
first, filtered and paged by cursor; the reads themselves are recorded; a key without
`audit:read` is refused (and that is recorded too); another tenant's rows never show."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import select

from shared import audit
from shared.db import session_scope
from shared.scopes import Scope
from shared.tables import ApiKey
from shared.tenants import create_key, issue_key


def _key_id(context, tenant_id: uuid.UUID) -> uuid.UUID:
    with context.session_factory() as session:
        return session.execute(select(ApiKey.id).where(ApiKey.tenant_id == tenant_id)).scalars().one()


def _list(client: httpx.Client, **params) -> dict:
    response = client.get("/v1/audit-events", params=params)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def other(api_url, context):
    """Another tenant and a client authenticated as it."""
    with session_scope(context.session_factory) as session:
        tenant, key = issue_key(session, f"test-{uuid.uuid4().hex[:10]}")
        tenant_id = tenant.id
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        yield tenant_id, client


def test_the_listing_shows_its_own_earlier_reads(api, context, tenant_key):
    tenant_id = tenant_key[0]
    first = api.get("/v1/audit-events", headers={"X-Request-ID": "audit-test-0001", "User-Agent": "ehr-bridge/2"})
    assert first.status_code == 200 and first.json() == {"data": [], "next_cursor": None}
    rows = _list(api)["data"]
    assert len(rows) == 1
    row = rows[0]
    assert row == {
        "tenant_id": str(tenant_id), "seq": 1, "occurred_at": row["occurred_at"],
        "actor": f"key:{_key_id(context, tenant_id)}",
        "action": "audit.read", "resource_type": "audit_event", "resource_id": None, "outcome": "success",
        "status_code": 200, "request_id": "audit-test-0001", "client_address": row["client_address"],
        "user_agent": "ehr-bridge/2", "detail": {"rows": 0}, "prev_hash": audit.GENESIS, "hash": row["hash"],
    }
    assert row["occurred_at"].endswith("Z") and row["client_address"]
    with context.session_factory() as session:
        report = audit.verify(session, tenant_id, secret_keys=context.settings.secret_keys)
    assert report.ok and report.chains[0].rows == 2, "the second read is on the chain too"


def test_filters_and_cursor_pages_newest_first(api, context, tenant_key):
    tenant_id = tenant_key[0]
    for _ in range(5):
        _list(api, action="analysis.read")  # each read is recorded, with the filter it used
    seen, cursor, pages = [], None, 0
    while True:
        page = _list(api, limit=2, action="audit.read", **({"cursor": cursor} if cursor else {}))
        seen += [row["seq"] for row in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1] and pages == 3, "pages go back from the seq they started at"
    assert _list(api, action="analysis.read")["data"] == []
    assert len(_list(api, actor=f"key:{_key_id(context, tenant_id)}", limit=200)["data"]) >= 9
    assert _list(api, actor="key:someone-else")["data"] == []
    assert _list(api, resource_type="analysis")["data"] == []
    assert _list(api, outcome="denied")["data"] == []
    assert len(_list(api, outcome="success", resource_type="audit_event", limit=3)["data"]) == 3
    assert _list(api, since="2999-01-01T00:00:00Z")["data"] == []
    assert _list(api, until="2000-01-01T00:00:00")["data"] == []
    assert _list(api, since="2000-01-01T00:00:00+00:00", limit=1)["data"][0]["detail"]["filters"] == {
        "until": "2000-01-01T00:00:00"}, "the newest row is the read before this one"
    assert _list(api, limit=1)["data"][0]["detail"] == {"rows": 1, "filters": {"since": "2000-01-01T00:00:00+00:00"}}
    first = _list(api, limit=200)["data"][-1]
    assert first["seq"] == 1 and first["detail"] == {"rows": 0, "filters": {"action": "analysis.read"}}
    bad = api.get("/v1/audit-events", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and "cursor" in bad.json()["detail"]
    assert api.get("/v1/audit-events", params={"outcome": "maybe"}).status_code == 422


def test_a_key_without_audit_read_is_refused_and_the_refusal_is_recorded(api, api_url, context, tenant_key):
    tenant_id = tenant_key[0]
    with session_scope(context.session_factory) as session:
        info, narrow = create_key(session, tenant_id, "reader", quota=20, scopes=[Scope.analyses_read])
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {narrow}"}, timeout=60) as client:
        refused = client.get("/v1/audit-events")
    assert refused.status_code == 403 and "audit:read" in refused.json()["detail"]
    denied = _list(api, outcome="denied")["data"]
    assert [(row["actor"], row["action"], row["status_code"]) for row in denied] == [
        (f"key:{info.id}", "audit.read", 403),
    ]


def test_another_tenants_rows_never_show(api, other, context, tenant_key):
    tenant_id = tenant_key[0]
    other_id, other_client = other
    for _ in range(3):
        assert other_client.get("/v1/audit-events").status_code == 200
    _list(api)
    mine = _list(api, limit=200)["data"]
    assert mine and {row["tenant_id"] for row in mine} == {str(tenant_id)}
    assert _list(api, actor=f"key:{_key_id(context, other_id)}")["data"] == []
    theirs = _list(other_client, limit=200)["data"]
    assert [row["seq"] for row in theirs] == [3, 2, 1] and {row["tenant_id"] for row in theirs} == {str(other_id)}
    # Another tenant's cursor is only a seq: it pages this tenant's own chain, nothing else.
    page = _list(api, limit=1)
    assert {row["tenant_id"] for row in _list(other_client, cursor=page["next_cursor"])["data"]} == {str(other_id)}
