"""Bad uploads get a clear 4xx problem and leave no object and no row behind."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image
from sqlalchemy import func, select

from shared.tables import Analysis
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
    [
        ({"age": "130"}, "age"), ({"sex": "robot"}, "sex"), ({"site": "elbow"}, "site"),
        ({"priority": "vip"}, "priority"),
    ],
)
def test_invalid_metadata_is_422_naming_the_field(api, context, tenant_key, fields, field):
    response = api.post("/v1/analyses", files={"image": ("a.jpg", GOOD, "image/jpeg")}, data=fields)
    assert response.status_code == 422
    assert field in response.json()["detail"]
    assert _row_count(context, tenant_key[0]) == 0


def test_missing_image_field_is_400(api):
    # A multipart form with fields only (a part without a filename is a plain field).
    response = api.post("/v1/analyses", files={"age": (None, "3")})
    assert response.status_code == 400
    assert "image" in response.json()["detail"]


def test_a_file_part_under_another_name_is_refused_naming_it(api):
    response = api.post("/v1/analyses", data={"age": "3"}, files={"other": ("a.txt", b"x", "text/plain")})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("other: was sent as a file")


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


# --- PHI in metadata: none of it may reach the stored object ---------------------------------

PHI = "PATIENT Jane Doe 1961-02-03"
ADOBE_RGB_D50 = {  # Adobe RGB (1998) primaries, Bradford-adapted to D50 as ICC wants
    b"rXYZ": (0.6097559, 0.3111145, 0.0194702),
    b"gXYZ": (0.2052401, 0.6256714, 0.0608902),
    b"bXYZ": (0.1492240, 0.0632141, 0.7445396),
}


def _xyz_tag(values) -> bytes:
    return b"XYZ " + b"\0" * 4 + b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def _text_tag(text: str) -> bytes:
    utf16 = text.encode("utf-16-be")
    return b"mluc" + b"\0" * 4 + struct.pack(">II", 1, 12) + b"enUS" + struct.pack(">II", len(utf16), 28) + utf16


def wide_gamut_profile(description: str) -> bytes:
    """An ICC profile with Adobe RGB primaries whose description is ``description``, built by
    rewriting the tags of LittleCMS's sRGB profile."""
    from PIL import ImageCms

    base = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    (count,) = struct.unpack(">I", base[128:132])
    tags = []
    for index in range(count):
        sig, offset, size = struct.unpack(">4sII", base[132 + 12 * index : 144 + 12 * index])
        payload = _xyz_tag(ADOBE_RGB_D50[sig]) if sig in ADOBE_RGB_D50 else base[offset : offset + size]
        tags.append((sig, _text_tag(description) if sig == b"desc" else payload))
    data, entries = b"", b""
    start = 128 + 4 + 12 * len(tags)
    for sig, payload in tags:
        data += b"\0" * (-len(data) % 4)
        entries += struct.pack(">4sII", sig, start + len(data), len(payload))
        data += payload
    header = bytearray(base[:128])
    header[0:4] = struct.pack(">I", start + len(data))
    header[84:100] = b"\0" * 16  # profile id (an MD5) is optional
    return bytes(header) + struct.pack(">I", len(tags)) + entries + data


def _gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010E] = PHI  # ImageDescription
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (51.0, 30.0, 12.0)
    return exif


def _xmp() -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="{PHI}"/></rdf:RDF></x:xmpmeta>'
    ).encode()


def _stored(api, context, payload: bytes, name: str, content_type: str) -> bytes:
    response = api.post("/v1/analyses", files={"image": (name, payload, content_type)})
    assert response.status_code == 202, response.text
    with context.session_factory() as session:
        key = session.get(Analysis, response.json()["id"]).image_key
    return context.store.get("images", key)


def _assert_no_phi(stored: bytes) -> None:
    for needle in (PHI.encode(), PHI.encode("utf-16-be"), b"Jane Doe", b"xmpmeta", b"GPS"):
        assert needle not in stored
    reopened = Image.open(io.BytesIO(stored))
    assert not reopened.getexif()
    assert not {"icc_profile", "comment", "exif", "xmp", "XML:com.adobe.xmp"} & set(reopened.info)


def test_jpeg_comment_icc_xmp_and_gps_never_reach_storage(api, context):
    image = Image.fromarray(make_lesion(seed=5, size=(120, 160)).image)
    out = io.BytesIO()
    image.save(out, format="JPEG", comment=PHI.encode(), icc_profile=wide_gamut_profile(PHI), xmp=_xmp(),
               exif=_gps_exif())
    sent = out.getvalue()
    assert PHI.encode() in sent and PHI.encode("utf-16-be") in sent and b"xmpmeta" in sent
    _assert_no_phi(_stored(api, context, sent, "a.jpg", "image/jpeg"))


def test_png_iccp_xmp_text_and_exif_never_reach_storage(api, context):
    from PIL import PngImagePlugin

    image = Image.fromarray(make_lesion(seed=6, size=(120, 160)).image)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", _xmp().decode())
    info.add_text("Comment", PHI)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, icc_profile=wide_gamut_profile(PHI), exif=_gps_exif())
    sent = out.getvalue()
    assert b"iCCP" in sent and b"eXIf" in sent and b"xmpmeta" in sent
    stored = _stored(api, context, sent, "a.png", "image/png")
    _assert_no_phi(stored)
    assert b"iCCP" not in stored and b"eXIf" not in stored and b"tEXt" not in stored and b"iTXt" not in stored


def test_a_wide_gamut_photo_is_stored_in_srgb(api, context):
    """The profile is dropped, so its colours must be converted, not reinterpreted."""
    from PIL import ImageCms

    profile = wide_gamut_profile("Adobe RGB (1998)")
    image = Image.new("RGB", (64, 48), (40, 160, 60))  # a green that differs a lot between the two
    out = io.BytesIO()
    image.save(out, format="PNG", icc_profile=profile)
    stored = Image.open(io.BytesIO(_stored(api, context, out.getvalue(), "a.png", "image/png"))).convert("RGB")
    expected = ImageCms.profileToProfile(
        image, ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB"), outputMode="RGB"
    ).getpixel((10, 10))
    got = stored.getpixel((10, 10))
    assert all(abs(a - b) <= 1 for a, b in zip(got, expected, strict=True)), (got, expected)
    assert max(abs(a - b) for a, b in zip(got, (40, 160, 60), strict=True)) > 10  # really converted
