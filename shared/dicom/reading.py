"""DICOM in: an uploaded DICOM file as RGB pixels, the identifiers of its instance, and the
patient context of its header (issue 23; docs/DICOM.md).

What is accepted: one-frame VL Photographic, Dermoscopic Photography and Secondary Capture
images, in RGB or YCbCr (``YBR_FULL``, ``YBR_FULL_422``), with uncompressed, JPEG baseline or
JPEG lossless pixel data. Everything else is refused before any pixel is decoded, with the
reason: another SOP class or transfer syntax, several frames, monochrome or palette colour
(a photograph without colour has no ITA and no colour variegation, and the classifier was
trained on colour: a grey DICOM is most often a radiograph or a scanned document sent to the
wrong place), signed or over-16-bit samples, more pixels than the limit.

Of the header only the study, series and SOP instance UIDs, the SOP class and the transfer
syntax are kept (``DicomSource``), and age, sex, site and pixel spacing in our vocabulary
(``PatientContext``); the caller re-encodes the pixels (``shared.images.clean_image``), so
names, ids, dates and every other attribute stay in the request and are never stored.

No FastAPI and nothing of ``shared.images`` here: refusals are ``DicomRefused`` subclasses,
which ``shared.images`` turns into its ``ImageRejected`` (and so the API's problems).
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
)

from shared.clinical import vocabulary
from shared.schemas.analyses import DICOM_UID_PATTERN, AnalysisInputs, DicomSource

CONTENT_TYPE = "application/dicom"
# A DICOM Part 10 file: a 128-byte preamble, then these four bytes.
MAGIC, MAGIC_OFFSET = b"DICM", 128
JPEG_END = b"\xff\xd9"

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
DERMOSCOPIC_PHOTOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.7"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SOP_CLASSES: dict[str, str] = {
    VL_PHOTOGRAPHIC: "VL Photographic Image",
    DERMOSCOPIC_PHOTOGRAPHY: "Dermoscopic Photography Image",
    SECONDARY_CAPTURE: "Secondary Capture Image",
}
# Transfer syntax → whether its pixel data is lossy (then the clean copy is a JPEG, else a PNG).
TRANSFER_SYNTAXES: dict[str, bool] = {
    ImplicitVRLittleEndian: False,
    ExplicitVRLittleEndian: False,
    ExplicitVRBigEndian: False,
    JPEGBaseline8Bit: True,
    JPEGLossless: False,
    JPEGLosslessSV1: False,
}
NATIVE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})
# Colour images only (see the module's docstring); pydicom turns YCbCr into RGB.
PHOTOMETRICS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422"})
ACCEPTED_TEXT = "one-frame VL Photographic, Dermoscopic Photography or Secondary Capture colour image"

_UID = re.compile(DICOM_UID_PATTERN)
# What pydicom and its decoders (Pillow, pylibjpeg) raise for data they cannot parse: a
# refusal that says so, never a 500.
_UNREADABLE = (
    InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
    struct.error, RuntimeError, NotImplementedError, OverflowError, UnicodeError,
)


class DicomRefused(Exception):
    """The DICOM file is not one we accept; ``detail`` says why (never a header value but UIDs)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class DicomUnreadable(DicomRefused):
    """Not parseable, or its pixels cannot be decoded."""


class DicomUnsupported(DicomRefused):
    """Parseable, but not an object we analyse (SOP class, transfer syntax, frames, colour)."""


class DicomTooLarge(DicomRefused):
    """More pixels than the limit, judged from the header before decoding."""


class NotDicom(DicomRefused):
    """Declared ``application/dicom`` but not a DICOM file."""


@dataclass(frozen=True)
class PatientContext:
    """What the header says that the analysis takes as input, in our vocabulary; None where it
    says nothing we can use."""

    age: int | None = None
    sex: str | None = None
    site: str | None = None
    pixel_spacing_mm: float | None = None

    def fills(self, age: int | None, sex: str, site: str, pixel_spacing_mm: float | None) -> dict[str, Any]:
        """The values it gives for the inputs the client left out: an absent age or spacing,
        a sex or site of ``unknown`` (the stored row cannot tell a field sent as ``unknown``
        from one not sent, so the direct-upload path could not do otherwise; docs/DICOM.md)."""
        found: dict[str, Any] = {}
        if age is None and self.age is not None:
            found["age"] = self.age
        if sex == "unknown" and self.sex not in (None, "unknown"):
            found["sex"] = self.sex
        if site == "unknown" and self.site is not None:
            found["site"] = self.site
        if pixel_spacing_mm is None and self.pixel_spacing_mm is not None:
            found["pixel_spacing_mm"] = self.pixel_spacing_mm
        return found


