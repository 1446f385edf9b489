"""DICOM out through the real API (issue 23): ``GET /v1/analyses/{id}/dicom/seg|sr|pdf`` answer
DICOM Part 10 files that pydicom parses and highdicom's readers load, the Segmentation
referencing the source instance of a DICOM upload, the SR carrying the probability and the
disposition; 409 until the report is ready, 404 for another tenant, one audit row per read."""

from __future__ import annotations

import io
import uuid

import highdicom as hd
import httpx
import pydicom
from pydicom.uid import EncapsulatedPDFStorage, JPEGBaseline8Bit, SegmentationStorage
from sqlalchemy import select

from shared.clock import utcnow
from shared.db import session_scope
from shared.dicom.common import uid_for
from shared.tables import Analysis, AuditEvent
from shared.tenants import issue_key
from tests.dicom_files import PHI_VALUES, VL_PHOTOGRAPHIC, anatomic_region, dicom_file
from worker.pipeline.synthetic import encode_jpeg, make_lesion

LESION = make_lesion(seed=33, size=(240, 320), radius_frac=0.2, irregularity=0.4).image
KINDS = ("seg", "sr", "pdf")


def get(api: httpx.Client, analysis_id: str, kind: str) -> httpx.Response:
    return api.get(f"/v1/analyses/{analysis_id}/dicom/{kind}")


def reported(api: httpx.Client, wait, wait_final, response: httpx.Response) -> dict:
    assert response.status_code == 202, response.text
    analysis_id = response.json()["id"]
    wait_final(analysis_id)
    wait(lambda: api.get(f"/v1/analyses/{analysis_id}").json()["report"]["ready"], timeout=120, message="report")
    return api.get(f"/v1/analyses/{analysis_id}").json()


def dicom_of(response: httpx.Response) -> pydicom.Dataset:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.headers["cache-control"] == "private, no-store"
    assert response.content[128:132] == b"DICM"
    return pydicom.dcmread(io.BytesIO(response.content))


def test_seg_sr_and_pdf_of_a_dicom_upload(api, worker, wait, wait_final, tenant_key, context):
    raw = dicom_file(LESION, sop_class=VL_PHOTOGRAPHIC, transfer_syntax=JPEGBaseline8Bit, PatientAge="058Y",
                     PatientSex="M", AnatomicRegionSequence=anatomic_region("Trunk structure"))
    source = pydicom.dcmread(io.BytesIO(raw))
    analysis = reported(api, wait, wait_final, api.post("/v1/analyses", files={"image": ("a.dcm", raw,
                                                                                         "application/dicom")}))
    assert analysis["status"] == "succeeded"
    ident = analysis["id"]

    seg_answer = get(api, ident, "seg")
    assert f'filename="dermasentinel-{ident}-seg.dcm"' in seg_answer.headers["content-disposition"]
    assert dicom_of(seg_answer).SOPClassUID == SegmentationStorage
    seg = hd.seg.segread(io.BytesIO(seg_answer.content))
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.get_source_image_uids() == [
        (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)
    ]
    assert (seg.Rows, seg.Columns) == (240, 320)
    lesion = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0]
    coverage = analysis["result"]["segmentation"]["coverage"]
    assert abs(lesion.mean() - coverage) < 0.05

    sr_answer = get(api, ident, "sr")
    sr = hd.sr.srread(io.BytesIO(sr_answer.content))
    assert dicom_of(sr_answer).SOPInstanceUID == uid_for(ident, "sr")
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    (group,) = sr.content.get_planar_roi_measurement_groups()
    measured = {m.name.meaning: m.value for m in group.get_measurements()}
    assert abs(measured["Melanoma probability"] - analysis["result"]["probability"]) < 1e-9
    assert measured["Diameter"] == analysis["result"]["concepts"]["diameter_px"]  # no spacing: pixels
    evaluations = sr.ContentSequence[-1].ContentSequence
    disposition = next(i for i in evaluations if i.ConceptNameCodeSequence[0].CodeMeaning == "Disposition")
    code = disposition.ConceptCodeSequence[0]
    assert (code.get("CodeValue") or code.LongCodeValue) == analysis["result"]["disposition"]
    weights = next(i for i in evaluations if i.ConceptNameCodeSequence[0].CodeMeaning == "Model weights status")
    assert weights.ConceptCodeSequence[0].CodeValue == analysis["model"]["weights"]
    assert sr.PreliminaryFlag == ("FINAL" if analysis["model"]["weights"] == "trained" else "PRELIMINARY")

    pdf_answer = get(api, ident, "pdf")
    document = dicom_of(pdf_answer)
    assert document.SOPClassUID == EncapsulatedPDFStorage
    pdf = api.get(f"/v1/analyses/{ident}/report.pdf").content
    assert bytes(document.EncapsulatedDocument)[: document.EncapsulatedDocumentLength] == pdf
    assert document.SourceInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    # The same instance every time, and nothing of the upload's identifiers in any of them.
    for kind, answer in (("seg", seg_answer), ("sr", sr_answer), ("pdf", pdf_answer)):
        assert get(api, ident, kind).content == answer.content
        dataset = pydicom.dcmread(io.BytesIO(answer.content))
        assert dataset.PatientID == f"DS-{ident}" and dataset.PatientName == ""
        for value in PHI_VALUES:
            if len(value) >= 8:
                assert value.encode() not in answer.content, (kind, value)
    # One audit row per read, with its own action.
    with context.session_factory() as session:
        actions = session.execute(
            select(AuditEvent.action).where(AuditEvent.tenant_id == tenant_key[0], AuditEvent.resource_id == ident)
        ).scalars().all()
    assert actions.count("dicom_seg.read") == 2 and actions.count("dicom_sr.read") == 2
    assert actions.count("dicom_pdf.read") == 2


