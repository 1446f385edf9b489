"""Bad uploads get a clear 4xx problem and leave no object and no row behind."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image
from sqlalchemy import func, select

from shared.models import Analysis
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def _bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header claims 400 megapixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * (width * 3 + 1) * 64)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _object_count(context) -> int:
    bucket = context.settings.bucket("images")
    return sum(1 for _ in context.store.client.list_objects(bucket, recursive=True))


def _row_count(context, tenant_id) -> int:
    with context.session_factory() as session:
        return session.execute(
            select(func.count()).select_from(Analysis).where(Analysis.tenant_id == tenant_id)
        ).scalar_one()


GOOD = encode_jpeg(make_lesion(seed=2, size=(120, 160)).image)
CASES = {
    "empty": (b"", "image/jpeg", 422, "unreadable_image"),
    "truncated": (GOOD[: len(GOOD) // 2], "image/jpeg", 422, "unreadable_image"),
    "text_as_jpeg": (b"hello, this is not an image at all\n" * 10, "image/jpeg", 415, "unsupported_media_type"),
    "decompression_bomb": (_bomb_png(), "image/png", 422, "image_too_large"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_upload_is_refused_and_leaves_nothing(api, context, tenant_key, case):
    payload, content_type, status, code = CASES[case]
    before = _object_count(context)
    response = api.post("/v1/analyses", files={"image": ("x.jpg", payload, content_type)}, data={"age": "50"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith(code)
    assert problem["detail"]
    assert _object_count(context) == before
    assert _row_count(context, tenant_key[0]) == 0


def test_oversized_upload_is_413_while_streaming(api, context, tenant_key):
    limit = context.settings.max_upload_bytes
    before = _object_count(context)

    def body():
        # Chunked upload without Content-Length: the limit must trip while reading.
        boundary = b"xyzBOUNDARY"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
        yield b"Content-Type: image/jpeg\r\n\r\n" + GOOD[:100]
        chunk = b"\0" * (1 << 20)
        for _ in range(limit // len(chunk) + 2):
            yield chunk
        yield b"\r\n--" + boundary + b"--\r\n"

    response = api.post(
        "/v1/analyses",
        content=body(),
        headers={"Content-Type": "multipart/form-data; boundary=xyzBOUNDARY"},
    )
    assert response.status_code == 413
    assert f"{context.settings.max_upload_mb} MB" in response.json()["detail"]
    assert _object_count(context) == before
    assert _row_count(context, tenant_key[0]) == 0


@pytest.mark.parametrize(
    "fields, field",
    [({"age": "130"}, "age"), ({"sex": "robot"}, "sex"), ({"site": "elbow"}, "site"), ({"priority": "vip"}, "priority")],
)
def test_invalid_metadata_is_422_naming_the_field(api, context, tenant_key, fields, field):
    response = api.post("/v1/analyses", files={"image": ("a.jpg", GOOD, "image/jpeg")}, data=fields)
    assert response.status_code == 422
    assert field in response.json()["detail"]
    assert _row_count(context, tenant_key[0]) == 0


def test_missing_image_field_is_400(api):
    response = api.post("/v1/analyses", data={"age": "3"}, files={"other": ("a.txt", b"x", "text/plain")})
    assert response.status_code == 400
    assert "image" in response.json()["detail"]


def test_image_metadata_is_stripped_before_storage(api, context):
    image = Image.fromarray(make_lesion(seed=4, size=(120, 160)).image)
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"       # Make
    exif[0xA431] = "SERIAL-123456"   # BodySerialNumber
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (51.0, 30.0, 12.0)  # GPSLatitudeRef, GPSLatitude
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    assert b"SERIAL-123456" in out.getvalue()
    assert Image.open(io.BytesIO(out.getvalue())).getexif().get_ifd(0x8825)

    created = api.post("/v1/analyses", files={"image": ("a.jpg", out.getvalue(), "image/jpeg")}).json()
    with context.session_factory() as session:
        key = session.get(Analysis, created["id"]).image_key
    stored = context.store.get("images", key)
    assert b"SERIAL-123456" not in stored and b"SecretCam" not in stored
    assert not Image.open(io.BytesIO(stored)).getexif()
    assert b"GPS" not in stored

    png = io.BytesIO()
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", "Jane Doe")
    image.save(png, format="PNG", pnginfo=info)
    created = api.post("/v1/analyses", files={"image": ("a.png", png.getvalue(), "image/png")}).json()
    with context.session_factory() as session:
        key = session.get(Analysis, created["id"]).image_key
    assert b"Jane Doe" not in context.store.get("images", key)
