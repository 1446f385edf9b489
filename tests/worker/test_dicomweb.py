"""The STOW-RS destination's request and its reading of the answer (issue 23), with no service;
tests/e2e/test_dicomweb.py stores to a real PACS (Orthanc) and reads the study back."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import Comprehensive3DSRStorage, EncapsulatedPDFStorage, SegmentationStorage

from shared.dicom.common import uid_for
from tests.factories import high_risk_trained, rejected_blurry
from worker.delivery import AttemptResult
from worker.dicomweb import (
    RESPONSE_READ_LIMIT,
    authorization,
    checked_response,
    multipart_related,
    store_answer,
    stow_objects,
    stow_url,
)

PDF = b"%PDF-1.4 a small report\n%%EOF\n"
PASSWORD = "s3cr3t-Pa55word"


def mask_png(height: int, width: int) -> bytes:
    mask = np.zeros((height, width), bool)
    mask[height // 4: height // 2, width // 4: width // 2] = True
    out = io.BytesIO()
    Image.fromarray(mask).save(out, format="PNG")
    return out.getvalue()


def three():
    record = high_risk_trained()
    mask = mask_png(record.image.height or 0, record.image.width or 0)
    return record, stow_objects(record, mask, PDF, "2025-03-14T09:00:05+00:00")


def http(status: int, internal: bool = False) -> AttemptResult:
    ok = 200 <= status < 300
    return AttemptResult(ok=ok, status_code=status, latency_ms=12.0, error=None if ok else f"HTTP {status}",
                         response_excerpt="raw excerpt", disable_endpoint=status == 410,
                         error_class=None if ok else f"http_{status // 100}xx", internal=internal)


def item(uid: str, sop_class: str, reason_tag: str | None = None, codes: tuple[int, ...] = ()) -> dict:
    found = {"00081150": {"vr": "UI", "Value": [sop_class]}, "00081155": {"vr": "UI", "Value": [uid]}}
    if reason_tag:
        found[reason_tag] = {"vr": "US", "Value": list(codes)}
    return found


def answer(stored: list[dict], failed: list[dict] | None = None) -> bytes:
    body = {"00081199": {"vr": "SQ", "Value": stored}, "00081198": {"vr": "SQ"}}
    if failed:
        body["00081198"]["Value"] = failed
    return json.dumps(body).encode()


def all_stored(objects) -> bytes:
    return answer([item(o.sop_instance_uid, o.sop_class_uid) for o in objects])


def test_a_succeeded_analysis_gives_seg_sr_and_pdf_with_uids_from_the_analysis():
    record, objects = three()
    assert [o.kind for o in objects] == ["seg", "sr", "pdf"]
    assert [o.sop_class_uid for o in objects] == [SegmentationStorage, Comprehensive3DSRStorage, EncapsulatedPDFStorage]
    assert [o.sop_instance_uid for o in objects] == [uid_for(record.id, kind) for kind in ("seg", "sr", "pdf")]
    for o in objects:
        dataset = pydicom.dcmread(io.BytesIO(o.data))
        assert dataset.SOPInstanceUID == o.sop_instance_uid and o.data[128:132] == b"DICM"
    # Built again (a retry, a resend): the same instances, byte for byte.
    assert [o.data for o in three()[1]] == [o.data for o in objects]


def test_a_rejected_analysis_gives_its_report_alone():
    record = rejected_blurry()
    (pdf,) = stow_objects(record, None, PDF, None)
    assert (pdf.kind, pdf.sop_class_uid, pdf.sop_instance_uid) == ("pdf", EncapsulatedPDFStorage,
                                                                   uid_for(record.id, "pdf"))


def test_the_request_is_multipart_related_with_one_dicom_part_per_instance():
    _, objects = three()
    boundary, body = multipart_related(objects)
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["application/dicom"] * 3
    assert [p.get_payload(decode=True) for p in parts] == [o.data for o in objects]
    assert body.endswith(f"--{boundary}--\r\n".encode())
    assert multipart_related(objects)[0] != boundary  # a new boundary per request
    assert stow_url("https://pacs.example.org/dicom-web/") == "https://pacs.example.org/dicom-web/studies"


def test_credentials_become_the_authorization_header():
    assert authorization('{"type":"none"}') == {}
    basic = authorization(json.dumps({"type": "basic", "username": "ds", "password": PASSWORD}))
    assert base64.b64decode(basic["authorization"].removeprefix("Basic ")).decode() == f"ds:{PASSWORD}"
    assert authorization('{"type":"bearer","token":"abc.def"}') == {"authorization": "Bearer abc.def"}
    with pytest.raises(ValueError):
        authorization('{"type":"digest"}')


def test_every_instance_stored_is_success_with_a_summary_of_our_own():
    _, objects = three()
    result = checked_response(http(200), all_stored(objects), objects)
    assert result.ok and result.error is None
    assert result.response_excerpt == "HTTP 200: stored 3 of 3 instances (SEG, SR, Encapsulated PDF)"
    assert not any(o.sop_instance_uid in result.response_excerpt for o in objects)
    # A top-level JSON array of one object (some servers) and the PS3.19 XML are read alike.
    wrapped = json.dumps([json.loads(all_stored(objects))]).encode()
    assert checked_response(http(200), wrapped, objects).ok


def test_warnings_are_success_and_failures_are_a_failed_attempt():
    _, objects = three()
    seg, sr, pdf = objects
    warned = answer([item(seg.sop_instance_uid, seg.sop_class_uid, "00081196", (0xB000,)),
                     item(sr.sop_instance_uid, sr.sop_class_uid), item(pdf.sop_instance_uid, pdf.sop_class_uid)])
    result = checked_response(http(202), warned, objects)
    assert result.ok and "warnings: SEG B000 (coercion of data elements)" in result.response_excerpt

    failed = answer([item(seg.sop_instance_uid, seg.sop_class_uid), item(pdf.sop_instance_uid, pdf.sop_class_uid)],
                    [item(sr.sop_instance_uid, sr.sop_class_uid, "00081197", (0xA700,))])
    result = checked_response(http(202), failed, objects)
    assert not result.ok and result.error_class == "instances_refused"
    assert result.error == "HTTP 202: 1 of the 3 instances were refused: SR A700 (out of resources)"
    assert result.response_excerpt is None

    # 409: none stored, each with its reason.
    every = answer([], [item(o.sop_instance_uid, o.sop_class_uid, "00081197", (0xC000,)) for o in objects])
    result = checked_response(http(409), every, objects)
    assert not result.ok and result.status_code == 409 and result.error_class == "http_4xx"
    assert result.error.startswith("HTTP 409: 3 of the 3 instances were refused: SEG C000 (cannot understand)")


def test_duplicates_are_already_there():
    _, objects = three()
    seg, sr, pdf = objects
    some = answer([item(seg.sop_instance_uid, seg.sop_class_uid)],
                  [item(sr.sop_instance_uid, sr.sop_class_uid, "00081197", (0x0111,)),
                   item(pdf.sop_instance_uid, pdf.sop_class_uid, "00081197", (0x0111,))])
    result = checked_response(http(202), some, objects)
    assert result.ok and result.response_excerpt.endswith("; 2 already there (duplicate SOP instance)")
    # A PACS that answers 409 because every instance is a duplicate: all are there.
    every = answer([], [item(o.sop_instance_uid, o.sop_class_uid, "00081197", (0x0111,)) for o in objects])
    assert checked_response(http(409), every, objects).ok


def test_an_answer_that_does_not_account_for_each_instance_is_not_trusted():
    _, objects = three()
    seg, sr, _ = objects
    partial = answer([item(seg.sop_instance_uid, seg.sop_class_uid), item(sr.sop_instance_uid, sr.sop_class_uid)])
    result = checked_response(http(200), partial, objects)
    assert not result.ok and result.error_class == "invalid_response"
    assert "2 of the 3 instances" in result.error and "Encapsulated PDF: neither" in result.error
    for raw in (b"", b"<html><body>OK</body></html>", b'{"status": "ok"}', b"OK"):
        result = checked_response(http(200), raw, objects)
        assert not result.ok and result.error_class == "invalid_response", raw
        assert "is url the DICOMweb base?" in result.error
    too_large = all_stored(objects) + b" " * RESPONSE_READ_LIMIT
    assert checked_response(http(200), too_large[:RESPONSE_READ_LIMIT], objects).error_class == "invalid_response"


def test_the_native_dicom_model_xml_answer():
    _, objects = three()
    items = "".join(
        f'<Item number="{n}"><DicomAttribute tag="00081150" vr="UI"><Value number="1">{o.sop_class_uid}</Value>'
        f'</DicomAttribute><DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID">'
        f'<Value number="1">{o.sop_instance_uid}</Value></DicomAttribute></Item>'
        for n, o in enumerate(objects, 1)
    )
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/'
           f'NativeDICOM"><DicomAttribute tag="00081199" vr="SQ">{items}</DicomAttribute></NativeDicomModel>')
    assert checked_response(http(200), xml.encode(), objects).ok
    parsed = store_answer(xml.encode())
    assert parsed is not None and set(parsed.stored) == {o.sop_instance_uid for o in objects}
    entity = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><NativeDicomModel/>'
    assert store_answer(entity) is None


def test_refused_credentials_say_so_and_the_log_of_an_internal_pacs_keeps_the_class():
    _, objects = three()
    result = checked_response(http(401), b"Unauthorized", objects, auth_type="basic")
    assert not result.ok and result.status_code == 401 and result.error_class == "auth_refused"
    assert result.error == ("HTTP 401: the PACS refused the Basic credentials; PUT /v1/dicomweb-destination with "
                            "the right credentials")
    logged = checked_response(http(403, internal=True), b"", objects, auth_type="bearer").as_logged()
    assert (logged.status_code, logged.error, logged.response_excerpt) == (403, "auth_refused", None)
    # Other refusals keep the transport's outcome (410 still disables the destination).
    gone = checked_response(http(410), b"", objects)
    assert not gone.ok and gone.disable_endpoint
    assert checked_response(http(503), b"busy", objects).error_class == "http_5xx"