def test_a_jpeg_upload_gets_its_own_study_and_a_rejected_one_only_its_pdf(api, worker, wait, wait_final):
    jpeg = encode_jpeg(LESION)
    analysis = reported(api, wait, wait_final, api.post("/v1/analyses", files={"image": ("a.jpg", jpeg, "image/jpeg")}))
    assert analysis["status"] == "succeeded" and analysis["dicom_source"] is None
    seg = hd.seg.segread(io.BytesIO(get(api, analysis["id"], "seg").content))
    assert seg.StudyInstanceUID == uid_for(analysis["id"], "study")
    assert seg.get_source_image_uids()[0][2] == uid_for(analysis["id"], "image")
    sr = hd.sr.srread(io.BytesIO(get(api, analysis["id"], "sr").content))
    assert sr.StudyInstanceUID == seg.StudyInstanceUID

    blurred = encode_jpeg(make_lesion(seed=34, size=(240, 320), blur=8.0).image)
    rejected = reported(api, wait, wait_final, api.post("/v1/analyses",
                                                        files={"image": ("b.jpg", blurred, "image/jpeg")}))
    assert rejected["status"] == "rejected"
    for kind in ("seg", "sr"):
        answer = get(api, rejected["id"], kind)
        assert answer.status_code == 409 and "retry-after" not in answer.headers
        assert answer.json()["type"].endswith("not_ready") and "only succeeded analyses" in answer.json()["detail"]
    assert dicom_of(get(api, rejected["id"], "pdf")).SOPClassUID == EncapsulatedPDFStorage


def test_409_until_the_report_is_ready_and_404_for_another_tenant(api, api_url, context, tenant_key):
    now = utcnow()
    pending = uuid.uuid4()
    with session_scope(context.session_factory) as session:
        session.add(Analysis(
            id=pending, tenant_id=tenant_key[0], status="processing", stage="classification", priority="interactive",
            attempt=1, sex="unknown", site="unknown", image_key="k", image_sha256="ab" * 32,
            image_content_type="image/png", image_width=320, image_height=240, created_at=now, updated_at=now,
        ))
    for kind in KINDS:
        answer = get(api, str(pending), kind)
        assert answer.status_code == 409, answer.text
        assert answer.headers["retry-after"] and answer.json()["type"].endswith("not_ready")
        assert get(api, str(uuid.uuid4()), kind).status_code == 404
        assert get(api, "not-an-id", kind).status_code in (404, 422)
    with session_scope(context.session_factory) as session:
        _, other_key = issue_key(session, f"other-{uuid.uuid4().hex[:8]}")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}, timeout=30) as other:
        for kind in KINDS:
            answer = get(other, str(pending), kind)
            # As for an id that does not exist: nothing says the analysis is there.
            assert answer.status_code == 404 and answer.json()["type"].endswith("not_found")
