"""DICOM out (issue 23): the Segmentation, the TID 1500 SR and the Encapsulated PDF built from
typed records (tests/factories.py), read back with pydicom and highdicom's own readers. No
service needed: the HTTP routes are tested in tests/api/test_dicom_output.py."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import EncapsulatedPDFStorage, SegmentationStorage

from shared.dicom.common import DicomPatient, part10, uid_for
from shared.dicom.documents import build_encapsulated_pdf
from shared.dicom.measurements import SCHEME, build_measurement_report
from shared.dicom.reading import DERMOSCOPIC_PHOTOGRAPHY
from shared.dicom.segmentation import SegmentationUnavailable, build_segmentation
from tests.factories import low_risk_untrained, record

SOURCE = {
    "study_instance_uid": "1.2.826.0.1.3680043.8.498.1",
    "series_instance_uid": "1.2.826.0.1.3680043.8.498.2",
    "sop_instance_uid": "1.2.826.0.1.3680043.8.498.3",
    "sop_class_uid": DERMOSCOPIC_PHOTOGRAPHY,
    "transfer_syntax_uid": "1.2.840.10008.1.2.4.50",
}


def mask_png(height: int = 384, width: int = 512) -> tuple[bytes, np.ndarray]:
    """The pipeline's artifact: a 1-bit PNG at most 1024 on its long side (here half the image)."""
    mask = np.zeros((height, width), bool)
    mask[100:220, 150:330] = True
    out = io.BytesIO()
    Image.fromarray(mask).save(out, format="PNG")
    return out.getvalue(), mask


def from_dicom() -> object:
    return record(dicom_source=SOURCE)


def read(data: bytes) -> pydicom.Dataset:
    dataset = pydicom.dcmread(io.BytesIO(data))
    assert data[128:132] == b"DICM"
    return dataset


def test_the_segmentation_lies_on_the_source_grid_and_references_the_dicom_source():
    png, mask = mask_png()
    data = part10(build_segmentation(from_dicom(), png))
    dataset = read(data)
    assert dataset.SOPClassUID == SegmentationStorage and dataset.Modality == "SEG"
    seg = hd.seg.segread(io.BytesIO(data))
    assert seg.number_of_segments == 1 and seg.get_segment_description(1).segment_label == "lesion"
    assert (seg.Rows, seg.Columns) == (768, 1024)  # the record's image, twice the stored mask
    assert seg.StudyInstanceUID == SOURCE["study_instance_uid"]
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == SOURCE["series_instance_uid"]
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == SOURCE["sop_instance_uid"]
    assert seg.get_source_image_uids() == [
        (SOURCE["study_instance_uid"], SOURCE["series_instance_uid"], SOURCE["sop_instance_uid"])
    ]
    pixels = seg.get_pixels_by_source_instance([SOURCE["sop_instance_uid"]], segment_numbers=[1])[0, :, :, 0]
    expected = np.asarray(Image.fromarray(mask).resize((1024, 768)))  # nearest: the same lesion, twice as big
    assert abs(int(pixels.sum()) - int(expected.sum())) < 0.02 * expected.sum()
    assert pixels[300, 480] and not pixels[10, 10]
    assert "not a certified medical device" in seg.ContentDescription


def test_without_a_dicom_source_the_segmentation_makes_its_own_study_and_image():
    png, _ = mask_png()
    analysis = record()
    seg = hd.seg.segread(io.BytesIO(part10(build_segmentation(analysis, png))))
    assert seg.StudyInstanceUID == uid_for(analysis.id, "study")
    assert seg.get_source_image_uids()[0][2] == uid_for(analysis.id, "image")
    assert seg.StudyDate == "20250314"  # the analysis' creation, not the request's time


def test_the_objects_are_the_same_instance_every_time_and_anonymous():
    png, _ = mask_png()
    analysis = from_dicom()
    assert part10(build_segmentation(analysis, png)) == part10(build_segmentation(analysis, png))
    assert part10(build_measurement_report(analysis)) == part10(build_measurement_report(analysis))
    for data in (part10(build_segmentation(analysis, png)), part10(build_measurement_report(analysis))):
        dataset = read(data)
        assert dataset.PatientName == "" and dataset.PatientID == f"DS-{analysis.id}"
        assert dataset.PatientBirthDate == "" and dataset.PatientSex == "M"
    # A sender that knows the patient may say who it is; nothing else changes.
    known = DicomPatient(name="Doe^Jane", id="PACS-1", birth_date="19600101", sex="F")
    assert read(part10(build_measurement_report(analysis, known))).PatientID == "PACS-1"


def _report(analysis) -> hd.sr.Comprehensive3DSR:
    return hd.sr.srread(io.BytesIO(part10(build_measurement_report(analysis))))


