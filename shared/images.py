"""Turning uploaded bytes into a clean image: type from content, pixel limits, metadata gone.

Shared by the API (multipart uploads) and the ingest worker (direct uploads), so both accept
and refuse exactly the same files. No FastAPI here: refusals are ``ImageRejected`` with the
problem code and HTTP status the API answers for them (api.uploads maps them to problems).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageRejected(Exception):
    """The file is not an image we accept; ``code`` and ``status`` are the API's answer."""

    code = "unreadable_image"
    status = 422

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class UnreadableImageError(ImageRejected):
    code, status = "unreadable_image", 422


class ImageTooLargeError(ImageRejected):
    code, status = "image_too_large", 422


class UnsupportedImageError(ImageRejected):
    code, status = "unsupported_media_type", 415


class UploadTooLargeError(ImageRejected):
    code, status = "payload_too_large", 413


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int
    original_sha256: str


def clean_image(raw: bytes, max_pixels: int, max_side: int = 4096) -> CleanImage:
    """Decide the type from the bytes, decode within pixel limits, and re-encode the pixels
    alone: EXIF (GPS, dates, serials), JPEG comments, XMP, ICC profiles (whose text can name
    a patient) and PNG text chunks never reach storage. A photo with an ICC profile is
    converted to sRGB first, so its colours (and the ITA measured from them) stay right.

    One full-size copy at a time: orientation is applied in place, the colour conversion
    replaces the decoded image, and JPEGs much larger than ``max_side`` decode DCT-scaled."""
    if not raw:
        raise UnreadableImageError("the image file is empty")
    if raw.startswith(JPEG_MAGIC):
        fmt, content_type, extension = "JPEG", "image/jpeg", "jpg"
    elif raw.startswith(PNG_MAGIC):
        fmt, content_type, extension = "PNG", "image/png", "png"
    else:
        raise UnsupportedImageError(
            "the file is not a JPEG or PNG image (judged from its content, not its name or declared type)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=[fmt])
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"the image is {width}x{height} pixels, over the {max_pixels:,}-pixel limit; downscale it"
                )
            if fmt == "JPEG" and max(width, height) > max_side:
                scale = max_side / max(width, height)
                image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
            image.load()
            icc_profile = image.info.get("icc_profile")
            # Reads EXIF (PNG eXIf too): malformed metadata is an unreadable image, not a 500.
            ImageOps.exif_transpose(image, in_place=True)
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"the image exceeds the {max_pixels:,}-pixel limit") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError,
            struct.error) as exc:
        raise UnreadableImageError(
            f"the {fmt} data could not be decoded ({type(exc).__name__}); the file may be truncated or corrupt"
        ) from None
    pixels = _to_srgb(image, icc_profile)
    if pixels is not image:
        image.close()
    pixels.info = {}  # what the encoder would copy: comment, icc_profile, exif, xmp, dpi, text
    out = io.BytesIO()
    if fmt == "JPEG":
        pixels.save(out, format="JPEG", quality=95, subsampling=0)
    else:
        pixels.save(out, format="PNG", optimize=False)
    clean = CleanImage(
        data=out.getvalue(),
        content_type=content_type,
        extension=extension,
        width=pixels.width,
        height=pixels.height,
        original_sha256=hashlib.sha256(raw).hexdigest(),
    )
    pixels.close()
    return clean


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _to_srgb(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """RGB pixels in sRGB: through the embedded profile when there is a usable one."""
    if icc_profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            if image.mode not in ("RGB", "CMYK", "L"):
                image = image.convert("RGB")
            return ImageCms.profileToProfile(
                image, source, _srgb(), outputMode="RGB", inPlace=False
            )
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # an unusable profile: treat the pixels as sRGB, as browsers do
    return image if image.mode == "RGB" else image.convert("RGB")
