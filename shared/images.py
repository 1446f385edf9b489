"""The one image decoder, and turning uploaded bytes into a clean image.

``decode`` (type from content, pixel limits, optional DCT-scaled JPEG decode, EXIF
orientation) is used by the API and the ingest worker through ``clean_image`` (metadata
gone, sRGB; re-encoded, or a JPEG's own data with its metadata segments cut out; DICOM files
too, their pixels decoded by ``shared.dicom.reading``),
and by the pipeline (``worker.pipeline.decode``), so every path
accepts and refuses the same files for the same reasons. No FastAPI here: refusals are
``ImageRejected`` with the problem code and HTTP status the API answers for them
(api.multipart maps them to problems; the pipeline to an ``unreadable_image`` rejection).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import struct
import warnings
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

from shared import jpeg_segments
from shared.dicom import reading as dicom
from shared.dicom.reading import DicomInput

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png"}


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


class UnsupportedDicomError(ImageRejected):
    """A readable DICOM object that is not an image we analyse (SOP class, transfer syntax,
    frames, no colour): the refusal names what it is (issue 23)."""

    code, status = "unsupported_dicom", 422


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int
    original_sha256: str
    dicom: DicomInput | None = None
    """Sent as DICOM: the source instance's UIDs and the header's patient context (never stored as bytes)."""


ACCEPTED = "JPEG or PNG"
UPLOADS_ACCEPTED = "JPEG, PNG or DICOM"  # what clean_image takes; stored images are JPEG or PNG
# Everything Pillow raises for data it cannot parse (including malformed EXIF read while
# turning the image upright): an unreadable image, never a 500.
_UNREADABLE = (UnidentifiedImageError, OSError, EOFError, SyntaxError, ValueError, TypeError, KeyError, IndexError,
               struct.error)


@dataclass
class DecodedImage:
    image: Image.Image
    """Loaded and upright (EXIF orientation applied), in the mode it was stored in; the caller closes it."""
    format: str
    """``JPEG`` or ``PNG``, judged from the content."""
    icc_profile: bytes | None
    source_size: tuple[int, int]
    """(height, width) of the upload as sent, upright, whatever DCT scaling decoded."""
    as_stored: bool = False
    """The pixels are the file's own as stored: no EXIF turn applied and no DCT scaling."""


def decode(
    raw: bytes,
    max_pixels: int,
    *,
    max_side: int | None = None,
    keep: tuple[int, int] | None = None,
    min_side: int = 1,
) -> DecodedImage:
    """Decide the type from the bytes, check the pixel count from the header before any pixel
    data is decompressed (a small file claiming a huge canvas is refused cheaply), decode, and
    turn the image upright.

    A JPEG can decode DCT-scaled (Pillow's ``draft``: 1/2, 1/4 or 1/8, never below the size
    asked for): with ``max_side``, one whose long side is over it keeps at least ``max_side``
    on its long side; with ``keep`` = (short side, long side), the smallest scale whose sides
    still reach ``keep``. PNGs always decode at full size. Raises ``ImageRejected``."""
    if not raw:
        raise UnreadableImageError("the image file is empty")
    if raw.startswith(JPEG_MAGIC):
        fmt = "JPEG"
    elif raw.startswith(PNG_MAGIC):
        fmt = "PNG"
    else:
        raise UnsupportedImageError(
            f"the file is not a readable {ACCEPTED} image (judged from its content, not its name or declared type)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=[fmt])
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"the image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}; "
                    "downscale it or send a smaller image"
                )
            if min(width, height) < min_side:
                raise UnreadableImageError(f"the image is {width}x{height} pixels, too small to analyse")
            if fmt == "JPEG":
                draft_size = _draft_size(width, height, max_side, keep)
                if draft_size is not None:
                    image.draft(image.mode, draft_size)
            image.load()
            icc_profile = image.info.get("icc_profile")
            stored_wide = image.width > image.height
            as_stored = image.size == (width, height) and image.getexif().get(ExifTags.Base.Orientation, 1) == 1
            ImageOps.exif_transpose(image, in_place=True)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"the image is above the limit of {max_pixels} pixels ({exc}); downscale it or send a smaller image"
        ) from None
    except _UNREADABLE as exc:
        raise UnreadableImageError(
            f"the {fmt} data could not be decoded ({type(exc).__name__}); the file may be corrupt or truncated"
        ) from None
    # A quarter turn in the EXIF tag swaps the sides (square images are unaffected).
    turned = (image.width > image.height) != stored_wide
    return DecodedImage(image, fmt, icc_profile, (width, height) if turned else (height, width), as_stored)


