"""The PDF report as a DICOM Encapsulated PDF (issue 23; docs/DICOM.md): the bytes of the
stored report, unchanged, in the analysis' study (the source instance's when the image came as
DICOM), with the modules PS3.3 A.45.1 asks for. pydicom alone: highdicom has no builder for it.
"""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, EncapsulatedPDFStorage, ExplicitVRLittleEndian

from shared.dicom.common import (
    MANUFACTURER,
    MODEL_NAME,
    NOT_CERTIFIED,
    PDF_SERIES,
    DicomPatient,
    add_patient_and_study,
    set_content_time,
    software_version,
    source_image,
    uid_for,
)
from shared.schemas.analyses import AnalysisRecord

DOCUMENT_TITLE = f"DermaSentinel lesion report. {NOT_CERTIFIED}"


def build_encapsulated_pdf(
    record: AnalysisRecord, pdf: bytes, report_created_at: str | None = None, patient: DicomPatient | None = None
) -> Dataset:
    """The Encapsulated PDF of ``pdf`` (the analysis' stored report), dated when the report was
    made (``report_created_at``, else when the analysis finished). The same inputs give the
    same instance. The PDF shows the analysed image, so the source instance is referenced when
    the image came as DICOM."""
    if not pdf.startswith(b"%PDF"):
        raise ValueError("the report is not a PDF document")
    sop_instance = UID(uid_for(record.id, "pdf"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    document = Dataset()
    document.file_meta = meta
    add_patient_and_study(document, record, patient)
    document.SOPClassUID = EncapsulatedPDFStorage
    document.SOPInstanceUID = sop_instance
    # Encapsulated Document Series and General Equipment / SC Equipment.
    document.Modality = "DOC"
    document.SeriesInstanceUID = uid_for(record.id, "series/pdf")
    document.SeriesNumber = PDF_SERIES
    document.SeriesDescription = "DermaSentinel report (research use only)"
    document.Manufacturer = MANUFACTURER
    document.ManufacturerModelName = MODEL_NAME
    document.SoftwareVersions = software_version()
    document.ConversionType = "SYN"
    # Encapsulated Document.
    document.InstanceNumber = 1
    set_content_time(document, report_created_at or record.completed_at)
    document.AcquisitionDateTime = ""
    document.BurnedInAnnotation = "YES"  # the report names the analysis and shows the image
    document.DocumentTitle = DOCUMENT_TITLE
    document.ConceptNameCodeSequence = Sequence()
    document.MIMETypeOfEncapsulatedDocument = "application/pdf"
    document.EncapsulatedDocumentLength = len(pdf)
    # OB values are of even length; the PDF keeps its own length in the attribute above.
    document.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    if record.dicom_source is not None:
        source = source_image(record, patient)
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        document.SourceInstanceSequence = Sequence([reference])
    return document
