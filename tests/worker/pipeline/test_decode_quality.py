"""Items 5 and 12: Pillow decoding with pixel limits and EXIF orientation; the blur gate."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from worker.pipeline.decode import decode_image
from worker.pipeline.errors import ImageDecodeError
from worker.pipeline.pipeline import Finding, LesionInput, Pipeline, PipelineOptions, Rejection
from worker.pipeline.quality import blur_score
from worker.pipeline.synthetic import encode_jpeg, encode_png, make_lesion

LIMIT = 40_000_000


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_decodes_jpeg_and_png_to_rgb_uint8():
    image = make_lesion(0, (120, 200)).image
    np.testing.assert_array_equal(decode_image(encode_png(image), LIMIT), image)
    decoded = decode_image(encode_jpeg(image), LIMIT)
    assert decoded.shape == (120, 200, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - image).mean() < 8


def test_exif_orientation_is_applied():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[:10, :10] = (255, 0, 0)  # red marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    upright = decode_image(buffer.getvalue(), LIMIT)
    assert upright.shape == (200, 100, 3)
    assert upright[:10, -10:, 0].mean() > 200 and upright[:10, :10, 0].mean() < 50


def test_pixel_limit_refuses_bombs_before_decompressing():
    # Pillow's own guard fires first for absurd sizes, ours for anything over the configured limit.
    with pytest.raises(ImageDecodeError, match=r"above the limit of 40000000 pixels .*2500000000 pixels"):
        decode_image(_png_claiming(50_000, 50_000), LIMIT)
    with pytest.raises(ImageDecodeError, match=r"9000x9000 = 81000000 pixels, above the limit of 40000000"):
        decode_image(_png_claiming(9_000, 9_000), LIMIT)
    small_limit = decode_image(encode_png(make_lesion(0, (100, 100)).image), 10_000)
    assert small_limit.shape == (100, 100, 3)
    with pytest.raises(ImageDecodeError, match="above the limit of 9999"):
        decode_image(encode_png(make_lesion(0, (100, 100)).image), 9_999)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"definitely not an image", "not a readable JPEG or PNG"),
        (encode_jpeg(make_lesion(0, (200, 200)).image)[:400], "corrupt or truncated"),
    ],
    ids=["empty", "garbage", "truncated-jpeg"],
)
def test_unreadable_uploads_raise_decode_errors(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data, LIMIT)


def test_formats_outside_jpeg_and_png_are_refused():
    buffer = io.BytesIO()
    Image.fromarray(make_lesion(0, (64, 64)).image).save(buffer, format="GIF")
    with pytest.raises(ImageDecodeError, match="not a readable JPEG or PNG"):
        decode_image(buffer.getvalue(), LIMIT)


def test_transparency_becomes_white_and_grayscale_becomes_rgb():
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    assert (decode_image(buffer.getvalue(), LIMIT) == 255).all()
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 48), 77, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    gray = decode_image(buffer.getvalue(), LIMIT)
    assert gray.shape == (32, 48, 3) and (gray == 77).all()


def test_blur_score_separates_sharp_from_blurred():
    sharp = make_lesion(4)
    blurred = make_lesion(4, blur=2.0)
    assert blur_score(sharp.image) > 150
    assert blur_score(blurred.image) < 20


def test_blurry_image_is_rejected_with_its_score(classical_pipeline):
    outcome = classical_pipeline.run([LesionInput(encode_png(make_lesion(4, (200, 200), blur=2.0).image))])[0]
    assert isinstance(outcome, Rejection) and outcome.code == "blurry"
    score = outcome.scores["blur_score"]
    assert score < 100 and outcome.scores["blur_threshold"] == 100.0
    assert f"{score:.1f}" in outcome.detail and "below the threshold 100" in outcome.detail


def test_blur_threshold_is_configurable(classical_registry):
    blurred = LesionInput(encode_png(make_lesion(4, (200, 200), blur=1.0).image))
    lenient = Pipeline(classical_registry, PipelineOptions(
        seg_size=128, cls_size=128, min_image_side=32, blur_threshold=1.0
    ))
    strict = Pipeline(classical_registry, PipelineOptions(
        seg_size=128, cls_size=128, min_image_side=32, blur_threshold=1e6
    ))
    assert isinstance(lenient.run([blurred])[0], Finding)
    sharp = strict.run([LesionInput(encode_png(make_lesion(4, (200, 200)).image))])[0]
    assert isinstance(sharp, Rejection) and sharp.code == "blurry"


def test_unreadable_and_oversized_uploads_are_rejections_not_errors(classical_registry):
    pipeline = Pipeline(classical_registry, PipelineOptions(
        seg_size=128, cls_size=128, min_image_side=32, max_image_pixels=30_000
    ))
    outcomes = pipeline.run(
        [LesionInput(b"\xff\xd8\xff garbage"), LesionInput(encode_png(make_lesion(0, (200, 200)).image))]
    )
    assert [o.code for o in outcomes] == ["unreadable_image", "unreadable_image"]
    assert "could not be read" in outcomes[0].detail
    assert "40000 pixels, above the limit of 30000" in outcomes[1].detail
