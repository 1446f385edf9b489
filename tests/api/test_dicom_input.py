"""DICOM in through the real API, S3, ingest worker and pipeline (issue 23): a DICOM file full
of identifiers is analysed through multipart and direct uploads, the header's age, sex and site
fill what the form leaves out (the form wins when it gives them), and afterwards not one byte
of the identifiers is anywhere in the object store or in the tenant's database rows. Files
that cannot be analysed are refused with the reason."""

from __future__ import annotations

import io
import uuid

import httpx
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLosslessSV1
from pypdf import PdfReader
from sqlalchemy import func, select, text

from shared.storage import ARTIFACTS, IMAGES, tenant_prefix, upload_key
from shared.tables import Analysis
from tests.dicom_files import (
    CT_IMAGE,
    DERMOSCOPIC_PHOTOGRAPHY,
    PHI_VALUES,
    SECONDARY_CAPTURE,
    VL_PHOTOGRAPHIC,
    anatomic_region,
    dicom_file,
)
from worker.pipeline.synthetic import make_lesion

LESION = make_lesion(seed=31, size=(240, 320), radius_frac=0.2, irregularity=0.4).image
# Long enough that no hash, UID or compressed stream holds one by chance.
SEARCHED = tuple(value for value in PHI_VALUES if len(value) >= 8)
# The tenant's rows that could hold anything of an analysis.
TENANT_TABLES = ("analyses", "reports", "events", "uploads", "audit_events", "webhook_endpoints")


def header(**changes: object) -> dict[str, object]:
    """What a clinic's dermatoscope writes besides the identifiers: age, sex, region."""
    return {"PatientAge": "061Y", "PatientSex": "F",
            "AnatomicRegionSequence": anatomic_region("Trunk structure", "22943007"), **changes}


def post_dicom(api: httpx.Client, raw: bytes, content_type: str = "application/dicom", **fields: str) -> httpx.Response:
    return api.post("/v1/analyses", files={"image": ("lesion.dcm", raw, content_type)}, data=fields)


def report_ready(api: httpx.Client, wait, analysis_id: str) -> None:
    wait(lambda: api.get(f"/v1/analyses/{analysis_id}").json()["report"]["ready"], timeout=120,
         message="the report")


def assert_nothing_identifying_is_stored(context, tenant_id: uuid.UUID) -> int:
    """Every object of the tenant in both buckets (images, masks, overlays, PDFs, any raw upload
    left), the PDFs' text too, and every row of the tenant: none holds an identifier. Returns
    how many objects were read."""
    read = 0
    for purpose in (IMAGES, ARTIFACTS):
        for key in context.store.keys_under(purpose, tenant_prefix(tenant_id)):
            data = context.store.get(purpose, key)
            read += 1
            for value in SEARCHED:
                assert value.encode() not in data, f"{value!r} is in {purpose}/{key}"
                assert value.encode("utf-16-le") not in data and value.encode("utf-16-be") not in data, key
            if key.endswith(".pdf"):
                words = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)
                for value in SEARCHED:
                    assert value.lower() not in words.lower(), f"{value!r} is in the text of {key}"
    with context.session_factory() as session:
        for table in TENANT_TABLES:
            rows = session.execute(
                text(f"SELECT row_to_json(t)::text FROM {table} t WHERE tenant_id = :tenant"), {"tenant": tenant_id}
            ).scalars().all()
            for row in rows:
                for value in SEARCHED:
                    assert value not in row, f"{value!r} is in a row of {table}"
    return read


