"""api.services.keys: a tenant's own API keys, shown once, revocable, never the last one."""

from __future__ import annotations

import uuid

import pytest

from api.problems import Conflict, NotFound
from api.services import keys
from shared.tenants import authenticate


def test_a_created_key_lets_its_tenant_in_and_is_listed_by_prefix_only(context, unit, tenant):
    with unit() as session:
        info, raw = keys.create(context, session, tenant, "ci runner")
    assert raw.startswith("dsk_") and info.label == "ci runner" and info.revoked_at is None
    with unit() as session:
        assert authenticate(session, raw).tenant_id == tenant.id
        listed = keys.list_all(session, tenant)
    assert info.id in [key.id for key in listed]
    assert len(listed) == 2, "the tenant's first key and the new one"
    mine = next(key for key in listed if key.id == info.id)
    assert raw.startswith(mine.prefix) and mine.prefix != raw, "only a prefix is ever shown again"


def test_keys_past_the_quota_are_refused_with_their_own_problem_code(with_settings, unit, tenant):
    limited = with_settings(api_keys_per_tenant=2)
    with unit() as session:
        keys.create(limited, session, tenant, "second")
    with unit() as session, pytest.raises(keys.KeyQuotaExceeded) as refused:
        keys.create(limited, session, tenant, "third")
    assert refused.value.status == 409 and refused.value.code == "quota_exceeded"
    assert "limit is 2" in refused.value.detail
    with unit() as session:
        assert len(keys.list_all(session, tenant)) == 2, "the refused key was not stored"


def test_a_revoked_key_stops_working_at_once_and_revoking_again_changes_nothing(context, unit, tenant):
    with unit() as session:
        info, raw = keys.create(context, session, tenant, "to revoke")
    with unit() as session:
        revoked = keys.revoke(context, session, tenant, info.id)
    assert revoked.revoked_at is not None
    with unit() as session:
        assert authenticate(session, raw) is None
        again = keys.revoke(context, session, tenant, info.id)
    assert again.revoked_at == revoked.revoked_at


def test_the_last_active_key_cannot_be_revoked(context, unit, tenant):
    with unit() as session:
        (only,) = keys.list_all(session, tenant)
    with unit() as session, pytest.raises(Conflict, match="last active API key"):
        keys.revoke(context, session, tenant, only.id)
    with unit() as session:
        assert keys.list_all(session, tenant)[0].revoked_at is None


def test_another_tenants_key_is_not_found_and_stays_active(context, unit, tenant, other_tenant):
    with unit() as session:
        theirs, raw = keys.create(context, session, other_tenant, "theirs")
    for key_id in (theirs.id, uuid.uuid4()):
        with unit() as session, pytest.raises(NotFound) as missing:
            keys.revoke(context, session, tenant, key_id)
        assert missing.value.status == 404
    with unit() as session:
        assert authenticate(session, raw).tenant_id == other_tenant.id
        assert theirs.id not in [key.id for key in keys.list_all(session, tenant)]
