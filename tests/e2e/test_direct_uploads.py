"""Direct uploads through the real API, S3 (presigned PUT), ingest worker and sweeper."""

from __future__ import annotations

import io
import time
import uuid
from datetime import timedelta

import httpx
from PIL import Image
from sqlalchemy import select, update

from shared.clock import utcnow
from shared.context import AppContext
from shared.db import session_scope
from shared.storage import IMAGES, upload_key
from shared.tables import Analysis, Event, Upload
from worker.ingest import ingest_upload
from worker.maintenance import sweep
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def lesion_with_gps(seed: int) -> bytes:
    image = make_lesion(seed=seed, size=(120, 160), radius_frac=0.22).image
    exif = Image.Exif()
    exif[0x010F] = "PatientCam"  # Make
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}  # GPS
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=95, exif=exif.tobytes(), comment=b"Jane Doe 1970-01-01")
    return out.getvalue()


def new_upload(api: httpx.Client, content_type: str = "image/jpeg") -> dict:
    response = api.post("/v1/uploads", json={"content_type": content_type})
    assert response.status_code == 201, response.text
    return response.json()


def put(upload: dict, data: bytes) -> None:
    response = httpx.put(upload["url"], content=data, headers=upload["headers"], timeout=30)
    assert response.status_code == 200, response.text


def submit(api: httpx.Client, upload_id: str, **fields) -> httpx.Response:
    return api.post("/v1/analyses", json={"upload_id": upload_id, **fields})


def test_a_direct_upload_is_cleaned_stored_and_analysed(api, worker, wait_final, context, tenant_key):
    upload = new_upload(api)
    assert upload["method"] == "PUT" and upload["max_bytes"] == context.settings.max_upload_bytes
    assert upload["expires_at"] < upload["submit_before"]
    raw = lesion_with_gps(3)
    put(upload, raw)

    response = submit(api, upload["id"], external_id="direct-1", age=61, site="torso")
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] == "queued" and created["inputs"]["age"] == 61
    assert "image" not in created["artifacts"]  # nothing checked yet: the raw upload is never linked

    final = wait_final(created["id"])
    assert final["status"] == "succeeded", final["rejection"]
    assert final["image"]["width"] == 160 and final["image"]["height"] == 120
    assert final["image"]["sha256"] != ""
    stored = httpx.get(final["artifacts"]["image"], timeout=30).content
    picture = Image.open(io.BytesIO(stored))
    assert not picture.getexif() and "comment" not in picture.info
    assert b"Jane Doe" not in stored and b"PatientCam" not in stored
    # The raw bytes are gone from the store once the cleaned copy exists.
    assert not context.store.exists(IMAGES, upload_key(tenant_key[0], uuid.UUID(upload["id"])))


def test_multipart_with_an_upload_id_field_works_too(api, worker, wait_final):
    upload = new_upload(api)
    put(upload, encode_jpeg(make_lesion(seed=5, size=(120, 160), radius_frac=0.22).image))
    response = api.post("/v1/analyses", files={"upload_id": (None, upload["id"]), "external_id": (None, "mp-1")})
    assert response.status_code == 202, response.text
    assert wait_final(response.json()["id"])["status"] == "succeeded"


def test_what_the_api_refuses_ingest_refuses_with_the_same_answer(api, worker, wait_final):
    not_an_image = b"%PDF-1.4 this is a referral letter, not a photo"
    truncated = encode_jpeg(make_lesion(seed=6, size=(120, 160)).image)[:300]
    for data, code in ((not_an_image, "unsupported_media_type"), (truncated, "unreadable_image")):
        through_api = api.post("/v1/analyses", files={"image": ("x.jpg", data, "image/jpeg")})
        assert through_api.json()["type"].endswith(code), through_api.text

        upload = new_upload(api)
        put(upload, data)
        response = submit(api, upload["id"])
        assert response.status_code == 202, response.text
        final = wait_final(response.json()["id"])
        assert final["status"] == "rejected"
        assert final["rejection"]["code"] == code
        assert final["rejection"]["detail"] == through_api.json()["detail"]
        assert "image" not in final["artifacts"]
        report = api.get(f"/v1/analyses/{final['id']}/report.pdf")
        assert report.status_code == 409 and "refused before analysis" in report.json()["detail"]


def test_upload_ids_are_tenant_owned_single_use_and_need_an_image(api, api_url, context, worker):
    upload = new_upload(api)
    missing = submit(api, upload["id"])
    assert missing.status_code == 409 and "PUT the image" in missing.json()["detail"]

    put(upload, encode_jpeg(make_lesion(seed=7, size=(120, 160)).image))
    with session_scope(context.session_factory) as session:
        from shared.tenants import issue_key

        _, other_key = issue_key(session, f"other-{uuid.uuid4().hex[:8]}")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        assert submit(other, upload["id"]).status_code == 404
    assert submit(api, str(uuid.uuid4())).status_code == 404

    first = submit(api, upload["id"])
    assert first.status_code == 202
    again = submit(api, upload["id"])
    assert again.status_code == 409 and first.json()["id"] in again.json()["detail"]

    bad = api.post("/v1/uploads", json={"content_type": "application/pdf"})
    assert bad.status_code == 422