def _draft_size(
    width: int, height: int, max_side: int | None, keep: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The smallest (width, height) a DCT-scaled decode must still reach, or None for full size."""
    if keep is not None:
        short, long = keep
        return (long, short) if width >= height else (short, long)
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        return math.ceil(width * scale), math.ceil(height * scale)
    return None


def clean_image(raw: bytes, max_pixels: int, max_side: int = 4096, declared_type: str | None = None) -> CleanImage:
    """Decode (``decode``: type from content, pixel limits, upright) and store the pixels
    alone: EXIF (GPS, dates, serials), JPEG comments, XMP, ICC profiles (whose text can name
    a patient) and PNG text chunks never reach storage. An RGB JPEG that is already upright,
    full size and without a profile keeps its compressed data with every metadata segment
    cut out (``jpeg_segments.strip_metadata``; the same pixels, no second lossy generation);
    any other image is re-encoded from its pixels. A photo with an ICC profile is converted
    to sRGB first, so its colours (and the ITA measured from them) stay right.

    A DICOM file (judged from its content, or declared ``application/dicom`` and neither JPEG
    nor PNG) goes through ``clean_dicom``: the same re-encoding of its pixels alone.

    One full-size copy at a time: orientation is applied in place, the colour conversion
    replaces the decoded image, and JPEGs much larger than ``max_side`` decode DCT-scaled."""
    if dicom.is_dicom(raw) or (
        declared_type == dicom.CONTENT_TYPE and raw and not raw.startswith((JPEG_MAGIC, PNG_MAGIC))
    ):
        return clean_dicom(raw, max_pixels)
    if raw and not raw.startswith((JPEG_MAGIC, PNG_MAGIC)):
        raise UnsupportedImageError(
            f"the file is not a readable {UPLOADS_ACCEPTED} image (judged from its content, not its name or "
            "declared type)"
        )
    decoded = decode(raw, max_pixels, max_side=max_side)
    image, fmt = decoded.image, decoded.format
    with image:
        width, height = image.size
        data = _stored_bytes(raw, decoded)
    return CleanImage(
        data=data,
        content_type=CONTENT_TYPES[fmt],
        extension=EXTENSIONS[fmt],
        width=width,
        height=height,
        original_sha256=hashlib.sha256(raw).hexdigest(),
    )


def _stored_bytes(raw: bytes, decoded: DecodedImage) -> bytes:
    """The bytes stored for a decoded upload: its pixels alone (the caller closes ``decoded.image``)."""
    image, fmt = decoded.image, decoded.format
    if fmt == "JPEG" and image.mode == "RGB" and decoded.as_stored and not decoded.icc_profile:
        # Issue 27, round 8: a JPEG whose pixels need no turn, scaling or colour conversion is
        # stored as the clinic's own compressed data with its metadata cut out (no second lossy
        # generation, no encode); one this does not understand is re-encoded below.
        stripped = jpeg_segments.strip_metadata(raw)
        if stripped is not None:
            return stripped
    pixels = _to_srgb(image, decoded.icc_profile)  # sRGB never changes the size
    if pixels is not image:
        image.close()  # one full-size copy at a time
    with pixels:
        return _encoded(pixels, fmt)


def _encoded(pixels: Image.Image, fmt: str) -> bytes:
    """``pixels`` re-encoded alone: JPEG q95 4:4:4 or PNG, with nothing of the source's ``.info``."""
    pixels.info = {}  # what the encoder would copy: comment, icc_profile, exif, xmp, dpi, text
    out = io.BytesIO()
    if fmt == "JPEG":
        pixels.save(out, format="JPEG", quality=95, subsampling=0)
    else:
        pixels.save(out, format="PNG", optimize=False)
    return out.getvalue()


def clean_dicom(raw: bytes, max_pixels: int) -> CleanImage:
    """A DICOM image's pixels (``shared.dicom.reading``: checked from the header, decoded to
    RGB) re-encoded like any upload: to sRGB through its ICC profile when it has one, then a
    JPEG when its pixel data was lossy (JPEG baseline; a second lossless copy of lossy pixels
    would only be larger) or a PNG when it was not (uncompressed, JPEG lossless). Nothing of
    the header is in the bytes; what is kept of it is ``CleanImage.dicom``. Never scaled: the
    stored pixels are the source instance's grid, so the Segmentation maps onto it."""
    try:
        image = dicom.read_image(raw, max_pixels)
    except dicom.DicomTooLarge as exc:
        raise ImageTooLargeError(exc.detail) from None
    except dicom.NotDicom as exc:
        raise UnsupportedImageError(exc.detail) from None
    except dicom.DicomUnsupported as exc:
        raise UnsupportedDicomError(exc.detail) from None
    except dicom.DicomRefused as exc:
        raise UnreadableImageError(exc.detail) from None
    fmt = "JPEG" if image.lossy else "PNG"
    decoded = Image.fromarray(image.pixels)
    pixels = _to_srgb(decoded, image.icc_profile)
    if pixels is not decoded:
        decoded.close()
    clean = CleanImage(
        data=_encoded(pixels, fmt),
        content_type=CONTENT_TYPES[fmt],
        extension=EXTENSIONS[fmt],
        width=pixels.width,
        height=pixels.height,
        original_sha256=hashlib.sha256(raw).hexdigest(),
        dicom=image.found,
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
            converted = ImageCms.profileToProfile(image, source, _srgb(), outputMode="RGB", inPlace=False)
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # an unusable profile: treat the pixels as sRGB, as browsers do
    return image if image.mode == "RGB" else image.convert("RGB")
