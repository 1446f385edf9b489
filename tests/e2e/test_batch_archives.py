"""File-based batches through the real API, S3 (presigned PUT), ingest worker and pipeline (issue
25): an archive becomes the batch's items, its refused rows the errors file, and both files are
presigned NDJSON."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
import uuid
import zipfile

import httpx
import pytest
from PIL import Image

from api.auth import TenantId
from api.problems import PayloadTooLarge
from api.services import batches as batch_service
from shared.context import AppContext
from shared.db import session_scope
from shared.storage import ARTIFACTS, BATCH_OUTPUT, batch_file_key
from worker.pipeline.synthetic import encode_jpeg, make_lesion

FINAL = {"completed", "canceled", "expired"}


def photo(seed: int, size: tuple[int, int] = (48, 48)) -> bytes:
    return encode_jpeg(make_lesion(seed=seed, size=size, radius_frac=0.25).image, quality=80)


def photo_with_gps(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PatientCam"
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}
    out = io.BytesIO()
    Image.fromarray(make_lesion(seed=seed, size=(64, 64)).image).save(out, format="JPEG", exif=exif.tobytes(),
                                                                       comment=b"Jane Doe 1970-01-01")
    return out.getvalue()


def manifest(rows: list[dict[str, object]]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, ["filename", "external_id", "age", "sex", "site"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def zipped(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def new_batch(api: httpx.Client, name: str) -> str:
    response = api.post("/v1/batches", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def put_archive(api: httpx.Client, batch_id: str, fmt: str, data: bytes) -> dict:
    response = api.post(f"/v1/batches/{batch_id}/archive", json={"format": fmt})
    assert response.status_code == 201, response.text
    archive = response.json()
    put = httpx.put(archive["url"], content=data, headers=archive["headers"], timeout=60)
    assert put.status_code == 200, put.text
    return archive


def batch_file(api: httpx.Client, batch_id: str, which: str) -> tuple[dict, list[dict]]:
    response = api.get(f"/v1/batches/{batch_id}/{which}")
    assert response.status_code == 200, response.text
    body = response.json()
    text = httpx.get(body["url"], timeout=60).text
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == body["lines"]
    return body, lines


def until(wait, api: httpx.Client, batch_id: str, done, timeout: float = 300.0) -> dict:
    def check() -> dict | None:
        batch = api.get(f"/v1/batches/{batch_id}").json()
        return batch if done(batch) else None

    return wait(check, timeout, message=f"batch {batch_id}")


def test_a_200_image_archive_becomes_a_batch_whose_output_file_has_200_lines(api, worker, wait):
    rows = [{"filename": f"img/IMG_{n:03d}.jpg", "external_id": f"case-{n:03d}", "age": 30 + n % 50,
             "sex": "female", "site": "torso"} for n in range(1, 201)]
    members = {"manifest.csv": manifest(rows), **{row["filename"]: photo(n) for n, row in enumerate(rows, 1)}}
    batch_id = new_batch(api, "archive-200")
    archive = put_archive(api, batch_id, "zip", zipped(members))
    assert archive["format"] == "zip" and archive["method"] == "PUT" and archive["max_items"] >= 200

    sealed = api.post(f"/v1/batches/{batch_id}/seal")
    assert sealed.status_code == 200 and sealed.json()["state"] == "sealed"
    assert api.post(f"/v1/batches/{batch_id}/archive", json={"format": "zip"}).status_code == 409

    unpacked = until(wait, api, batch_id, lambda b: b["total"] == 200, timeout=120)
    assert unpacked["state"] in ("sealed", "completed")
    output, lines = batch_file(api, batch_id, "output")
    assert output["lines"] == 200
    assert [line["row"] for line in lines] == list(range(1, 201))
    assert [line["external_id"] for line in lines] == [row["external_id"] for row in rows]
    assert len({line["analysis_id"] for line in lines}) == 200
    assert {"status", "disposition", "probability", "weights", "model_version", "rejection_code",
            "error_code"} <= set(lines[0])
    errors, refused = batch_file(api, batch_id, "errors")
    assert errors["lines"] == 0 and refused == []

    # Not waiting for 200 analyses on CI's two cores: a canceled archive batch is `canceled`, not
    # completed, and its files say they are partial.
    canceled = api.post(f"/v1/batches/{batch_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["canceled_now"] > 0
    # Items a worker holds at that moment finish first (the cancel skips locked rows).
    assert until(wait, api, batch_id, lambda b: b["state"] in FINAL, timeout=60)["state"] == "canceled"
    output, lines = batch_file(api, batch_id, "output")
    assert output["partial"] is True and output["lines"] == 200
    statuses = {line["status"] for line in lines}
    assert "canceled" in statuses and statuses <= {"succeeded", "rejected", "failed", "canceled"}
    assert {line["cancel_reason"] for line in lines if line["status"] == "canceled"} == {"batch_canceled"}


def test_refused_rows_are_named_by_row_number_in_the_errors_file(api, worker, wait, context, tenant_key):
    rows = [
        {"filename": "good-1.jpg", "external_id": "good-1", "age": 61},
        {"filename": "missing.jpg", "external_id": "m-2"},
        {"filename": "bad-age.jpg", "external_id": "b-3", "age": 200},
        {"filename": "letter.jpg", "external_id": "l-4"},
        {"filename": "../secret.jpg", "external_id": "s-5"},
        {"filename": "good-6", "sex": "F", "site": "anterior torso"},  # ISIC style: no extension, ISIC names
    ]
    members = {
        "backlog/manifest.csv": manifest(rows), "backlog/good-1.jpg": photo_with_gps(1),
        "backlog/bad-age.jpg": photo(3), "backlog/letter.jpg": b"%PDF-1.4 a referral letter, not a photo",
        "secret.jpg": photo(5), "backlog/good-6.jpg": photo(6),
    }
    batch_id = new_batch(api, "archive-bad-rows")
    put_archive(api, batch_id, "zip", zipped(members))
    assert api.post(f"/v1/batches/{batch_id}/seal").status_code == 200

    done = until(wait, api, batch_id, lambda b: b["state"] in FINAL)
    assert done["state"] == "completed" and done["total"] == 2
    output, lines = batch_file(api, batch_id, "output")
    assert output["partial"] is False
    assert [(line["row"], line["external_id"]) for line in lines] == [(1, "good-1"), (6, "good-6")]
    assert lines[1]["sex"] == "female" and lines[1]["site"] == "torso"
    # A final batch's file is written once: its version and line count ride with it.
    stored = context.store.user_metadata(ARTIFACTS, batch_file_key(tenant_key[0], uuid.UUID(batch_id), BATCH_OUTPUT))
    assert stored == {"version": stored["version"], "lines": "2"} and stored["version"].startswith("20")
    errors, refused = batch_file(api, batch_id, "errors")
    assert errors["partial"] is False
    by_row = {line["row"]: line for line in refused}
    assert sorted(by_row) == [2, 3, 4, 5]
    assert by_row[2]["type"].endswith("/missing_file") and by_row[2]["file"] == "missing.jpg"
    assert by_row[3]["type"].endswith("/unprocessable") and by_row[3]["status"] == 422
    assert by_row[3]["errors"][0]["field"] == "age"
    assert by_row[4]["type"].endswith("/unsupported_media_type") and by_row[4]["status"] == 415
    assert by_row[5]["type"].endswith("/invalid_file_name") and by_row[5]["file"] == "../secret.jpg"

    # An archive's images are stored as any upload's: the pixels alone.
    analysis = api.get(f"/v1/analyses/{lines[0]['analysis_id']}").json()
    stored = httpx.get(analysis["artifacts"]["image"], timeout=30).content
    assert not Image.open(io.BytesIO(stored)).getexif()
    assert b"Jane Doe" not in stored and b"PatientCam" not in stored

    # Erasing an item erases it from the stored output file too: the file is written again.
    assert api.delete(f"/v1/analyses/{lines[1]['analysis_id']}").status_code in (200, 204)
    assert httpx.get(output["url"], timeout=30).status_code == 404
    _, after = batch_file(api, batch_id, "output")
    assert [line["row"] for line in after] == [1]


def test_an_ndjson_archive_of_upload_ids_becomes_items(api, worker, wait):
    uploads = []
    for seed in (11, 12):
        upload = api.post("/v1/uploads", json={"content_type": "image/jpeg"}).json()
        assert httpx.put(upload["url"], content=photo(seed), headers=upload["headers"], timeout=30).status_code == 200
        uploads.append(upload["id"])
    lines = [
        {"upload_id": uploads[0], "external_id": "nd-1", "age": 50},
        {"upload_id": uploads[1], "site": "lower extremity"},
        {"upload_id": str(uuid.uuid4())},
        {"upload_id": uploads[0], "external_id": "again"},
        {"upload_id": str(uuid.uuid4()), "age": "fifty"},
    ]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    batch_id = new_batch(api, "archive-ndjson")
    archive = put_archive(api, batch_id, "ndjson", body)
    assert archive["headers"]["Content-Type"] == "application/x-ndjson"
    assert api.post(f"/v1/batches/{batch_id}/seal").status_code == 200

    done = until(wait, api, batch_id, lambda b: b["state"] in FINAL)
    assert done["state"] == "completed" and done["total"] == 2
    _, items = batch_file(api, batch_id, "output")
    assert [(item["row"], item["external_id"]) for item in items] == [(1, "nd-1"), (2, None)]
    assert items[1]["site"] == "lower extremity"
    _, refused = batch_file(api, batch_id, "errors")
    assert [(line["row"], line["type"].rsplit("/", 1)[1]) for line in refused] == [
        (3, "not_found"), (4, "conflict"), (5, "unprocessable")]
    assert refused[0]["file"] == lines[2]["upload_id"]


def test_an_archive_is_refused_unless_put_readable_and_small_enough(api, worker, wait, context, tenant_key):
    batch_id = new_batch(api, "archive-refusals")
    archive = api.post(f"/v1/batches/{batch_id}/archive", json={"format": "tar"})
    assert archive.status_code == 201
    assert api.post(f"/v1/batches/{batch_id}/archive", json={"format": "rar"}).status_code == 422
    not_put = api.post(f"/v1/batches/{batch_id}/seal")
    assert not_put.status_code == 409 and "PUT it to its url first" in not_put.json()["detail"]
    assert api.get(f"/v1/batches/{batch_id}").json()["state"] == "open"

    # Larger than ARCHIVE_MAX_MB: refused when sealing, and the batch stays open.
    tiny = AppContext(context.settings.replace(archive_max_mb=1))
    try:
        put = httpx.put(archive.json()["url"], content=os.urandom(1024 * 1024 + 1), timeout=60)
        assert put.status_code == 200
        with session_scope(tiny.session_factory) as session, pytest.raises(PayloadTooLarge, match="1 MB limit"):
            batch_service.seal(tiny, session, TenantId(tenant_key[0]), uuid.UUID(batch_id))
    finally:
        tiny.close()

    # Not a tar at all: refused whole by the worker, listed as the errors file's one line.
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive_file:
        info = tarfile.TarInfo("photo.jpg")
        data = photo(1)
        info.size = len(data)
        archive_file.addfile(info, io.BytesIO(data))
    assert httpx.put(archive.json()["url"], content=tar.getvalue(), timeout=60).status_code == 200
    assert api.post(f"/v1/batches/{batch_id}/seal").status_code == 200
    done = until(wait, api, batch_id, lambda b: b["state"] in FINAL, timeout=60)
    assert done["state"] == "completed" and done["total"] == 0
    _, refused = batch_file(api, batch_id, "errors")
    assert len(refused) == 1 and refused[0]["row"] is None
    assert refused[0]["type"].endswith("/invalid_archive") and "no manifest.csv" in refused[0]["detail"]