def test_an_expired_upload_id_is_refused(api, context):
    upload = new_upload(api)
    put(upload, encode_jpeg(make_lesion(seed=8, size=(120, 160)).image))
    with session_scope(context.session_factory) as session:
        session.execute(
            update(Upload).where(Upload.id == uuid.UUID(upload["id"]))
            .values(usable_until=utcnow() - timedelta(seconds=1))
        )
    response = submit(api, upload["id"])
    assert response.status_code == 409 and "expired" in response.json()["detail"]


def test_an_upload_over_the_size_limit_is_refused_at_submit(api):
    upload = new_upload(api)
    big = b"\xff\xd8\xff" + b"\0" * (upload["max_bytes"] + 10)
    put(upload, big)  # the store cannot cap a presigned PUT: the API and ingest do
    response = submit(api, upload["id"])
    assert response.status_code == 413


def _pending_row(context, tenant_id, data: bytes, *, asked_ago: float = 0.0) -> uuid.UUID:
    """A submitted direct upload whose ingest wake-up never reached the broker."""
    analysis_id, upload_id = uuid.uuid4(), uuid.uuid4()
    key = upload_key(tenant_id, upload_id)
    context.store.put(IMAGES, key, data, "image/jpeg")
    now = utcnow()
    with session_scope(context.session_factory) as session:
        session.add(Analysis(
            id=analysis_id, tenant_id=tenant_id, priority="interactive", status="queued", image_key=key,
            image_sha256="", image_content_type="image/jpeg", image_width=0, image_height=0,
            upload_id=upload_id, ingest_requested_at=now - timedelta(seconds=asked_ago),
            created_at=now, updated_at=now,
        ))
    return analysis_id


def test_ingest_enforces_the_size_limit_the_presigned_put_cannot(context, tenant_key, settings):
    small_limit = AppContext(settings.model_copy(update={"max_upload_mb": 1}))
    try:
        analysis_id = _pending_row(context, tenant_key[0], b"\xff\xd8\xff" + b"\0" * (1024 * 1024 + 1))
        assert ingest_upload(small_limit, analysis_id) == "rejected"
        assert ingest_upload(small_limit, analysis_id) is None  # twice: nothing more happens
    finally:
        small_limit.close()
    with context.session_factory() as session:
        row = session.get(Analysis, analysis_id)
        assert row.status == "rejected" and row.rejection["code"] == "payload_too_large"
        events = session.execute(select(Event).where(Event.dedupe_key == f"analysis.rejected:{analysis_id}")).all()
        assert len(events) == 1


def test_the_sweeper_resends_a_lost_ingest_wake_up(api, worker, wait_final, context, tenant_key, settings):
    data = encode_jpeg(make_lesion(seed=9, size=(120, 160), radius_frac=0.22).image)
    analysis_id = _pending_row(context, tenant_key[0], data, asked_ago=settings.resend_after_seconds + 5)
    sweep(context)  # (or the session's beat, a moment earlier: the same sweeper)
    final = wait_final(str(analysis_id))
    assert final["status"] == "succeeded"
    with context.session_factory() as session:
        assert session.get(Analysis, analysis_id).ingest_requested_at is None  # nothing left to re-send