def _qualitative(sr: hd.sr.Comprehensive3DSR) -> dict[str, list[str]]:
    container = sr.ContentSequence[-1]
    assert container.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"
    found: dict[str, list[str]] = {}
    for item in container.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "CODE":
            code = item.ConceptCodeSequence[0]
            found.setdefault(name, []).append(code.get("CodeValue") or code.LongCodeValue)
        else:
            found.setdefault(name, []).append(item.TextValue)
    return found


def test_the_sr_is_a_tid_1500_report_with_the_findings():
    analysis = from_dicom()
    sr = _report(analysis)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == SOURCE["study_instance_uid"]
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "FINAL")
    observer = sr.content.get_observer_contexts()[0]
    assert observer.observer_type == hd.sr.CodedConcept("121007", "DCM", "Device")
    assert observer.observer_identifying_attributes.name == "DermaSentinel"
    (lesion,) = sr.content.get_planar_roi_measurement_groups()
    measured = {m.name.meaning: (m.value, m.unit.value) for m in lesion.get_measurements()}
    assert measured["Diameter"] == (pytest.approx(7.416), "mm")
    assert measured["Melanoma probability"] == (pytest.approx(0.9132), "1")
    assert measured["Lesion share of the image"] == (pytest.approx(0.1842), "1")
    assert {"Asymmetry score", "Border irregularity score", "Colour variegation score"} <= set(measured)
    judged = {q.name.meaning: q.value.value for q in lesion.get_qualitative_evaluations()}
    assert judged["Classifier diagnosis"] == "melanoma" and judged["Risk band"] == "high"
    # The ROI is the Segmentation's segment, on the source instance.
    roi = lesion[0].ContentSequence
    segment = next(item for item in roi if item.ConceptNameCodeSequence[0].CodeValue == "121214")
    assert segment.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid_for(analysis.id, "seg")
    (skin,) = sr.content.get_image_measurement_groups()
    skin_measured = {m.name.meaning: m.value for m in skin.get_measurements()}
    assert skin_measured["Individual typology angle"] == pytest.approx(38.6)
    assert {q.name.meaning: q.value.meaning for q in skin.get_qualitative_evaluations()}["Skin group"] == "light"
    cases = _qualitative(sr)
    assert cases["Disposition"] == [analysis.result.disposition]
    assert cases["Disposition reason"] == analysis.result.disposition_reasons
    assert cases["Model weights status"] == ["trained"]
    assert "fusion-effnet-b3 2.0.1" in cases["Model"][0]
    assert cases["Regulatory status"] == ["Research use only; not a certified medical device."]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    referenced = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in evidence}
    assert referenced == {SOURCE["sop_instance_uid"], uid_for(analysis.id, "seg")}


def test_untrained_weights_make_a_preliminary_report_in_pixels_with_the_notice():
    analysis = low_risk_untrained()
    sr = _report(analysis)
    assert sr.PreliminaryFlag == "PRELIMINARY"
    (lesion,) = sr.content.get_planar_roi_measurement_groups()
    diameter = next(m for m in lesion.get_measurements() if m.name.meaning == "Diameter")
    assert diameter.unit.value == "{pixels}" and diameter.value == pytest.approx(analysis.result.concepts.diameter_px)
    cases = _qualitative(sr)
    assert cases["Model weights status"] == ["untrained"]
    assert cases["Disposition"] == ["clinician_review"] and "weights_not_trained" in cases["Disposition reason"]
    assert all(item.ConceptNameCodeSequence[0].CodingSchemeDesignator in ("99DERMSENT", "UMLS", "DCM", "SCT")
               for item in sr.ContentSequence[-1].ContentSequence)
    assert SCHEME == "99DERMSENT"


def test_the_encapsulated_pdf_holds_the_report_unchanged():
    pdf = b"%PDF-1.4\n" + bytes(range(256)) + b"\n%%EOF"  # odd length
    analysis = from_dicom()
    data = part10(build_encapsulated_pdf(analysis, pdf, "2025-03-14T09:27:01Z"))
    document = read(data)
    assert document.SOPClassUID == EncapsulatedPDFStorage and document.Modality == "DOC"
    assert document.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert document.EncapsulatedDocumentLength == len(pdf)
    assert bytes(document.EncapsulatedDocument)[: len(pdf)] == pdf
    assert document.StudyInstanceUID == SOURCE["study_instance_uid"]
    assert document.SourceInstanceSequence[0].ReferencedSOPInstanceUID == SOURCE["sop_instance_uid"]
    assert (document.ContentDate, document.ContentTime[:6]) == ("20250314", "092701")
    assert "not a certified medical device" in document.DocumentTitle
    with pytest.raises(ValueError, match="not a PDF"):
        build_encapsulated_pdf(analysis, b"<html>", None)


def test_there_is_no_segmentation_or_report_without_findings():
    rejected = record(status="rejected", result=None)
    with pytest.raises(SegmentationUnavailable):
        build_segmentation(rejected, mask_png()[0])
    with pytest.raises(SegmentationUnavailable):
        build_measurement_report(rejected)
