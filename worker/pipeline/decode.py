"""Image decoding with Pillow: format allow-list, pixel limit, EXIF orientation, RGB output."""

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from worker.pipeline.errors import ImageDecodeError

ACCEPTED_FORMATS = ("JPEG", "PNG")
_MIN_SIDE = 8


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode uploaded bytes into an (H, W, 3) uint8 RGB array, upright per its EXIF tag.

    The pixel count is checked from the header before any pixel data is decompressed, so a
    small file that claims a huge canvas (a decompression bomb) is refused cheaply.
    """
    return decode_upright(data, max_pixels)[0]


def decode_upright(data: bytes, max_pixels: int, keep: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """``decode_image``, plus the upright (height, width) of the upload as sent.

    With ``keep`` = (short side, long side), a JPEG is decoded with DCT scaling (Pillow's
    ``draft``) at the smallest 1/2, 1/4 or 1/8 scale whose short and long sides still reach
    ``keep``: a 4000 x 3000 photo for 512-pixel networks and 1024-pixel artifacts decodes at
    1/2 for a fraction of the time. The returned size is always the upload's own.
    """
    if not data:
        raise ImageDecodeError("the upload is empty")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels, above the limit of "
                    f"{max_pixels}; send a smaller image"
                )
            if min(width, height) < _MIN_SIDE:
                raise ImageDecodeError(f"image is {width}x{height} pixels, too small to analyse")
            if keep is not None and image.format == "JPEG":
                short, long = keep
                image.draft("RGB", (long, short) if width >= height else (short, long))
            image.load()
            stored_wide = image.size[0] > image.size[1]
            rgb = _to_rgb(ImageOps.exif_transpose(image))
            # A quarter turn in the EXIF tag swaps the sides (square images are unaffected).
            turned = (rgb.size[0] > rgb.size[1]) != stored_wide
            upright = (width, height) if turned else (height, width)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not a readable {' or '.join(ACCEPTED_FORMATS)} image") from exc
    except Image.DecompressionBombError as exc:  # Pillow's own guard, for absurd sizes
        raise ImageDecodeError(
            f"image is above the limit of {max_pixels} pixels ({exc}); send a smaller image"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"image data is corrupt or truncated: {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8).copy(), upright


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