def test_a_direct_upload_canceled_before_ingest_is_never_ingested_and_its_bytes_go(api, context, tenant_key):
    data = encode_jpeg(make_lesion(seed=12, size=(120, 160)).image)
    analysis_id = _pending_row(context, tenant_key[0], data)
    raw_key = _row_key(context, analysis_id)
    canceled = api.post(f"/v1/analyses/{analysis_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["cancel_reason"] == "requested"
    assert ingest_upload(context, analysis_id) is None
    assert not context.store.exists(IMAGES, raw_key)
    with context.session_factory() as session:
        assert session.get(Analysis, analysis_id).status == "canceled"


def _row_key(context, analysis_id) -> str:
    with context.session_factory() as session:
        return session.get(Analysis, analysis_id).image_key


# ---------------------------------------------------------------- in bulk (POST /v1/uploads/bulk, /submit)


def test_bulk_uploads_are_submitted_in_one_call_each_checked_as_one_at_a_time(api, worker, context):
    made = api.post("/v1/uploads/bulk", json={"count": 4, "content_type": "image/jpeg"})
    assert made.status_code == 201, made.text
    uploads = made.json()["uploads"]
    assert len(uploads) == 4 and len({u["id"] for u in uploads}) == 4 and len({u["url"] for u in uploads}) == 4
    assert all(u["method"] == "PUT" and u["max_bytes"] == context.settings.max_upload_bytes for u in uploads)
    good, never_put, too_big, raw_gps = uploads
    put(good, encode_jpeg(make_lesion(seed=11, size=(120, 160), radius_frac=0.22).image))
    put(too_big, b"\xff\xd8\xff" + b"\0" * (too_big["max_bytes"] + 10))
    put(raw_gps, lesion_with_gps(12))

    items = [
        {"upload_id": good["id"], "age": 50, "site": "torso", "external_id": "bulk-1", "idempotency_key": "k-1"},
        {"upload_id": never_put["id"]},
        {"upload_id": too_big["id"]},
        {"upload_id": str(uuid.uuid4())},
        {"upload_id": raw_gps["id"], "cancel_after": "10m"},
        {"upload_id": good["id"], "cancel_after": "99999h"},
    ]
    response = api.post("/v1/uploads/submit", json={"items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = [r["status"] for r in body["results"]]
    # The answers POST /v1/analyses gives one at a time: accepted, PUT first, too large, unknown, accepted,
    # and an invalid deadline; one refused item leaves the others stored.
    assert statuses == [202, 409, 413, 404, 202, 422]
    assert (body["accepted"], body["refused"]) == (2, 4)
    assert "PUT the image" in body["results"][1]["problem"]["detail"]
    assert body["results"][5]["problem"]["errors"][0]["field"] == "cancel_after"
    first = body["results"][0]["analysis"]
    assert first["status"] == "queued" and first["inputs"]["age"] == 50 and first["external_id"] == "bulk-1"

    # Each accepted item is woken for ingest and cleaned like a single direct upload (a refused
    # item in between must not lose the wake-ups of those before it).
    for accepted in (body["results"][0], body["results"][4]):
        cleaned = _wait_ingested(api, accepted["analysis"]["id"])
        assert cleaned["image"]["width"] == 160
        stored = httpx.get(cleaned["artifacts"]["image"], timeout=30).content
        assert b"PatientCam" not in stored and b"Jane Doe" not in stored

    # Per-item idempotency keys replay; a used upload id without one is a 409, as one at a time.
    again = api.post("/v1/uploads/submit", json={"items": [items[0], {"upload_id": raw_gps["id"]}]}).json()
    assert again["results"][0]["status"] == 202 and again["results"][0]["replayed"] is True
    assert again["results"][0]["analysis"]["id"] == first["id"]
    assert again["results"][1]["status"] == 409


def _wait_ingested(api: httpx.Client, analysis_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"/v1/analyses/{analysis_id}").json()
        if body["image"]["sha256"]:
            return body
        assert time.monotonic() < deadline, f"analysis {analysis_id} not ingested after {timeout}s"
        time.sleep(0.2)


def test_bulk_calls_are_bounded_and_tenant_owned(api, api_url, context):
    assert api.post("/v1/uploads/bulk", json={"count": 101}).status_code == 422
    assert api.post("/v1/uploads/bulk", json={"count": 0}).status_code == 422
    assert api.post("/v1/uploads/bulk", json={"count": True}).status_code == 422  # not 1
    assert api.post("/v1/uploads/bulk", json={"count": "2"}).status_code == 422
    assert api.post("/v1/uploads/bulk", json={"count": 2, "content_type": "application/pdf"}).status_code == 422
    too_many = [{"upload_id": str(uuid.uuid4())} for _ in range(101)]
    refused = api.post("/v1/uploads/submit", json={"items": too_many})
    assert refused.status_code == 422 and refused.headers["content-type"].startswith("application/problem+json")
    assert api.post("/v1/uploads/submit", json={"items": [{"upload_id": "nope"}]}).status_code == 422

    upload = api.post("/v1/uploads/bulk", json={"count": 1}).json()["uploads"][0]
    put(upload, encode_jpeg(make_lesion(seed=13, size=(120, 160)).image))
    with session_scope(context.session_factory) as session:
        from shared.tenants import issue_key

        _, other_key = issue_key(session, f"other-{uuid.uuid4().hex[:8]}")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        answer = other.post("/v1/uploads/submit", json={"items": [{"upload_id": upload["id"]}]}).json()
    assert answer["results"][0]["status"] == 404


def test_the_ingest_benchmark_clients_submit_each_image_exactly_once(api_url, tenant_key, context):
    """benchmarks/ingest.py's load clients (a CI-sized run): chunks in flight at once, each
    image accepted once, nothing lost or doubled; its clean-up cancels what it left queued."""
    from benchmarks.ingest import _cancel_queued, distinct, run

    tenant_id, key = tenant_key
    images = [distinct(encode_jpeg(make_lesion(seed=20, size=(96, 96)).image), n) for n in range(3)]
    assert len(set(images)) == 3  # distinct bytes of the same decodable photo
    assert Image.open(io.BytesIO(images[2])).convert("RGB").size == (96, 96)
    assert run(api_url, key, images, 13, 4, "bulk", bulk=4) > 0
    assert run(api_url, key, images, 5, 4, "direct") > 0

    with context.session_factory() as session:
        rows = session.execute(
            select(Analysis.upload_id, Analysis.status, Analysis.ingest_requested_at).where(
                Analysis.tenant_id == tenant_id)
        ).all()
    assert len(rows) == 18 and len({row.upload_id for row in rows}) == 18
    assert all(row.upload_id is not None for row in rows)
    _cancel_queued(context, tenant_id)
    with context.session_factory() as session:
        left = session.execute(
            select(Analysis.id).where(Analysis.tenant_id == tenant_id, Analysis.status == "queued")
        ).all()
    assert left == []