@pytest.mark.parametrize(
    ("sop_class", "transfer_syntax"),
    [
        (VL_PHOTOGRAPHIC, JPEGBaseline8Bit),
        (DERMOSCOPIC_PHOTOGRAPHY, ExplicitVRLittleEndian),
        (SECONDARY_CAPTURE, JPEGLosslessSV1),
    ],
    ids=["vl-photographic-jpeg-baseline", "dermoscopic-uncompressed", "secondary-capture-jpeg-lossless"],
)
def test_a_dicom_upload_full_of_identifiers_is_analysed_and_none_of_them_is_stored(
    api, worker, wait, wait_final, context, tenant_key, sop_class, transfer_syntax
):
    raw = dicom_file(LESION, sop_class=sop_class, transfer_syntax=transfer_syntax, **header())
    assert all(value.encode() in raw for value in ("Quixotica^Zebediah^Marmaduke", "MRN-88417-QZX", "19470329"))
    response = post_dicom(api, raw, external_id="dicom-1")
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["inputs"] == {"age": 61, "sex": "female", "site": "torso", "pixel_spacing_mm": None,
                                 "patient_reference": None, "encounter_reference": None}
    source = pydicom.dcmread(io.BytesIO(raw))
    assert created["dicom_source"] == {
        "study_instance_uid": source.StudyInstanceUID,
        "series_instance_uid": source.SeriesInstanceUID,
        "sop_instance_uid": source.SOPInstanceUID,
        "sop_class_uid": sop_class,
        "transfer_syntax_uid": transfer_syntax,
    }
    lossy = transfer_syntax == JPEGBaseline8Bit
    assert created["image"]["content_type"] == ("image/jpeg" if lossy else "image/png")
    assert (created["image"]["width"], created["image"]["height"]) == (320, 240)

    final = wait_final(created["id"])
    assert final["status"] == "succeeded", final.get("rejection") or final.get("error")
    assert final["dicom_source"] == created["dicom_source"]
    report_ready(api, wait, created["id"])
    stored = httpx.get(final["artifacts"]["image"], timeout=30).content
    assert not stored.startswith(b"\0" * 128) and b"DICM" not in stored
    assert assert_nothing_identifying_is_stored(context, tenant_key[0]) >= 4  # image, mask, overlay, PDF


def test_the_form_wins_and_the_header_fills_only_what_it_leaves_out(api, context, tenant_key):
    raw = dicom_file(LESION, **header(BodyPartExamined="LEG"))
    given = post_dicom(api, raw, age="40", sex="male", site="head/neck").json()
    assert given["inputs"]["age"] == 40 and given["inputs"]["sex"] == "male" and given["inputs"]["site"] == "head/neck"
    partly = post_dicom(api, dicom_file(LESION, **header()), sex="male").json()
    assert (partly["inputs"]["age"], partly["inputs"]["sex"], partly["inputs"]["site"]) == (61, "male", "torso")
    # The body part, when there is no coded region; an unknown one leaves the site unknown.
    leg = post_dicom(api, dicom_file(LESION, PatientAge="018M", BodyPartExamined="LEG")).json()
    assert (leg["inputs"]["age"], leg["inputs"]["sex"], leg["inputs"]["site"]) == (1, "unknown", "lower extremity")
    skin = post_dicom(api, dicom_file(LESION, BodyPartExamined="SKIN", phi=False)).json()
    assert skin["inputs"] == {"age": None, "sex": "unknown", "site": "unknown", "pixel_spacing_mm": None,
                                 "patient_reference": None, "encounter_reference": None}
    # Content decides: a DICOM file sent as image/jpeg is DICOM; one without the Part 10
    # preamble is read when declared application/dicom.
    as_jpeg = post_dicom(api, dicom_file(LESION, **header()), content_type="image/jpeg").json()
    assert as_jpeg["dicom_source"] is not None and as_jpeg["inputs"]["age"] == 61
    bare = dicom_file(LESION, preamble=False, transfer_syntax=ImplicitVRLittleEndian, **header())
    assert post_dicom(api, bare).json()["inputs"]["site"] == "torso"
    refused = post_dicom(api, bare, content_type="application/octet-stream")
    assert refused.status_code == 415 and "JPEG, PNG or DICOM" in refused.json()["detail"]


