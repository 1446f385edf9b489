"""DICOM files for the tests (issue 23), built with pydicom: VL Photographic, Dermoscopic
Photography and Secondary Capture images, uncompressed, JPEG baseline (Pillow's encoder) or
JPEG lossless (the small encoder below: pydicom has no encoder for it and pylibjpeg only
decodes), each carrying a header full of identifying values (``PHI``) that must never be
stored. No real patient: every value is made up.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    generate_uid,
)

from shared.dicom.reading import DERMOSCOPIC_PHOTOGRAPHY, NATIVE, SECONDARY_CAPTURE, VL_PHOTOGRAPHIC

__all__ = [
    "CT_IMAGE", "DERMOSCOPIC_PHOTOGRAPHY", "PHI", "PHI_VALUES", "SECONDARY_CAPTURE", "VL_PHOTOGRAPHIC",
    "anatomic_region", "dicom_file",
    "jpeg_lossless",
]

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
# Identifying attributes a real file carries; none of these values may reach storage.
PHI: dict[str, str] = {
    "PatientName": "Quixotica^Zebediah^Marmaduke",
    "PatientID": "MRN-88417-QZX",
    "PatientBirthDate": "19470329",
    "OtherPatientIDs": "NHS-947-221-8830",
    "StudyDate": "20030417",
    "SeriesDate": "20030417",
    "ContentDate": "20030417",
    "AcquisitionDateTime": "20030417101112",
    "StudyTime": "101112",
    "InstitutionName": "Saint Ottoline Dermatology Clinic",
    "InstitutionAddress": "12 Lanternwick Row, Ambersfold",
    "ReferringPhysicianName": "Vandersloot^Philippa",
    "OperatorsName": "Thistlewood^Cornelius",
    "AccessionNumber": "ACC77812Q",
    "StudyID": "STUDY-5521Q",
    "StudyDescription": "Mole check for Zebediah Quixotica",
    "PatientAddress": "7 Bramblecote Lane, Wexmoor",
    "PatientTelephoneNumbers": "+44 7700 900812",
    "DeviceSerialNumber": "DERMSCOPE-SN-004417",
}
PHI_VALUES: tuple[str, ...] = (
    *PHI.values(), "Quixotica", "Zebediah", "Marmaduke", "Vandersloot", "Thistlewood", "Ottoline", "Bramblecote",
)


def dicom_file(
    pixels: np.ndarray,
    *,
    sop_class: str = VL_PHOTOGRAPHIC,
    transfer_syntax: str = ExplicitVRLittleEndian,
    photometric: str | None = None,
    preamble: bool = True,
    phi: bool = True,
    **attributes: Any,
) -> bytes:
    """A one-frame DICOM image of ``pixels`` ((rows, columns, 3) or (rows, columns) uint8),
    with the identifying header ``PHI`` unless ``phi=False``; ``attributes`` set or override
    others (PatientAge, PatientSex, BodyPartExamined, an AnatomicRegionSequence, …)."""
    rows, columns = pixels.shape[:2]
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "XC" if sop_class != SECONDARY_CAPTURE else "OT"
    if phi:
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    if transfer_syntax == JPEGBaseline8Bit:
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG", quality=95, subsampling=2 if samples == 3 else 0)
        ds.PixelData = encapsulate([out.getvalue()])
        ds.PhotometricInterpretation = photometric or ("YBR_FULL_422" if samples == 3 else "MONOCHROME2")
        ds.LossyImageCompression = "01"
    elif transfer_syntax in (JPEGLossless, JPEGLosslessSV1):  # predictor 1 is valid for both
        ds.PixelData = encapsulate([jpeg_lossless(pixels)])
        ds.PhotometricInterpretation = photometric or ("RGB" if samples == 3 else "MONOCHROME2")
    elif transfer_syntax in NATIVE:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.PhotometricInterpretation = photometric or ("RGB" if samples == 3 else "MONOCHROME2")
    else:  # another compressed syntax: its frame is never looked at, the syntax is refused first
        ds.PixelData = encapsulate([np.ascontiguousarray(pixels).tobytes()])
        ds.PhotometricInterpretation = photometric or "RGB"
    if transfer_syntax not in NATIVE:
        ds["PixelData"].VR = "OB"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    if preamble:
        ds.save_as(out, enforce_file_format=True)
    else:
        ds.save_as(out, implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True)
    return out.getvalue()


def anatomic_region(meaning: str, code: str = "22943007") -> list[Dataset]:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
    return [item]


# ---------------------------------------------------------------- JPEG lossless (process 14, SV1)

# The luminance DC table of ITU-T T.81 Annex K (categories 0..11): lossless 8-bit differences
# need categories up to 8.
_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
_VALUES = list(range(12))


def _codes() -> dict[int, tuple[int, int]]:
    table, code, at = {}, 0, 0
    for length, count in enumerate(_BITS, start=1):
        for _ in range(count):
            table[_VALUES[at]] = (code, length)
            code += 1
            at += 1
        code <<= 1
    return table


def jpeg_lossless(pixels: np.ndarray) -> bytes:
    """A JPEG lossless (SOF3, first-order prediction, no point transform) stream of 8-bit
    ``pixels``, interleaved, one Huffman table: what DICOM's transfer syntax 1.2.840.10008.1.2.4.70
    holds."""
    image = pixels if pixels.ndim == 3 else pixels[:, :, None]
    rows, columns, components = image.shape
    samples = image.astype(np.int32)
    predicted = np.empty_like(samples)
    predicted[0, 0] = 128
    predicted[0, 1:] = samples[0, :-1]  # first row: the sample to the left
    predicted[1:, 0] = samples[:-1, 0]  # first column: the sample above
    predicted[1:, 1:] = samples[1:, :-1]  # predictor 1: Ra
    differences = (samples - predicted).reshape(-1)
    table = _codes()
    bits: list[str] = []
    for difference in differences.tolist():
        magnitude = abs(difference)
        category = magnitude.bit_length()
        code, length = table[category]
        bits.append(format(code, f"0{length}b"))
        if category:
            value = difference if difference > 0 else difference + (1 << category) - 1
            bits.append(format(value, f"0{category}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = int(stream, 2).to_bytes(len(stream) // 8, "big") if stream else b""
    data = data.replace(b"\xff", b"\xff\x00")

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    frame = bytes([8]) + rows.to_bytes(2, "big") + columns.to_bytes(2, "big") + bytes([components])
    frame += b"".join(bytes([n + 1, 0x11, 0]) for n in range(components))
    huffman = bytes([0x00]) + bytes(_BITS) + bytes(_VALUES)
    scan = bytes([components]) + b"".join(bytes([n + 1, 0x00]) for n in range(components)) + bytes([1, 0, 0])
    return b"\xff\xd8" + segment(0xC4, huffman) + segment(0xC3, frame) + segment(0xDA, scan) + data + b"\xff\xd9"
