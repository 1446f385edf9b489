"""api.services.owned: one lookup for tenant-owned rows; anyone else's id is a plain 404."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from api.problems import NotFound
from api.services.owned import get_owned
from shared.tables import Batch


@pytest.fixture
def batch_of(unit):
    def create(tenant) -> uuid.UUID:
        with unit() as session:
            batch = Batch(tenant_id=tenant.id, name=f"owned-{uuid.uuid4().hex[:6]}")
            session.add(batch)
            session.flush()
            return batch.id

    return create


def test_the_owner_gets_its_row(unit, tenant, batch_of):
    batch_id = batch_of(tenant)
    with unit() as session:
        found = get_owned(session, Batch, batch_id, tenant, "batch")
    assert found.id == batch_id and found.tenant_id == tenant.id


def test_another_tenants_id_reads_exactly_like_an_unknown_one(unit, tenant, other_tenant, batch_of):
    theirs = batch_of(other_tenant)
    unknown = uuid.uuid4()
    details = []
    for ident in (theirs, unknown):
        with unit() as session, pytest.raises(NotFound) as missing:
            get_owned(session, Batch, ident, tenant, "batch")
        assert missing.value.status == 404
        details.append(missing.value.detail.replace(str(ident), "<id>"))
    assert details[0] == details[1] == "no batch with id <id>", "nothing tells a foreign id from a missing one"


def test_for_update_holds_the_row_until_the_unit_of_work_ends(context, unit, tenant, batch_of):
    batch_id = batch_of(tenant)
    with unit() as holder:
        get_owned(holder, Batch, batch_id, tenant, "batch", for_update=True)
        with pytest.raises(OperationalError, match="could not obtain lock"), unit() as other:
            other.execute(select(Batch).where(Batch.id == batch_id).with_for_update(nowait=True)).one()
    with unit() as session:  # released with the holder's commit
        session.execute(select(Batch).where(Batch.id == batch_id).with_for_update(nowait=True)).one()