def _frame_cut(raw: bytes) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(raw))
    frame = next(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=1))
    dataset.PixelData = pydicom.encaps.encapsulate([frame[: len(frame) // 2]])
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


REFUSED = {
    "truncated-native-pixels": (lambda: dicom_file(LESION)[:-4000], 422, "unreadable_image",
                                "could not be decoded: ValueError: The number of bytes of pixel data is less"),
    "cut-jpeg-stream": (lambda: _frame_cut(dicom_file(LESION, transfer_syntax=JPEGBaseline8Bit)), 422,
                        "unreadable_image", "could not be decoded: its JPEG stream has no end-of-image marker"),
    "ct-image": (lambda: dicom_file(LESION, sop_class=CT_IMAGE), 422, "unsupported_dicom",
                 "SOP class 1.2.840.10008.5.1.4.1.1.2 (CT Image Storage) is not accepted"),
    "monochrome": (lambda: dicom_file(LESION[:, :, 1]), 422, "unsupported_dicom", "MONOCHROME2"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_dicom_file_that_cannot_be_analysed_is_refused_saying_why_and_leaves_nothing(api, context, tenant_key,
                                                                                        case):
    make, status, code, why = REFUSED[case]
    response = post_dicom(api, make())
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["type"].endswith(code) and why in problem["detail"], problem
    with context.session_factory() as session:
        rows = session.execute(
            select(func.count()).select_from(Analysis).where(Analysis.tenant_id == tenant_key[0])
        ).scalar_one()
    assert rows == 0
    assert list(context.store.keys_under(IMAGES, tenant_prefix(tenant_key[0]))) == []


def _direct(api: httpx.Client, raw: bytes, **fields: object) -> tuple[dict, dict]:
    upload = api.post("/v1/uploads", json={"content_type": "application/dicom"}).json()
    assert upload["content_type"] == "application/dicom"
    assert upload["headers"] == {"Content-Type": "application/dicom"}
    put = httpx.put(upload["url"], content=raw, headers=upload["headers"], timeout=30)
    assert put.status_code == 200, put.text
    response = api.post("/v1/analyses", json={"upload_id": upload["id"], **fields})
    assert response.status_code == 202, response.text
    return upload, response.json()


def test_a_direct_upload_of_dicom_is_checked_by_ingest_and_analysed(api, worker, wait, wait_final, context, tenant_key):
    raw = dicom_file(LESION, sop_class=DERMOSCOPIC_PHOTOGRAPHY, transfer_syntax=JPEGLosslessSV1,
                     **header(PixelSpacing=[0.02, 0.02]))
    upload, created = _direct(api, raw, external_id="direct-dicom", sex="male")
    assert created["dicom_source"] is None  # nothing has read the file yet
    final = wait_final(created["id"])
    assert final["status"] == "succeeded", final.get("rejection") or final.get("error")
    # The header filled what the submission left out; the submission's sex stays.
    assert final["inputs"] == {"age": 61, "sex": "male", "site": "torso", "pixel_spacing_mm": 0.02,
                               "patient_reference": None, "encounter_reference": None}
    assert final["result"]["concepts"]["diameter_mm"] is not None
    source = pydicom.dcmread(io.BytesIO(raw))
    assert final["dicom_source"]["sop_instance_uid"] == source.SOPInstanceUID
    assert final["dicom_source"]["sop_class_uid"] == DERMOSCOPIC_PHOTOGRAPHY
    assert final["image"]["content_type"] == "image/png"
    assert not context.store.exists(IMAGES, upload_key(tenant_key[0], uuid.UUID(upload["id"])))
    report_ready(api, wait, created["id"])
    assert_nothing_identifying_is_stored(context, tenant_key[0])
    # The scan bites: the raw file under the tenant's prefix is found.
    planted = f"{tenant_prefix(tenant_key[0])}planted.dcm"
    context.store.put(IMAGES, planted, raw, "application/dicom")
    with pytest.raises(AssertionError, match="is in images/"):
        assert_nothing_identifying_is_stored(context, tenant_key[0])
    context.store.delete(IMAGES, planted)

    # Bulk: the same checks, one call for the ids and one for the submission.
    bulk = api.post("/v1/uploads/bulk", json={"content_type": "application/dicom", "count": 2}).json()["uploads"]
    files = [dicom_file(LESION, **header()), dicom_file(LESION, sop_class=CT_IMAGE)]
    for made, data in zip(bulk, files, strict=True):
        assert httpx.put(made["url"], content=data, headers=made["headers"], timeout=30).status_code == 200
    answer = api.post("/v1/uploads/submit", json={"items": [{"upload_id": made["id"]} for made in bulk]}).json()
    assert answer["accepted"] == 2
    accepted, refused = (wait_final(item["analysis"]["id"]) for item in answer["results"])
    assert accepted["status"] == "succeeded" and accepted["inputs"]["age"] == 61
    assert refused["status"] == "rejected" and refused["rejection"]["code"] == "unsupported_dicom"
    assert "CT Image Storage" in refused["rejection"]["detail"] and refused["rejection"]["at"] == "ingest"
    assert "VL Photographic" in refused["rejection"]["advice"]


def test_ingest_refuses_what_the_api_refuses_with_the_same_answer(api, worker, wait_final):
    for case in ("truncated-native-pixels", "ct-image"):
        make, _, code, _ = REFUSED[case]
        data = make()
        through_api = post_dicom(api, data).json()
        _, created = _direct(api, data)
        final = wait_final(created["id"])
        assert final["status"] == "rejected" and final["rejection"]["code"] == code
        assert final["rejection"]["detail"] == through_api["detail"]
        assert final["dicom_source"] is None and "image" not in final["artifacts"]
