"""The lesion mask as a DICOM Segmentation (issue 23; docs/DICOM.md): one binary segment,
"lesion", on the grid of the source image (``common.source_image``: the uploaded DICOM
instance, referenced by its UIDs, or the stored JPEG/PNG's pixels), made with highdicom.

The stored mask is at most ``ARTIFACT_MAX_SIDE`` on its long side (the pipeline's artifact
size); it is resampled to the source's rows and columns with smooth edges, as the pipeline
resamples masks, so it lies on the image it segments.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.sr.codedict import codes

from shared.dicom.common import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    MODEL_NAME,
    SEG_SERIES,
    DicomPatient,
    dicom_date_time,
    set_content_time,
    software_version,
    source_image,
    uid_for,
)
from shared.schemas.analyses import AnalysisRecord

SEGMENT_LABEL = "lesion"
# ContentDescription is a LO: 64 characters at most.
CONTENT_DESCRIPTION = "Lesion mask; research use only, not a certified medical device"


class SegmentationUnavailable(ValueError):
    """The analysis has no lesion mask to encode (it did not succeed)."""


def lesion_mask(mask_png: bytes, rows: int, columns: int) -> np.ndarray:
    """The stored mask (white lesion on black) as a boolean (rows, columns) array."""
    with Image.open(io.BytesIO(mask_png)) as stored:
        grey = stored.convert("L")
    if grey.size != (columns, rows):
        grey = grey.resize((columns, rows), Image.Resampling.BILINEAR)
    return np.asarray(grey) >= 128


def build_segmentation(
    record: AnalysisRecord, mask_png: bytes, patient: DicomPatient | None = None
) -> hd.seg.Segmentation:
    """The Segmentation of ``record``'s lesion from its stored mask PNG. The same record and
    mask give the same instance (UIDs and dates from the analysis)."""
    if record.result is None or not record.image.width or not record.image.height:
        raise SegmentationUnavailable(f"analysis {record.id} has no lesion mask (it is {record.status})")
    source = source_image(record, patient)
    mask = lesion_mask(mask_png, int(source.Rows), int(source.Columns))
    model = record.model
    segmenter = model.segmenter if model is not None else "unknown"
    scalpel = model.scalpel if model is not None else None
    algorithm = hd.AlgorithmIdentificationSequence(
        name=(scalpel.name if scalpel is not None else f"{segmenter} lesion segmenter")[:64],
        version=(scalpel.version if scalpel is not None else software_version())[:64],
        family=codes.DCM.ArtificialIntelligence if segmenter == "unet" else codes.DCM.ImageProcessing,
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=uid_for(record.id, "tracking/lesion"),
        tracking_id="lesion",
    )
    date, time = dicom_date_time(record.completed_at)
    segmentation = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=uid_for(record.id, "series/seg"),
        series_number=SEG_SERIES,
        sop_instance_uid=uid_for(record.id, "seg"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=software_version(),
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_description=CONTENT_DESCRIPTION,
        content_label="LESION",
        omit_empty_frames=False,
        series_description="DermaSentinel lesion segmentation",
        content_date=date or None,
        content_time=time or None,
        series_date=date or None,
        series_time=time or None,
    )
    set_content_time(segmentation, record.completed_at)
    if "DimensionOrganizationSequence" in segmentation:
        # highdicom draws this one at random; derived, so that two builds are one instance.
        organization = uid_for(record.id, "seg/dimension-organization")
        for item in segmentation.DimensionOrganizationSequence:
            item.DimensionOrganizationUID = organization
        for item in segmentation.get("DimensionIndexSequence", []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = organization
    return segmentation