@dataclass(frozen=True)
class DicomInput:
    """What is kept of an uploaded DICOM file besides its pixels."""

    source: DicomSource
    context: PatientContext

    def fill(self, inputs: AnalysisInputs) -> AnalysisInputs:
        """``inputs`` with the header's values where the client gave none (``PatientContext.fills``)."""
        found = self.context.fills(inputs.age, inputs.sex, inputs.site, inputs.pixel_spacing_mm)
        return inputs.model_copy(update=found) if found else inputs


@dataclass
class DicomImage:
    pixels: np.ndarray
    """(rows, columns, 3) uint8 RGB."""
    icc_profile: bytes | None
    lossy: bool
    """The pixel data was lossy-compressed (JPEG baseline): the clean copy is a JPEG too."""
    found: DicomInput


def is_dicom(raw: bytes) -> bool:
    """A DICOM Part 10 file, judged from its content (the ``DICM`` after the preamble)."""
    return raw[MAGIC_OFFSET : MAGIC_OFFSET + len(MAGIC)] == MAGIC


def read_image(raw: bytes, max_pixels: int) -> DicomImage:
    """Parse, check (SOP class, transfer syntax, frames, colour, size from the header) and
    decode one DICOM image. A file without the Part 10 preamble is read as a bare data set
    (the caller only asks when it was declared ``application/dicom``); its pixel data must then
    be uncompressed. Raises ``DicomRefused``."""
    dataset = _parse(raw)
    sop_class = _sop_class(dataset)
    transfer_syntax = _transfer_syntax(dataset)
    rows, columns = _check_pixels(dataset, transfer_syntax, max_pixels)
    source = DicomSource(
        study_instance_uid=_required_uid(dataset, "StudyInstanceUID"),
        series_instance_uid=_required_uid(dataset, "SeriesInstanceUID"),
        sop_instance_uid=_required_uid(dataset, "SOPInstanceUID"),
        sop_class_uid=sop_class,
        transfer_syntax_uid=transfer_syntax,
    )
    pixels = _decode(dataset, transfer_syntax, rows, columns)
    icc = dataset.get("ICCProfile")
    return DicomImage(
        pixels=pixels,
        icc_profile=bytes(icc) if isinstance(icc, bytes) and icc else None,
        lossy=TRANSFER_SYNTAXES[transfer_syntax],
        found=DicomInput(source=source, context=patient_context(dataset)),
    )


def patient_context(dataset: Dataset) -> PatientContext:
    """Age (PatientAge), sex (PatientSex), site (the first AnatomicRegionSequence item's code
    meaning, else BodyPartExamined) and pixel spacing (PixelSpacing, square pixels only)."""
    site = None
    regions = _get(dataset, "AnatomicRegionSequence")
    if regions:
        site = vocabulary.site_from_dicom(_get(regions[0], "CodeMeaning"))
    if site is None:
        site = vocabulary.site_from_dicom(_get(dataset, "BodyPartExamined"))
    return PatientContext(
        age=vocabulary.age_from_dicom(_get(dataset, "PatientAge")),
        sex=vocabulary.sex_from_dicom(_get(dataset, "PatientSex")),
        site=site,
        pixel_spacing_mm=_pixel_spacing(dataset),
    )


# ---------------------------------------------------------------- the steps


def _parse(raw: bytes) -> Dataset:
    if not raw:
        raise DicomUnreadable("the DICOM file is empty")
    part10 = is_dicom(raw)
    # pydicom's value validation logs a malformed value with the value itself ("Invalid value
    # for VR DA: '…'"): a patient's name or date in the logs. Values are never used but for the
    # few read here, each checked on its own, so it is off (the setting is process-wide; nothing
    # else in the API or the workers reads DICOM).
    config.settings.reading_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            # pydicom warns about what it repairs while reading; what it cannot repair raises.
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(io.BytesIO(raw), force=not part10)
            # Every element is parsed here (pydicom reads values lazily), so a malformed one is
            # a refusal now, not an error later.
            for _ in dataset.iterall():
                pass
    except _UNREADABLE as exc:
        if not part10:
            raise NotDicom(
                "the file was declared application/dicom but is not a DICOM file (no 'DICM' after the "
                f"128-byte preamble, and not a readable data set: {type(exc).__name__})"
            ) from None
        raise DicomUnreadable(
            f"the DICOM file could not be parsed ({type(exc).__name__}); it may be corrupt or truncated"
        ) from None
    if not part10 and "PixelData" not in dataset and "SOPClassUID" not in dataset:
        raise NotDicom(
            "the file was declared application/dicom but is not a DICOM file (no 'DICM' after the 128-byte preamble)"
        )
    return dataset


