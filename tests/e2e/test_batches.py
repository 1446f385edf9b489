"""Batches through the real API and worker: lifecycle, batch.completed once, triage, lanes."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select

from shared import lifecycle
from shared.clock import utcnow
from shared.db import session_scope
from shared.jobs import enqueue_analysis
from shared.storage import IMAGES, image_key
from shared.tables import Analysis, Event
from tests.e2e.seeding import result_for, seed_analysis, seed_batch
from worker.pipeline.synthetic import encode_jpeg, make_lesion

CSV_HEADER = [
    "rank", "analysis_id", "external_id", "status", "weights", "risk_band", "probability", "uncertainty",
    "needs_review", "review_reason", "diagnosis", "skin_group", "ita_degrees", "bias_warning",
    "rejection_code", "rejection_detail", "retake_advice", "error_code", "error_detail",
    "age", "sex", "site", "completed_at", "disposition", "disposition_reasons",
]


def lesion(seed: int, **kw) -> bytes:
    """A photo at the minimum resolution (MIN_IMAGE_SIDE, 256 px): analysed, never refused for its size."""
    kw.setdefault("radius_frac", 0.22)
    return encode_jpeg(make_lesion(seed=seed, size=(256, 320), **kw).image)


def add_item(api: httpx.Client, batch_id: str, image: bytes, **fields) -> dict:
    data = {"batch_id": batch_id, **{k: str(v) for k, v in fields.items()}}
    response = api.post("/v1/analyses", files={"image": ("x.jpg", image, "image/jpeg")}, data=data)
    assert response.status_code == 202, response.text
    return response.json()


def new_batch(api: httpx.Client, name: str, **body) -> dict:
    response = api.post("/v1/batches", json={"name": name, **body})
    assert response.status_code == 201, response.text
    return response.json()


def completed_events(context, batch_id: str) -> list[Event]:
    with context.session_factory() as session:
        events = session.execute(select(Event).where(Event.type == "batch.completed")).scalars()
        return [e for e in events if e.payload["data"]["id"] == batch_id]


def test_lifecycle_counts_seal_and_one_completed_event(api, worker, wait, context):
    created = new_batch(api, "clinic-a backlog", external_id="backlog-2024")
    assert created["state"] == "open" and created["total"] == 0 and created["percent_done"] == 0.0
    items = [add_item(api, created["id"], lesion(seed), age=50 + seed, site="torso") for seed in range(3)]
    items.append(add_item(api, created["id"], lesion(7, blur=8.0)))
    assert all(item["priority"] == "bulk" for item in items)

    def all_final():
        body = api.get(f"/v1/batches/{created['id']}").json()
        return body if body["done"] == 4 else None

    done = wait(all_final, 120, message="batch items to finish")
    assert done["total"] == 4 and done["percent_done"] == 100.0
    assert done["counts"]["rejected"] == 1 and done["counts"]["succeeded"] == 3
    assert done["counts"]["queued"] == done["counts"]["processing"] == 0
    assert done["throughput_per_minute"] > 0 and done["eta_seconds"] == 0
    assert done["state"] == "open" and done["completed_at"] is None, "unsealed batches never complete"
    assert completed_events(context, created["id"]) == []

    sealed = api.post(f"/v1/batches/{created['id']}/seal")
    assert sealed.status_code == 200
    assert sealed.json()["state"] == "completed" and sealed.json()["completed_at"]
    again = api.post(f"/v1/batches/{created['id']}/seal").json()
    assert again["sealed_at"] == sealed.json()["sealed_at"]
    assert again["completed_at"] == sealed.json()["completed_at"]
    events = completed_events(context, created["id"])
    assert len(events) == 1
    assert events[0].payload["data"]["counts"]["succeeded"] == 3

    late = api.post("/v1/analyses", files={"image": ("x.jpg", lesion(9), "image/jpeg")},
                    data={"batch_id": created["id"]})
    assert late.status_code == 409 and "sealed" in late.json()["detail"]


def test_batch_sealed_while_busy_completes_when_the_last_item_finishes(api, worker, wait, context):
    created = new_batch(api, "sealed early")
    for seed in range(2):
        add_item(api, created["id"], lesion(30 + seed))
    sealed = api.post(f"/v1/batches/{created['id']}/seal").json()
    assert sealed["sealed_at"]

    def completed():
        body = api.get(f"/v1/batches/{created['id']}").json()
        return body if body["state"] == "completed" else None

    body = wait(completed, 120, message="batch to complete")
    assert body["done"] == body["total"] == 2
    assert len(completed_events(context, created["id"])) == 1


def _failed_row(context, tenant_id, batch_id: str) -> str:
    """A job that failed for good: the pipeline never fails on demand, so write the row."""
    analysis_id = uuid.uuid4()
    now = utcnow()
    with session_scope(context.session_factory) as session:
        session.add(Analysis(
            id=analysis_id, tenant_id=tenant_id, batch_id=uuid.UUID(batch_id), priority="bulk",
            status="failed", attempt=3, external_id="broken-1", image_key=image_key(tenant_id, analysis_id, "jpg"),
            image_sha256="0" * 64, image_content_type="image/jpeg", image_width=320, image_height=256,
            error={"code": "attempts_exhausted", "detail": "gave up after 3 attempts"},
            created_at=now, updated_at=now, completed_at=now,
        ))
    return str(analysis_id)


def test_triage_is_risk_ordered_with_review_flags_retakes_and_equity(api, worker, wait, context, tenant_key):
    created = new_batch(api, "triage")
    batch_id = created["id"]
    for seed, ita in enumerate((55.0, 45.0, 30.0, 5.0, -35.0)):
        add_item(api, batch_id, lesion(40 + seed, ita=ita, irregularity=0.2 * seed, variegation=0.15 * seed),
                 external_id=f"ok-{seed}")
    add_item(api, batch_id, lesion(50, blur=8.0), external_id="blurred")
    failed_id = _failed_row(context, tenant_key[0], batch_id)
    api.post(f"/v1/batches/{batch_id}/seal")
    wait(lambda: api.get(f"/v1/batches/{batch_id}").json()["state"] == "completed", 120, message="completion")

    body = api.get(f"/v1/batches/{batch_id}/results", params={"order": "risk", "format": "json"}).json()
    items = body["items"]
    assert [i["status"] for i in items] == ["succeeded"] * 5 + ["rejected", "failed"]
    # Untrained weights (the test stack's): one disposition group, clinician review, by risk within it.
    assert [i["disposition"] for i in items] == ["clinician_review"] * 5 + [None, None]
    probabilities = [i["probability"] for i in items[:5]]
    assert probabilities == sorted(probabilities, reverse=True)
    for item in items[:5]:
        reasons = set((item["review_reason"] or "").split(";")) - {""}
        expected = set()
        if item["uncertainty"] >= 0.15:
            expected.add("high_uncertainty")
        if abs(item["probability"] - 0.5) < 0.1:
            expected.add("near_threshold")
        if item["bias_warning"]:
            expected.add("bias_warning")
        if item["weights"] != "trained":
            expected.add("weights_not_trained")
        assert reasons == expected and item["needs_review"] == bool(expected), item
    dark = [i for i in items[:5] if i["external_id"] in ("ok-3", "ok-4")]
    assert all(i["bias_warning"] and i["needs_review"] for i in dark), "dark skin is always flagged"
    retake = items[5]
    assert retake["external_id"] == "blurred" and retake["rejection_code"] == "blurry"
    assert "focus" in retake["retake_advice"] and retake["rejection_detail"]
    assert items[6]["analysis_id"] == failed_id and items[6]["error_code"] == "attempts_exhausted"

    summary = body["summary"]
    assert summary["counts"]["succeeded"] == 5 and summary["retake"] == {"blurry": 1}
    assert summary["dispositions"] == body["batch"]["dispositions"] == {
        "urgent_referral": 0, "clinician_review": 5, "routine": 0}
    groups = {g["skin_group"]: g for g in summary["equity"]}
    assert sum(g["items"] for g in groups.values()) == 5
    for name, group in groups.items():
        mine = [i for i in items[:5] if i["skin_group"] == name]
        assert group["items"] == len(mine)
        assert group["high_risk"] == sum(i["risk_band"] == "high" for i in mine)
        assert group["high_risk_share"] == round(group["high_risk"] / len(mine), 4)
        assert group["needs_review"] == sum(i["needs_review"] for i in mine)

    response = api.get(f"/v1/batches/{batch_id}/results", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == CSV_HEADER
    assert [r[1] for r in rows[1:]] == [i["analysis_id"] for i in items]
    assert rows[6][CSV_HEADER.index("rejection_code")] == "blurry"
    assert [r[CSV_HEADER.index("disposition")] for r in rows[1:]] == ["clinician_review"] * 5 + ["", ""]

    only_summary = api.get(f"/v1/batches/{batch_id}/results", params={"items": "false"}).json()
    assert only_summary["items"] == [] and only_summary["summary"] == summary


def test_progress_and_batch_completed_count_results_per_disposition(api, context, tenant_key):
    """Seeded results (trained weights, recorded dispositions; untrained ones; one stored before
    dispositions existed): progress, the triage summary and batch.completed count each result
    as it is shown, and the triage list groups by disposition before risk."""
    tenant_id, _ = tenant_key
    batch_id = seed_batch(context, tenant_id, "dispositions")
    cases = [
        ("urgent", 0.91, "trained", "urgent_referral"),
        ("review", 0.62, "trained", "clinician_review"),
        ("routine-1", 0.03, "trained", "routine"),
        ("routine-2", 0.05, "trained", "routine"),
        ("untrained-claimed-urgent", 0.99, "untrained", "urgent_referral"),
        ("untrained-legacy", 0.2, "untrained", None),
        ("trained-legacy", 0.95, "trained", None),
    ]
    for seed, (ref, probability, weights, disposition) in enumerate(cases):
        seed_analysis(context, tenant_id, result=result_for(probability, disposition=disposition), weights=weights,
                      batch_id=batch_id, external_id=ref, seed=seed)
    expected = {"urgent_referral": 1, "clinician_review": 3, "routine": 2}

    progress = api.get(f"/v1/batches/{batch_id}").json()
    assert progress["dispositions"] == expected and progress["counts"]["succeeded"] == 7
    results = api.get(f"/v1/batches/{batch_id}/results", params={"items": "false"}).json()
    assert results["summary"]["dispositions"] == results["batch"]["dispositions"] == expected
    items = api.get(f"/v1/batches/{batch_id}/results").json()["items"]
    assert [i["external_id"] for i in items] == [
        "urgent", "untrained-claimed-urgent", "review", "untrained-legacy", "routine-2", "routine-1", "trained-legacy"
    ]
    assert api.post(f"/v1/batches/{batch_id}/cancel").json()["dispositions"] == expected

    (event,) = completed_events(context, str(batch_id))
    assert event.payload["data"]["dispositions"] == expected
    assert event.payload["data"]["weights"] == {"trained": 5, "untrained": 2}


def test_other_tenants_batches_answer_404(api, api_url, context):
    created = new_batch(api, "private")
    with session_scope(context.session_factory) as session:
        from shared.tenants import issue_key

        _, other_key = issue_key(session, "intruder-" + created["id"][:8])
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        for path in ("", "/results", "/results?format=csv"):
            response = other.get(f"/v1/batches/{created['id']}{path}")
            assert response.status_code == 404, path
            assert response.headers["content-type"].startswith("application/problem+json")
        assert other.post(f"/v1/batches/{created['id']}/seal").status_code == 404
        assert created["id"] not in {b["id"] for b in other.get("/v1/batches").json()["data"]}
        smuggled = other.post("/v1/analyses", files={"image": ("x.jpg", lesion(1), "image/jpeg")},
                              data={"batch_id": created["id"]})
        assert smuggled.status_code == 400
    assert api.get(f"/v1/batches/{created['id']}").json()["total"] == 0
    assert api.get("/v1/batches/not-a-uuid").status_code == 404


def test_list_is_newest_first_with_cursor_and_name_filter(api):
    ids = [new_batch(api, name)["id"] for name in ("north", "south", "north")]
    page1 = api.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in page1["data"]] == ids[::-1][:2]
    page2 = api.get("/v1/batches", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    assert [b["id"] for b in page2["data"]] == [ids[0]] and page2["next_cursor"] is None
    named = api.get("/v1/batches", params={"name": "north"}).json()["data"]
    assert [b["id"] for b in named] == [ids[2], ids[0]]
    assert named[0]["counts"]["queued"] == 0 and named[0]["total"] == 0
    assert api.post("/v1/batches", json={"name": ""}).status_code == 422


def _queue_bulk(context, tenant_id, count: int, image: bytes) -> list[uuid.UUID]:
    """Bulk jobs as the API would leave them (row + wake-up), without uploading each image."""
    ids = [uuid.uuid4() for _ in range(count)]
    key = image_key(tenant_id, ids[0], "jpg")
    context.store.put(IMAGES, key, image, "image/jpeg")
    base = utcnow()
    with session_scope(context.session_factory) as session:
        for n, analysis_id in enumerate(ids):
            created = base + timedelta(microseconds=n)
            session.add(Analysis(
                id=analysis_id, tenant_id=tenant_id, priority="bulk", status="queued", image_key=key,
                image_sha256="1" * 64, image_content_type="image/jpeg", image_width=320, image_height=256,
                created_at=created, updated_at=created, enqueued_at=created,
            ))
    for analysis_id in ids:
        enqueue_analysis(context.celery, analysis_id, "bulk")
    return ids


def test_interactive_job_starts_ahead_of_waiting_bulk_jobs(
    api, worker, wait, wait_final, context, tenant_key, settings
):
    bulk_ids = _queue_bulk(context, tenant_key[0], 120, lesion(60))
    wait(lambda: _started(context, bulk_ids), 60, message="the worker to start on the bulk lane")

    interactive = api.post("/v1/analyses", files={"image": ("i.jpg", lesion(61), "image/jpeg")}).json()
    assert interactive["priority"] == "interactive"
    finished = wait_final(interactive["id"], 120)
    assert finished["status"] == "succeeded"
    try:
        with context.session_factory() as session:
            started = dict(session.execute(
                select(Analysis.id, Analysis.started_at).where(Analysis.id.in_(bulk_ids))
            ).all())
        queued_at = datetime.fromisoformat(interactive["created_at"].replace("Z", "+00:00"))
        interactive_start = datetime.fromisoformat(finished["started_at"].replace("Z", "+00:00"))
        still_waiting = [i for i, at in started.items() if at is None or at > queued_at]
        assert len(still_waiting) >= 40, "the bulk backlog drained before the interactive job could compete"
        overtook = [i for i in still_waiting if started[i] is not None and started[i] < interactive_start]
        # Once the interactive job is queued, only a GPU pass that was already being claimed
        # may start first: at most one pass (gpu_batch_size jobs) per worker process.
        assert len(overtook) <= 2 * settings.gpu_batch_size, f"{len(overtook)} waiting bulk jobs started first"
    finally:
        with session_scope(context.session_factory) as session:
            for analysis_id in bulk_ids:
                lifecycle.cancel(session, None, context.settings, analysis_id)


def _started(context, ids) -> bool:
    with context.session_factory() as session:
        return session.execute(
            select(Analysis.id).where(Analysis.id.in_(ids), Analysis.started_at.is_not(None)).limit(1)
        ).first() is not None

