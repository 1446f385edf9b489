"""Submit → S3 + Postgres → Celery → worker → poll, through a real API and worker."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import func, select

from shared.tables import Analysis
from worker.pipeline.synthetic import encode_jpeg, encode_png, make_lesion


def lesion_jpeg(seed: int = 1, **kw) -> bytes:
    return encode_jpeg(make_lesion(seed=seed, size=(240, 320), radius_frac=0.22, **kw).image)


def submit(api: httpx.Client, image: bytes, filename="lesion.jpg", content_type="image/jpeg", headers=None, **fields):
    data = {k: str(v) for k, v in fields.items()}
    return api.post("/v1/analyses", files={"image": (filename, image, content_type)}, data=data, headers=headers or {})


def test_submit_poll_succeeds_with_downloadable_artifacts(api, worker, wait_final):
    response = submit(api, lesion_jpeg(irregularity=0.6, variegation=0.5), age=61, sex="male", site="torso",
                      external_id="case-42")
    assert response.status_code == 202, response.text
    created = response.json()
    assert response.headers["location"] == f"/v1/analyses/{created['id']}"
    assert created["status"] == "queued"
    assert created["inputs"] == {"age": 61, "sex": "male", "site": "torso", "pixel_spacing_mm": None,
                                 "patient_reference": None, "encounter_reference": None}

    analysis = wait_final(created["id"])
    assert analysis["status"] == "succeeded", analysis
    result = analysis["result"]
    assert result["diagnosis"] in {"melanoma", "benign"}
    assert 0.0 <= result["probability"] <= 1.0
    assert len(result["tta_probabilities"]) == 5
    assert result["segmentation"]["coverage"] > 0.05
    assert set(result["concepts"]) >= {"asymmetry", "border", "color", "diameter_px"}
    assert result["equity"]["skin_group"]
    assert "FINDINGS" in result["scribe_note"]
    assert "case-42" in result["scribe_note"], "the note names the client reference"
    assert analysis["model"]["weights"] == "untrained"
    assert analysis["model"]["segmenter"] == "classical"
    assert analysis["external_id"] == "case-42"

    artifacts = analysis["artifacts"]
    for name in ("image", "mask", "overlay"):
        download = httpx.get(artifacts[name], timeout=30)
        assert download.status_code == 200, name
        picture = Image.open(io.BytesIO(download.content))
        assert picture.size == (320, 240), f"{name} keeps the original aspect ratio"
    assert "X-Amz-Expires=120" in artifacts["image"]


def test_blurry_and_blank_images_are_rejected_with_codes(api, worker, wait_final):
    blurry = make_lesion(seed=3, size=(240, 320), blur=8.0).image
    blank = np.full((240, 320, 3), 200, dtype=np.uint8)
    blurry_id = submit(api, encode_jpeg(blurry)).json()["id"]
    blank_id = submit(api, encode_png(blank), filename="blank.png", content_type="image/png").json()["id"]

    rejected_blurry = wait_final(blurry_id)
    rejected_blank = wait_final(blank_id)
    assert rejected_blurry["status"] == "rejected"
    assert rejected_blurry["rejection"]["code"] == "blurry"
    assert "blur" in rejected_blurry["rejection"]["detail"].lower()
    assert rejected_blank["status"] == "rejected"
    assert rejected_blank["rejection"]["code"] in {"no_lesion", "blurry"}


def test_other_tenants_ids_answer_404(api, api_url, worker, tenant_key, context):
    from shared.db import session_scope
    from shared.tenants import issue_key

    created = submit(api, lesion_jpeg(seed=5)).json()
    with session_scope(context.session_factory) as session:
        _, other_key = issue_key(session, "intruder-" + created["id"][:8])
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        for path in ("", "/report.pdf", "/fhir"):
            response = other.get(f"/v1/analyses/{created['id']}{path}")
            assert response.status_code == 404, path
            assert response.headers["content-type"].startswith("application/problem+json")
        assert other.post(f"/v1/analyses/{created['id']}/cancel").status_code == 404
        listed = other.get("/v1/analyses").json()["data"]
        assert created["id"] not in {a["id"] for a in listed}


def test_missing_or_wrong_key_is_401(api_url):
    assert httpx.get(f"{api_url}/v1/analyses").status_code == 401
    response = httpx.get(f"{api_url}/v1/analyses", headers={"Authorization": "Bearer dsk_nope"})
    assert response.status_code == 401
    assert response.json()["title"]


def test_idempotency_key_replays_and_conflicts(api, context, tenant_key):
    image = lesion_jpeg(seed=9)
    first = submit(api, image, age=40, headers={"Idempotency-Key": "visit-1"})
    again = submit(api, image, age=40, headers={"Idempotency-Key": "visit-1"})
    assert first.status_code == 202 and again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"

    different = submit(api, image, age=41, headers={"Idempotency-Key": "visit-1"})
    assert different.status_code == 409
    assert "Idempotency-Key" in different.json()["detail"]

    with context.session_factory() as session:
        rows = session.execute(
            select(func.count()).select_from(Analysis).where(Analysis.tenant_id == tenant_key[0])
        ).scalar_one()
    assert rows == 1


def test_list_is_newest_first_with_cursor_and_filters(api):
    ids = [submit(api, lesion_jpeg(seed=20 + i), external_id=f"list-{i}").json()["id"] for i in range(3)]
    page1 = api.get("/v1/analyses", params={"limit": 2}).json()
    assert [a["id"] for a in page1["data"]] == ids[::-1][:2]
    page2 = api.get("/v1/analyses", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    assert [a["id"] for a in page2["data"]] == [ids[0]]
    assert page2["next_cursor"] is None
    only = api.get("/v1/analyses", params={"external_id": "list-1"}).json()["data"]
    assert [a["id"] for a in only] == [ids[1]]
    assert api.get("/v1/analyses", params={"status": "bogus"}).status_code == 422


def test_cancel_a_queued_job_then_cancel_again_is_409(api, context, tenant_key):
    from datetime import timedelta

    from shared.clock import utcnow
    from shared.db import session_scope

    analysis_id = __import__("uuid").uuid4()
    with session_scope(context.session_factory) as session:
        # Queued with no wake-up message and dated in the future, so no worker claims it
        # before the cancel arrives.
        session.add(Analysis(
            id=analysis_id, tenant_id=tenant_key[0], status="queued", priority="bulk", attempt=0,
            image_key=f"tenants/{tenant_key[0]}/analyses/{analysis_id}/image.jpg", image_sha256="0" * 64,
            image_content_type="image/jpeg", image_width=10, image_height=10,
            created_at=utcnow() + timedelta(days=365), enqueued_at=utcnow(),
        ))
    canceled = api.post(f"/v1/analyses/{analysis_id}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert api.get(f"/v1/analyses/{analysis_id}").json()["status"] == "canceled"
    again = api.post(f"/v1/analyses/{analysis_id}/cancel")
    assert again.status_code == 409
    assert "already canceled" in again.json()["detail"]
    assert api.get(f"/v1/analyses/{analysis_id}/report.pdf").status_code == 409


def test_submit_command_prints_the_result(api_url, tenant_key, worker, tmp_path):
    import json
    import subprocess
    import sys

    image = tmp_path / "lesion.jpg"
    image.write_bytes(lesion_jpeg(seed=77))
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "submit", str(image), "--age", "70", "--sex", "female",
         "--site", "head/neck", "--api-url", api_url, "--api-key", tenant_key[1]],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout[: run.stdout.index("\n}\n") + 2])
    assert printed["status"] == "succeeded"
    assert printed["model"]["weights"] == "untrained"
    assert "FINDINGS" in run.stdout