def _sop_class(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    uid = _get(dataset, "SOPClassUID") or (_get(meta, "MediaStorageSOPClassUID") if meta is not None else None)
    if not uid:
        if "PixelData" not in dataset and "Rows" not in dataset:
            # pydicom reads past what it cannot parse: nothing usable came out of it.
            raise DicomUnreadable(
                "the DICOM file could not be parsed (no SOP class, no image attributes, no pixel data); it may be "
                "corrupt or truncated"
            )
        raise DicomUnsupported(f"the DICOM file has no SOP Class UID; send a {ACCEPTED_TEXT}")
    uid = _clean_uid(str(uid))
    if uid not in SOP_CLASSES:
        raise DicomUnsupported(
            f"the DICOM SOP class {_named(uid)} is not accepted; send a {ACCEPTED_TEXT} "
            f"({', '.join(f'{name} {sop}' for sop, name in SOP_CLASSES.items())})"
        )
    return uid


def _transfer_syntax(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    uid = _get(meta, "TransferSyntaxUID") if meta is not None else None
    if not uid:
        # A bare data set: pydicom knows how it read it, and its pixel data can only be native.
        implicit, little = dataset.original_encoding
        uid = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = uid
    uid = _clean_uid(str(uid))
    if uid not in TRANSFER_SYNTAXES:
        raise DicomUnsupported(
            f"the DICOM pixel data's transfer syntax {_named(uid)} is not accepted; send it uncompressed, "
            "JPEG baseline or JPEG lossless"
        )
    return uid


def _check_pixels(dataset: Dataset, transfer_syntax: str, max_pixels: int) -> tuple[int, int]:
    """(rows, columns), once the header says the pixels are ones we accept and not too many."""
    if "PixelData" not in dataset:
        raise DicomUnreadable("the DICOM file has no pixel data (or it was cut off before its end)")
    frames = _int(dataset, "NumberOfFrames", 1)
    if frames != 1:
        raise DicomUnsupported(f"the DICOM image has {frames} frames; send one image per file")
    rows, columns = _int(dataset, "Rows", 0), _int(dataset, "Columns", 0)
    if rows <= 0 or columns <= 0:
        raise DicomUnreadable(f"the DICOM image's size is {columns}x{rows}; the header is corrupt")
    if rows * columns > max_pixels:
        raise DicomTooLarge(
            f"the image is {columns}x{rows} = {columns * rows} pixels, above the limit of {max_pixels}; "
            "downscale it or send a smaller image"
        )
    photometric = str(_get(dataset, "PhotometricInterpretation") or "").strip().upper()
    samples = _int(dataset, "SamplesPerPixel", 0)
    if photometric not in PHOTOMETRICS or samples != 3:
        shown = photometric or "missing"
        raise DicomUnsupported(
            f"the DICOM image's photometric interpretation is {shown} with {samples} sample(s) per pixel; only "
            "colour images (RGB, YBR_FULL, YBR_FULL_422) are analysed: skin tone (ITA), colour variegation and "
            "the classifier need colour"
        )
    bits_allocated, bits_stored = _int(dataset, "BitsAllocated", 0), _int(dataset, "BitsStored", 0)
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise DicomUnsupported(
            f"the DICOM image has {bits_stored} bits stored in {bits_allocated}; 8 (or up to 16) bits per sample "
            "are accepted"
        )
    if _int(dataset, "PixelRepresentation", 0) != 0:
        raise DicomUnsupported("the DICOM image has signed samples; colour photographs have unsigned ones")
    if transfer_syntax not in NATIVE:
        _check_jpeg_frame(dataset, transfer_syntax, rows, columns)
    return rows, columns


def _check_jpeg_frame(dataset: Dataset, transfer_syntax: str, rows: int, columns: int) -> None:
    """The JPEG inside must be the size the header says: a small header over a huge JPEG
    would otherwise be decoded in full before anything noticed."""
    try:
        frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    except (*_UNREADABLE, StopIteration):
        raise DicomUnreadable(_undecodable(transfer_syntax, "its encapsulated frame could not be found")) from None
    size = _jpeg_size(frame)
    if size is None:
        raise DicomUnreadable(_undecodable(transfer_syntax, "its frame is not a JPEG stream"))
    if size != (rows, columns):
        raise DicomUnreadable(
            _undecodable(transfer_syntax, f"its JPEG frame is {size[1]}x{size[0]}, the header says {columns}x{rows}")
        )
    # The lossless decoder fills a cut-off stream in silently; a JPEG upload that is cut off is
    # refused, and so is this.
    if JPEG_END not in frame[-64:]:
        raise DicomUnreadable(_undecodable(transfer_syntax, "its JPEG stream has no end-of-image marker (cut off)"))


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG stream's start-of-frame marker; None when there is none."""
    if not frame.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(frame):
        if frame[at] != 0xFF:
            return None
        marker = frame[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        (length,) = struct.unpack(">H", frame[at + 2 : at + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if at + 9 > len(frame):
                return None
            rows, columns = struct.unpack(">HH", frame[at + 5 : at + 9])
            return rows, columns
        at += 2 + length
    return None


def _decode(dataset: Dataset, transfer_syntax: str, rows: int, columns: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. excess padding after the pixels, which is dropped
            # YCbCr becomes RGB (pydicom's as_rgb). JPEG baseline through Pillow, as JPEG uploads.
            plugin = "pillow" if transfer_syntax == JPEGBaseline8Bit else ""
            pixels = pixel_array(dataset, decoding_plugin=plugin)
    except _UNREADABLE as exc:
        raise DicomUnreadable(_undecodable(transfer_syntax, _reason(exc))) from None
    if pixels.shape != (rows, columns, 3):
        raise DicomUnreadable(
            _undecodable(transfer_syntax, f"it decoded to shape {pixels.shape}, not {rows}x{columns}x3")
        )
    bits_stored = _int(dataset, "BitsStored", 8)
    if pixels.dtype != np.uint8:
        shift = max(0, bits_stored - 8)
        pixels = np.clip(pixels.astype(np.uint32) >> shift, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels)


def _undecodable(transfer_syntax: str, why: str) -> str:
    return (
        f"the DICOM pixel data ({_named(transfer_syntax)}) could not be decoded: {why}; "
        "the file may be corrupt or truncated"
    )


def _reason(exc: BaseException) -> str:
    """The decoder's own words on one line, bounded (they describe lengths and codecs, never
    header values)."""
    text = " ".join(str(exc).split()).replace(":;", ":")
    return f"{type(exc).__name__}: {text[:240]}" if text else type(exc).__name__


def _pixel_spacing(dataset: Dataset) -> float | None:
    spacing = _get(dataset, "PixelSpacing")
    try:
        row, column = (float(value) for value in spacing)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(row) and math.isfinite(column)) or row <= 0 or column <= 0:
        return None
    if abs(row - column) > 0.01 * max(row, column) or row > 10:
        return None  # not square (the diameter would depend on direction), or not a photograph's scale
    return round(row, 6)


def _required_uid(dataset: Dataset, keyword: str) -> str:
    value = _get(dataset, keyword)
    uid = _clean_uid(str(value or ""))
    if not _UID.match(uid) or len(uid) > 64:
        raise DicomUnsupported(f"the DICOM file has no valid {keyword} (a Type 1 attribute of these images)")
    return uid


def _clean_uid(value: str) -> str:
    return value.strip().rstrip("\x00").strip()


def _named(uid: str) -> str:
    """A UID with its name when pydicom knows it; an unknown one is quoted only if it is a UID."""
    if not _UID.match(uid) or len(uid) > 64:
        return "(not a valid UID)"
    name = UID(uid).name
    return f"{uid} ({name})" if name and name != uid else uid


def _get(dataset: Dataset | None, keyword: str) -> Any:
    if dataset is None:
        return None
    try:
        return dataset.get(keyword)
    except _UNREADABLE:
        return None


def _int(dataset: Dataset, keyword: str, default: int) -> int:
    value = _get(dataset, keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1
