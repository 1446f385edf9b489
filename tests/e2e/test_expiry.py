"""Deadlines (Cancel-After) and batch cancel, on the real API, Postgres and sweeper."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import httpx
from sqlalchemy import func, select

from shared import lifecycle
from shared.clock import utcnow
from shared.db import session_scope
from shared.storage import IMAGES, image_key
from shared.tables import Analysis, AnalysisStatus, Batch, Event
from worker.maintenance import sweep
from worker.pipeline.synthetic import encode_jpeg, make_lesion

IMAGE = encode_jpeg(make_lesion(seed=11, size=(120, 160), radius_frac=0.22).image)


def _row(context, tenant_id, *, status="queued", deadline=None, batch_id=None, **extra) -> uuid.UUID:
    """A committed analysis; ``not_before`` far ahead keeps live workers off queued rows."""
    analysis_id = uuid.uuid4()
    key = image_key(tenant_id, analysis_id, "jpg")
    context.store.put(IMAGES, key, IMAGE, "image/jpeg")
    now = utcnow()
    values = dict(
        id=analysis_id, tenant_id=tenant_id, status=status, attempt=0, image_key=key, batch_id=batch_id,
        priority="bulk" if batch_id else "interactive",
        image_sha256="0" * 64, image_content_type="image/jpeg", image_width=160, image_height=120,
        created_at=now, updated_at=now, enqueued_at=now, deadline_at=deadline,
    )
    if status == "queued":
        values["not_before"] = now + timedelta(days=1)
    values.update(extra)
    with session_scope(context.session_factory) as session:
        session.add(Analysis(**values))
    return analysis_id


def _events(context, analysis_id, type_="analysis.canceled") -> list[dict]:
    with context.session_factory() as session:
        rows = session.execute(select(Event.payload).where(Event.type == type_)).scalars().all()
    return [p for p in rows if p["data"].get("id") == str(analysis_id)]


def _get(context, analysis_id) -> Analysis:
    with context.session_factory() as session:
        return session.get(Analysis, analysis_id)


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_cancel_after_sets_a_deadline_and_bad_values_are_refused(api):
    image = {"image": ("x.jpg", IMAGE, "image/jpeg")}
    for header, fragment in (("soon", "not a duration"), ("2s", "at least 5 seconds"), ("999999999", "at most")):
        response = api.post("/v1/analyses", files=image, headers={"Cancel-After": header})
        assert response.status_code == 422 and fragment in response.json()["detail"], response.text
        assert response.json()["errors"][0]["field"] == "Cancel-After"
    both = api.post("/v1/analyses", files=image, data={"cancel_after": "5m"}, headers={"Cancel-After": "5m"})
    assert both.status_code == 422

    created = api.post("/v1/analyses", files=image, headers={"Cancel-After": "1h30m"}).json()
    lead = _when(created["deadline_at"]) - _when(created["created_at"])
    assert abs(lead.total_seconds() - 5400) < 1
    as_field = api.post("/v1/analyses", files=image, data={"cancel_after": "90"}).json()
    assert abs((_when(as_field["deadline_at"]) - _when(as_field["created_at"])).total_seconds() - 90) < 1
    assert api.post("/v1/analyses", files=image).json()["deadline_at"] is None


def test_a_job_past_its_deadline_is_canceled_when_claimed_instead_of_running(context, tenant_key):
    analysis_id = _row(context, tenant_key[0], deadline=utcnow() - timedelta(seconds=1), not_before=None)
    with session_scope(context.session_factory) as session:
        claims = lifecycle.claim_batch(session, analysis_id, 1, settings=context.settings)
    assert [c.analysis_id for c in claims if c.analysis_id == analysis_id] == []
    row = _get(context, analysis_id)
    assert (row.status, row.cancel_reason, row.started_at, row.attempt) == ("canceled", "expired", None, 0)
    (event,) = _events(context, analysis_id)
    assert event["data"]["reason"] == "expired" and event["data"]["status"] == "canceled"


def test_the_sweeper_expires_queued_and_running_jobs_once(context, tenant_key, wait):
    past = utcnow() - timedelta(seconds=1)
    queued = _row(context, tenant_key[0], deadline=past)
    running = _row(context, tenant_key[0], status="processing", deadline=past, attempt=1,
                   claimed_by="gpu@elsewhere:1", started_at=past, heartbeat_at=utcnow())
    later = _row(context, tenant_key[0], deadline=utcnow() + timedelta(hours=1))
    sweep(context)
    for analysis_id in (queued, running):
        # (The session's beat, sweeping every second, may hold the row and end it a moment later.)
        row = wait(lambda a=analysis_id: (r := _get(context, a)).status == "canceled" and r, timeout=10,
                   message="the sweeper to expire the job")
        assert (row.status, row.cancel_reason) == ("canceled", "expired")
    assert _get(context, later).status == "queued"

    # The worker that held the running job can no longer record anything for it.
    claim = lifecycle.Claim(running, 1, tenant_key[0], "", None, "unknown", "unknown", None, None)
    with session_scope(context.session_factory) as session:
        assert not lifecycle.finish(session, None, context.settings, claim, status=AnalysisStatus.failed)

    sweep(context)
    for analysis_id in (queued, running):
        assert [e["data"]["reason"] for e in _events(context, analysis_id)] == ["expired"]


def test_batch_deadline_applies_to_items_unless_theirs_is_sooner(api):
    batch = api.post("/v1/batches", json={"name": "overnight", "cancel_after": "1h"}).json()
    assert abs((_when(batch["deadline_at"]) - _when(batch["created_at"])).total_seconds() - 3600) < 1
    image = {"image": ("x.jpg", IMAGE, "image/jpeg")}
    inherits = api.post("/v1/analyses", files=image, data={"batch_id": batch["id"]}).json()
    assert inherits["deadline_at"] == batch["deadline_at"]
    sooner = api.post(
        "/v1/analyses", files=image, data={"batch_id": batch["id"]}, headers={"Cancel-After": "10m"}
    ).json()
    assert _when(sooner["deadline_at"]) < _when(batch["deadline_at"])
    assert api.post("/v1/batches", json={"name": "x", "cancel_after": "forever"}).status_code == 422


def test_batch_cancel_cancels_unfinished_items_once(api, api_url, context, tenant_key):
    batch = api.post("/v1/batches", json={"name": "to cancel"}).json()
    batch_uuid = uuid.UUID(batch["id"])
    waiting = [_row(context, tenant_key[0], batch_id=batch_uuid) for _ in range(2)]
    done = _row(context, tenant_key[0], batch_id=batch_uuid, status="succeeded", completed_at=utcnow())

    first = api.post(f"/v1/batches/{batch['id']}/cancel")
    assert first.status_code == 200, first.text
    body = first.json()
    # Issue 25: a canceled batch says so; it is not "completed".
    assert body["canceled_now"] == 2 and body["state"] == "canceled" and body["canceled_at"]
    assert body["counts"]["canceled"] == 2 and body["counts"]["succeeded"] == 1
    for analysis_id in waiting:
        assert (_get(context, analysis_id).cancel_reason, len(_events(context, analysis_id))) == ("batch_canceled", 1)
        assert _events(context, analysis_id)[0]["data"]["reason"] == "batch_canceled"
    assert _get(context, done).status == "succeeded"
    assert len(_events(context, batch["id"], "batch.completed")) == 1
    assert _events(context, batch["id"], "batch.completed")[0]["data"]["state"] == "canceled"
    assert api.get(f"/v1/batches/{batch['id']}").json()["state"] == "canceled"
    listed = api.get("/v1/batches", params={"name": "to cancel"}).json()["data"]
    assert [b["state"] for b in listed if b["id"] == batch["id"]] == ["canceled"]

    def batch_events() -> int:
        with context.session_factory() as session:
            return session.execute(
                select(func.count()).select_from(Event).where(Event.tenant_id == tenant_key[0])
            ).scalar_one()

    before = batch_events()
    again = api.post(f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 200 and again.json()["canceled_now"] == 0
    assert batch_events() == before
    late = api.post("/v1/analyses", files={"image": ("x.jpg", IMAGE, "image/jpeg")}, data={"batch_id": batch["id"]})
    assert late.status_code == 409

    with session_scope(context.session_factory) as session:
        from shared.tenants import issue_key

        _, other_key = issue_key(session, f"other-{uuid.uuid4().hex[:8]}")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        assert other.post(f"/v1/batches/{batch['id']}/cancel").status_code == 404


def test_a_batch_whose_deadline_canceled_its_items_ends_expired(api, context, tenant_key):
    """Issue 25: a batch ended by its deadline said `completed`, like one whose items all ran."""
    batch = api.post("/v1/batches", json={"name": "expiring", "cancel_after": "1h"}).json()
    batch_uuid = uuid.UUID(batch["id"])
    past = utcnow() - timedelta(seconds=1)
    with session_scope(context.session_factory) as session:
        session.get(Batch, batch_uuid).deadline_at = past  # an hour later, as far as the batch knows
    late = _row(context, tenant_key[0], batch_id=batch_uuid, deadline=past)
    _row(context, tenant_key[0], batch_id=batch_uuid, status="succeeded", completed_at=utcnow())
    assert api.post(f"/v1/batches/{batch['id']}/seal").json()["state"] == "sealed"

    sweep(context)
    assert _get(context, late).cancel_reason == "expired"
    body = api.get(f"/v1/batches/{batch['id']}").json()
    assert body["state"] == "expired" and body["counts"]["canceled"] == 1 and body["canceled_at"] is None
    assert _events(context, batch["id"], "batch.completed")[0]["data"]["state"] == "expired"
