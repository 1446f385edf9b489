"""What the three DICOM objects of an analysis share (issue 23; docs/DICOM.md): their
identifiers, the equipment that made them, the patient and study they belong to, and the
source image the Segmentation and the report refer to.

Identifiers are derived from the analysis id (``uid_for``: a ``2.25`` UUID-derived UID), so
building an object twice gives the same instance: a PACS that receives it again sees the same
SOP Instance UID with the same content, never a second copy. Dates are the analysis' own
(its creation and completion), never the time of the request, for the same reason.

The patient is anonymous unless the caller says otherwise (``DicomPatient``): DermaSentinel
never keeps a name, id or birth date, so the objects carry an empty name and a pseudonymous
id of the analysis (``DS-<analysis id>``), which no two analyses share. A sender that knows
the patient (a PACS destination configured with it) passes its own ``DicomPatient``.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata

from pydicom.dataset import Dataset

from shared.dicom.reading import DERMOSCOPIC_PHOTOGRAPHY, VL_PHOTOGRAPHIC
from shared.schemas.analyses import AnalysisRecord

# Every UID DermaSentinel makes is 2.25.<the UUID5 of the analysis id and the role in this namespace>.
NAMESPACE = uuid.UUID("7d8a3c52-4f0e-5b6a-9d1c-23e4f5a6b7c8")
MANUFACTURER = "DermaSentinel"
MODEL_NAME = "DermaSentinel melanoma screening"
DEVICE_SERIAL_NUMBER = "0"  # one software installation has no serial number; Type 1 in the SEG
NOT_CERTIFIED = "Research use only; not a certified medical device."
SEX_CODES = {"male": "M", "female": "F"}
# Series numbers, so that the three series sort the same way in every viewer.
SEG_SERIES, SR_SERIES, PDF_SERIES = 9101, 9102, 9103


def software_version() -> str:
    try:
        return metadata.version("dermasentinel")
    except metadata.PackageNotFoundError:
        return "unknown"


def uid_for(analysis_id: uuid.UUID | str, role: str) -> str:
    """The UID of one of an analysis' DICOM entities (``study``, ``image``, ``seg``, ``series/seg``,
    …): the same on every call, different for every analysis and role."""
    return f"2.25.{uuid.uuid5(NAMESPACE, f'{analysis_id}/{role}').int}"


@dataclass(frozen=True)
class DicomPatient:
    """The Patient module's values. DermaSentinel stores none of them; ``for_record`` is the
    anonymous patient it writes by default."""

    name: str = ""
    id: str = ""
    birth_date: str = ""
    sex: str = ""

    @classmethod
    def for_record(cls, record: AnalysisRecord) -> DicomPatient:
        return cls(name="", id=f"DS-{record.id}", birth_date="", sex=SEX_CODES.get(record.inputs.sex, ""))


def dicom_date_time(value: str | None) -> tuple[str, str]:
    """(DA, TM) in UTC from one of the record's ISO timestamps; empty when there is none."""
    if not value:
        return "", ""
    moment = datetime.fromisoformat(value).astimezone(UTC)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")


def study_of(record: AnalysisRecord) -> tuple[str, str, str]:
    """(StudyInstanceUID, StudyDate, StudyTime): the source instance's study when the image
    came as DICOM (its date is not kept, so it stays empty: the PACS has it), else a study of
    the analysis dated when it was submitted."""
    if record.dicom_source is not None:
        return record.dicom_source.study_instance_uid, "", ""
    return (uid_for(record.id, "study"), *dicom_date_time(record.created_at))


def add_patient_and_study(dataset: Dataset, record: AnalysisRecord, patient: DicomPatient | None = None) -> None:
    """The Patient and General Study modules (and SpecificCharacterSet) on ``dataset``."""
    patient = patient or DicomPatient.for_record(record)
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.PatientName = patient.name
    dataset.PatientID = patient.id
    dataset.PatientBirthDate = patient.birth_date
    dataset.PatientSex = patient.sex
    dataset.StudyInstanceUID, dataset.StudyDate, dataset.StudyTime = study_of(record)
    dataset.StudyID = ""
    dataset.AccessionNumber = ""
    dataset.ReferringPhysicianName = ""


def source_image(record: AnalysisRecord, patient: DicomPatient | None = None) -> Dataset:
    """The image the Segmentation and the report are about, as the attributes they reference:
    the uploaded DICOM instance (its kept UIDs) or, for a JPEG or PNG upload, a VL
    Photographic image of the stored pixels that exists only as this reference (its pixels are
    the analysis' image artifact; DermaSentinel does not serve it as DICOM). Never pixel data."""
    source = record.dicom_source
    image = Dataset()
    add_patient_and_study(image, record, patient)
    if source is not None:
        image.SOPClassUID = source.sop_class_uid
        image.SOPInstanceUID = source.sop_instance_uid
        image.SeriesInstanceUID = source.series_instance_uid
    else:
        image.SOPClassUID = VL_PHOTOGRAPHIC
        image.SOPInstanceUID = uid_for(record.id, "image")
        image.SeriesInstanceUID = uid_for(record.id, "series/image")
    image.Modality = "XC"
    image.Rows = record.image.height or 0
    image.Columns = record.image.width or 0
    image.SamplesPerPixel = 3
    image.PhotometricInterpretation = "RGB"
    image.BitsAllocated = 8
    image.BitsStored = 8
    image.HighBit = 7
    image.PixelRepresentation = 0
    return image


def is_dermoscopic(record: AnalysisRecord) -> bool:
    return record.dicom_source is not None and record.dicom_source.sop_class_uid == DERMOSCOPIC_PHOTOGRAPHY


def set_content_time(dataset: Dataset, value: str | None) -> None:
    """Every date and time the object carries, from one of the analysis' timestamps (not the
    moment it was built), so two builds are the same object."""
    date, time = dicom_date_time(value)
    for prefix in ("Content", "Series", "InstanceCreation"):
        if f"{prefix}Date" in dataset or prefix == "Content":
            setattr(dataset, f"{prefix}Date", date)
            setattr(dataset, f"{prefix}Time", time)
    for equipment in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in equipment:
            equipment.ContributionDateTime = date + time


def part10(dataset: Dataset) -> bytes:
    """The object as a DICOM Part 10 file (preamble, ``DICM``, file meta), as ``application/dicom`` carries it."""
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()
