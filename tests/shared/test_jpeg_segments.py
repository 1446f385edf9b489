"""A JPEG's metadata cut out losslessly (issue 27, round 8): the same pixels, none of the
metadata, nothing after the image; files it does not handle are left to the re-encode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared import images
from shared.jpeg_segments import strip_metadata
from worker.pipeline.synthetic import make_lesion

PATIENT = b"Jane Doe 1970-01-01 MRN 0042"


def _photo(mode: str = "RGB") -> Image.Image:
    image = Image.fromarray(make_lesion(11, (120, 160), radius_frac=0.25, hair=True).image)
    return image.convert(mode)


def _jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", **options)
    return out.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture)


def _markers(data: bytes) -> list[int]:
    """The markers of the segments before the first scan."""
    found, position = [], 2
    while data[position + 1] != 0xDA:
        found.append(data[position + 1])
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return found


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = PATIENT.decode()  # ImageDescription
    exif[0x9286] = PATIENT.decode()  # UserComment (IFD0 here, as some cameras write it)
    return exif.tobytes()


VARIANTS = {
    "baseline 4:2:0": {"quality": 90},
    "4:4:4": {"quality": 95, "subsampling": 0},
    "progressive": {"quality": 85, "progressive": True},
    "optimised tables": {"quality": 80, "optimize": True},
    "restart markers": {"quality": 90, "restart_marker_blocks": 4},
}


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_pixels_stay_and_the_metadata_goes(options):
    icc = b"\x00\x00\x02\x00" + PATIENT * 8  # an APP2 ICC payload: only its bytes matter here
    raw = _jpeg(_photo(), exif=_exif(), comment=PATIENT, icc_profile=icc, **options)
    raw += b"\xff\xd8" + PATIENT + b"\xff\xd9"  # something appended after the image
    stripped = strip_metadata(raw)
    assert stripped is not None
    np.testing.assert_array_equal(_pixels(stripped), _pixels(raw))
    assert PATIENT not in stripped and PATIENT[:8] not in stripped
    assert stripped.endswith(b"\xff\xd9") and stripped.count(b"\xff\xd9") == 1
    # Only the JFIF header the file had, then tables and the frame: no APP1/APP2/COM.
    assert [m for m in _markers(stripped) if m >= 0xE0] == [0xE0]
    with Image.open(io.BytesIO(stripped)) as picture:
        assert not picture.getexif() and "icc_profile" not in picture.info and "comment" not in picture.info
    assert len(stripped) < len(raw)


def test_a_grayscale_jpeg_and_one_with_only_an_adobe_marker_decode_the_same():
    gray = _jpeg(_photo("L"), comment=PATIENT)
    assert np.array_equal(_pixels(strip_metadata(gray)), _pixels(gray))
    # CMYK JPEGs carry an Adobe APP14 whose colour transform the decoder needs: it is kept.
    cmyk = _jpeg(_photo("CMYK"), comment=PATIENT)
    stripped = strip_metadata(cmyk)
    assert stripped is not None and 0xEE in _markers(stripped) and PATIENT not in stripped
    np.testing.assert_array_equal(_pixels(stripped), _pixels(cmyk))


def test_files_it_does_not_handle_are_left_to_the_re_encode():
    raw = _jpeg(_photo(), quality=90)
    sof = raw.index(b"\xff\xc0")
    arithmetic = raw[:sof] + b"\xff\xc9" + raw[sof + 2 :]
    assert strip_metadata(arithmetic) is None
    assert strip_metadata(raw[: len(raw) // 2]) is None, "truncated in its scan"
    assert strip_metadata(raw[:sof]) is None, "no frame and no scan"
    bad_length = raw[:4] + b"\xff\xff" + raw[6:]
    assert strip_metadata(bad_length) is None
    assert strip_metadata(b"\x89PNG\r\n\x1a\n") is None


def test_an_upright_rgb_jpeg_is_stored_as_its_own_compressed_data():
    raw = _jpeg(_photo(), quality=88, exif=_exif(), comment=PATIENT)
    clean = images.clean_image(raw, max_pixels=40_000_000)
    scan = raw.index(b"\xff\xda")
    assert raw[scan:-2] in clean.data, "the scan's entropy-coded data is the upload's own"
    assert PATIENT not in clean.data
    np.testing.assert_array_equal(_pixels(clean.data), _pixels(raw))
    assert (clean.width, clean.height, clean.content_type) == (160, 120, "image/jpeg")


@pytest.mark.parametrize("why", ["turned by its EXIF", "ICC profile", "DCT-scaled"])
def test_a_jpeg_needing_its_pixels_changed_is_re_encoded(why):
    photo = _photo()
    if why == "turned by its EXIF":
        exif = Image.Exif()
        exif[0x0112] = 3  # upside down: the same size once turned
        raw = _jpeg(photo, exif=exif.tobytes())
    elif why == "ICC profile":
        from PIL import ImageCms

        profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB"))
        raw = _jpeg(photo, icc_profile=profile.tobytes())
    else:
        raw = _jpeg(photo.resize((640, 480)))
    clean = images.clean_image(raw, max_pixels=40_000_000, max_side=200)
    scan = raw.index(b"\xff\xda")
    assert raw[scan : scan + 200] not in clean.data, "re-encoded from its pixels"
    with Image.open(io.BytesIO(clean.data)) as picture:
        assert not picture.getexif() and "icc_profile" not in picture.info
        if why == "turned by its EXIF":
            stored = np.asarray(picture).astype(int)
            np.testing.assert_allclose(stored, _pixels(raw)[::-1, ::-1].astype(int), atol=12)
