"""Cleaning an uploaded image: bounded decoding, every pixel mode to RGB, corrupt metadata refused."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from api.multipart import clean_image
from api.problems import ImageTooLarge, UnreadableImage


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def test_a_huge_jpeg_is_decoded_dct_scaled_but_never_below_the_working_size():
    raw = _encode(Image.new("RGB", (9000, 6000), (200, 120, 90)), "JPEG", quality=50)
    clean = clean_image(raw, max_pixels=60_000_000, max_side=4096)
    assert (clean.width, clean.height) == (4500, 3000)
    stored = Image.open(io.BytesIO(clean.data))
    assert stored.size == (4500, 3000)
    small = clean_image(_encode(Image.new("RGB", (3000, 2000)), "JPEG"), max_pixels=60_000_000, max_side=4096)
    assert (small.width, small.height) == (3000, 2000)


def test_the_pixel_cap_is_checked_before_decoding():
    raw = _encode(Image.new("RGB", (3000, 2000)), "PNG")
    with pytest.raises(ImageTooLarge):
        clean_image(raw, max_pixels=5_000_000)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "1"])
def test_every_png_mode_is_stored_as_rgb(mode):
    clean = clean_image(_encode(Image.new(mode, (40, 30)), "PNG"), max_pixels=40_000_000)
    assert Image.open(io.BytesIO(clean.data)).mode == "RGB"


def test_a_cmyk_jpeg_is_stored_as_rgb():
    clean = clean_image(_encode(Image.new("CMYK", (40, 30), (0, 80, 120, 10)), "JPEG"), max_pixels=40_000_000)
    assert Image.open(io.BytesIO(clean.data)).mode == "RGB"


def test_an_unusable_icc_profile_is_ignored_not_fatal():
    raw = _encode(Image.new("RGB", (40, 30), (10, 200, 30)), "PNG", icc_profile=b"not a profile at all" * 10)
    stored = Image.open(io.BytesIO(clean_image(raw, max_pixels=40_000_000).data))
    assert stored.getpixel((5, 5)) == (10, 200, 30)
    assert "icc_profile" not in stored.info


def test_orientation_is_applied_before_the_exif_is_dropped():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    raw = _encode(Image.new("RGB", (60, 20)), "JPEG", exif=exif)
    clean = clean_image(raw, max_pixels=40_000_000)
    assert (clean.width, clean.height) == (20, 60)
    assert not Image.open(io.BytesIO(clean.data)).getexif()


def test_malformed_png_exif_is_an_unreadable_image():
    png = _encode(Image.new("RGB", (40, 30)), "PNG")
    payload = b"XX\x00*\x00\x00\x00\x08"
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    at = png.index(b"IDAT") - 4
    with pytest.raises(UnreadableImage):
        clean_image(png[:at] + chunk + png[at:], max_pixels=40_000_000)
