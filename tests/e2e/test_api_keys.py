"""API keys through the admin path (a tenant manages its own keys) and the CLI."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from shared.db import session_scope
from shared.tables import ApiKey
from shared.tenants import authenticate, issue_key

ROOT = Path(__file__).resolve().parents[2]


def _as(api_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_create_list_and_revoke_a_key_which_then_stops_working_within_seconds(api, api_url, wait):
    created = api.post("/v1/api-keys", json={"label": "EHR bridge"})
    assert created.status_code == 201
    body = created.json()
    new_key = body["key"]
    assert new_key.startswith("dsk_") and body["prefix"] == new_key[:10] and body["active"]

    with _as(api_url, new_key) as bridge:
        assert bridge.get("/v1/webhook-endpoints").status_code == 200
        listed = {k["id"]: k for k in api.get("/v1/api-keys").json()["data"]}
        assert listed[body["id"]]["label"] == "EHR bridge"
        assert listed[body["id"]]["last_used_at"] is not None
        assert all("key" not in k and "key_hash" not in k for k in listed.values())

        revoked = api.delete(f"/v1/api-keys/{body['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] and not revoked.json()["active"]
        wait(lambda: bridge.get("/v1/webhook-endpoints").status_code == 401, timeout=15,
             interval=0.5, message="the revoked key to be refused")
    assert api.get("/v1/api-keys").status_code == 200, "the tenant's other key still works"


def test_the_last_active_key_cannot_be_revoked_over_http(api):
    (only,) = [k for k in api.get("/v1/api-keys").json()["data"] if k["active"]]
    refused = api.delete(f"/v1/api-keys/{only['id']}")
    assert refused.status_code == 409
    assert "last active" in refused.json()["detail"]


def test_keys_are_tenant_scoped(api, api_url, context):
    with session_scope(context.session_factory) as session:
        _, other_key = issue_key(session, f"other-{uuid.uuid4().hex[:8]}")
    mine = api.get("/v1/api-keys").json()["data"][0]
    with _as(api_url, other_key) as other:
        assert other.delete(f"/v1/api-keys/{mine['id']}").status_code == 404
        assert mine["id"] not in {k["id"] for k in other.get("/v1/api-keys").json()["data"]}


def test_last_used_is_written_at_most_once_a_minute(context, tenant_key):
    tenant_id, key = tenant_key
    with session_scope(context.session_factory) as session:
        assert authenticate(session, key).tenant_id == tenant_id
    with context.session_factory() as session:
        first = session.query(ApiKey).filter(ApiKey.tenant_id == tenant_id).one().last_used_at
    with session_scope(context.session_factory) as session:
        assert authenticate(session, key).tenant_id == tenant_id
        assert authenticate(session, "dsk_" + "x" * 43) is None
        assert authenticate(session, "not-a-key") is None
    with context.session_factory() as session:
        assert session.query(ApiKey).filter(ApiKey.tenant_id == tenant_id).one().last_used_at == first
    assert first is not None


def _cli(settings, *args) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}, **settings.as_env()}
    return subprocess.run([sys.executable, "-m", "cli.main", "tenants", "keys", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_create_list_revoke(settings, api_url, context, wait):
    wait_for = wait
    name = f"cli-{uuid.uuid4().hex[:8]}"
    with session_scope(context.session_factory) as session:
        issue_key(session, name)
    created = _cli(settings, "create", name, "--label", "night batch")
    assert created.returncode == 0, created.stderr
    key = created.stdout.split("API key (shown once): ")[1].strip()
    key_id = created.stdout.split()[1]

    listed = _cli(settings, "list", name)
    assert listed.returncode == 0 and key_id in listed.stdout and "night batch" in listed.stdout
    assert key not in listed.stdout

    with _as(api_url, key) as client:
        assert client.get("/v1/api-keys").status_code == 200
        revoked = _cli(settings, "revoke", name, key_id)
        assert revoked.returncode == 0, revoked.stderr
        wait_for(lambda: client.get("/v1/api-keys").status_code == 401, timeout=15, interval=0.5,
                 message="the revoked key to be refused")

    (remaining,) = [line for line in _cli(settings, "list", name).stdout.splitlines() if "active" in line]
    last_id = remaining.split()[0]
    refused = _cli(settings, "revoke", name, last_id)
    assert refused.returncode == 1 and "--allow-last" in refused.stderr
    assert _cli(settings, "revoke", name, last_id, "--allow-last").returncode == 0
    assert "revoked" in _cli(settings, "list", name).stdout
    missing = _cli(settings, "list", "nobody-" + uuid.uuid4().hex)
    assert missing.returncode == 1 and "no tenant named" in missing.stderr
