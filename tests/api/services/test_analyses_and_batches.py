"""api.services.analyses and api.services.batches in process: submission, idempotency,
batch rules and the batch lifecycle, on the real Postgres, Redis and S3, without HTTP."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from api.problems import BadRequest, BatchSealed, Conflict, NotFound
from api.services import analyses, batches
from shared.images import clean_image
from shared.schemas import AnalysisInputs, BatchIn
from shared.storage import IMAGES
from shared.tables import Analysis, Event
from worker.pipeline.synthetic import encode_jpeg, make_lesion


@pytest.fixture
def image():
    return clean_image(encode_jpeg(make_lesion(seed=5, size=(96, 128)).image), max_pixels=10_000_000)


def _submit(context, unit, tenant, image, key=None, **inputs):
    with unit() as session:
        submitted = analyses.submit(context, session, tenant, image, AnalysisInputs(**inputs), key)
        return submitted.analysis.id, submitted.replayed


def test_a_submission_stores_the_cleaned_image_and_a_queued_row(context, unit, tenant, image):
    analysis_id, replayed = _submit(context, unit, tenant, image, age=61, site="torso")
    assert not replayed
    with unit() as session:
        row = session.get(Analysis, analysis_id)
        assert (row.status, row.priority, row.age, row.site) == ("queued", "interactive", 61, "torso")
        assert context.store.get(IMAGES, row.image_key) == image.data


def test_an_idempotency_key_replays_the_same_request_and_refuses_a_different_one(context, unit, tenant, image):
    key = f"visit-{uuid.uuid4().hex[:8]}"
    first, _ = _submit(context, unit, tenant, image, key, age=40)
    again, replayed = _submit(context, unit, tenant, image, key, age=40)
    assert (again, replayed) == (first, True)
    with pytest.raises(Conflict):
        _submit(context, unit, tenant, image, key, age=41)
    with unit() as session:
        assert session.execute(
            select(func.count()).select_from(Analysis).where(Analysis.tenant_id == tenant.id)
        ).scalar_one() == 1


def test_batch_items_go_bulk_and_a_sealed_or_foreign_batch_is_refused(context, unit, tenant, other_tenant, image):
    with unit() as session:
        batch_id = batches.create(session, tenant, BatchIn(name="march")).id
        theirs = batches.create(session, other_tenant, BatchIn(name="theirs")).id
    item, _ = _submit(context, unit, tenant, image, batch_id=batch_id, priority="interactive")
    with unit() as session:
        assert session.get(Analysis, item).priority == "bulk"  # a backlog never jumps the interactive lane
    with pytest.raises(BadRequest):
        _submit(context, unit, tenant, image, batch_id=theirs)
    with unit() as session:
        batches.seal(context, session, tenant, batch_id)
    with pytest.raises(BatchSealed) as sealed:
        _submit(context, unit, tenant, image, batch_id=batch_id)
    assert sealed.value.code == "batch_sealed" and sealed.value.status == 409


def test_canceling_a_batch_cancels_its_items_once_and_completes_it_once(context, unit, tenant, other_tenant, image):
    with unit() as session:
        batch_id = batches.create(session, tenant, BatchIn(name="to-cancel")).id
    items = [_submit(context, unit, tenant, image, batch_id=batch_id)[0] for _ in range(3)]
    with unit() as session, pytest.raises(NotFound):
        batches.cancel(context, session, other_tenant, batch_id)
    with unit() as session:
        _, canceled = batches.cancel(context, session, tenant, batch_id)
    assert canceled == 3
    with unit() as session:
        _, canceled_again = batches.cancel(context, session, tenant, batch_id)
        batch = batches.get(session, tenant, batch_id)
        done = batches.progress(session, batch)
        statuses = {session.get(Analysis, i).status for i in items}
        completed = session.execute(
            select(func.count()).select_from(Event).where(Event.dedupe_key == f"batch.completed:{batch_id}")
        ).scalar_one()
    assert canceled_again == 0
    assert statuses == {"canceled"}
    assert (done.total, done.done, done.percent_done) == (3, 3, 100.0)
    assert batch.sealed_at is not None and batch.completed_at is not None
    assert completed == 1
