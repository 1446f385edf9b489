"""Uploaded bytes to the pipeline's (H, W, 3) uint8 RGB array, through the one decoder
(``shared.images.decode``) the API uses too: same formats, limits and orientation."""

import numpy as np
from PIL import Image

from shared import images
from worker.pipeline.errors import ImageDecodeError

_MIN_SIDE = 8


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode uploaded bytes into an (H, W, 3) uint8 RGB array, upright per its EXIF tag,
    read-only (the decoder's own buffer: whoever needs to draw on it takes a copy).

    The pixel count is checked from the header before any pixel data is decompressed, so a
    small file that claims a huge canvas (a decompression bomb) is refused cheaply.
    """
    return decode_upright(data, max_pixels)[0]


def decode_upright(
    data: bytes, max_pixels: int, keep: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """``decode_image``, plus the upright (height, width) of the upload as sent.

    With ``keep`` = (short side, long side), a JPEG is decoded with DCT scaling (Pillow's
    ``draft``) at the smallest 1/2, 1/4 or 1/8 scale whose short and long sides still reach
    ``keep``: a 4000 x 3000 photo for 512-pixel networks and 1024-pixel artifacts decodes at
    1/2 for a fraction of the time. The returned size is always the upload's own.
    """
    try:
        decoded = images.decode(data, max_pixels, keep=keep, min_side=_MIN_SIDE)
    except images.ImageRejected as exc:
        raise ImageDecodeError(exc.detail) from exc
    with decoded.image as image:
        try:
            rgb = _to_rgb(image)
        except (OSError, ValueError) as exc:
            raise ImageDecodeError(f"the {decoded.format} pixels could not be converted to RGB: {exc}") from exc
        # Read-only (the decoded bytes themselves, no copy of them): every step after decoding
        # reads the photo and writes its results to arrays of its own (issue 27).
        pixels = np.asarray(rgb, dtype=np.uint8)
    return pixels, decoded.source_size


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become white (the usual viewer background), not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        scaled = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if scaled.max() > 255 else 255.0
        return Image.fromarray(np.clip(scaled / peak * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")
