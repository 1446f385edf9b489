"""The write-back's transaction Bundle and its check of the answer (issue 23), with no service;
tests/e2e/test_fhir_writeback.py sends it to a real FHIR server."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import uuid
from urllib.parse import parse_qs

import pytest

from tests.factories import high_risk_trained, low_risk_untrained, rejected_blurry
from worker.delivery import AttemptResult
from worker.fhir_writeback import (
    MAX_PDF_BYTES,
    OBSERVATION_ID_SYSTEM,
    REPORT_PDF_SYSTEM,
    RESOURCE_KEY_SYSTEM,
    checked_response,
    transaction_bundle,
)
from worker.reporting.fhir import ANALYSIS_ID_SYSTEM, MODEL_SHA256_SYSTEM, BundleLinks, build_fhir_bundle

PDF = b"%PDF-1.4 a small report\n%%EOF\n"
LINKS = BundleLinks(
    report="https://api.example.test/v1/analyses/1b4e28ba-2fa1-11d2-883f-0016d3cca427/report.pdf",
    image="https://api.example.test/v1/analyses/1b4e28ba-2fa1-11d2-883f-0016d3cca427/artifacts/image",
    overlay="https://api.example.test/v1/analyses/1b4e28ba-2fa1-11d2-883f-0016d3cca427/artifacts/overlay",
)


def _stored(record=None) -> tuple[dict, uuid.UUID]:
    record = record or high_risk_trained()
    return build_fhir_bundle(record, LINKS), uuid.UUID(str(record.id))


def _search(entry: dict) -> dict[str, list[str]]:
    return parse_qs(entry["request"]["ifNoneExist"])


def _references(node) -> list[str]:
    if isinstance(node, list):
        return [ref for item in node for ref in _references(item)]
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [ref for value in node.values() for ref in _references(value)]
    return []


def test_every_resource_is_a_conditional_create_on_our_identifiers():
    stored, analysis_id = _stored()
    bundle = transaction_bundle(stored, analysis_id, PDF)
    assert bundle["type"] == "transaction"
    entries = bundle["entry"]
    assert len(entries) == len(stored["entry"]) + 1  # the PDF's DocumentReference
    keys = set()
    for entry in entries:
        resource, request = entry["resource"], entry["request"]
        assert request["method"] == "POST" and request["url"] == resource["resourceType"]
        assert "id" not in resource
        (param, values), = _search(entry).items()
        system, value = values[0].split("|", 1)
        holder = resource.get("identifier", []) if param == "identifier" else resource["meta"]["tag"]
        assert any(i.get("system") == system and (i.get("value") or i.get("code")) == value for i in holder)
        keys.add((resource["resourceType"], values[0]))
    assert len(keys) == len(entries), "no two entries share a key"

    by_type = {}
    for entry in entries:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry)
    (report,) = by_type["DiagnosticReport"]
    assert _search(report) == {"identifier": [f"{ANALYSIS_ID_SYSTEM}|{analysis_id}"]}
    observation_keys = {_search(e)["identifier"][0] for e in by_type["Observation"]}
    assert f"{OBSERVATION_ID_SYSTEM}|{analysis_id}/malignancy-probability" in observation_keys
    assert f"{OBSERVATION_ID_SYSTEM}|{analysis_id}/disposition" in observation_keys
    # A model is one Device in the EHR, whichever analysis names it.
    assert all(_search(e)["identifier"][0].startswith(MODEL_SHA256_SYSTEM + "|") for e in by_type["Device"])
    media_keys = [_search(e)["identifier"][0] for e in by_type["Media"]]
    assert media_keys and all(key.startswith(f"{RESOURCE_KEY_SYSTEM}|{analysis_id}/") for key in media_keys)
    # No key holds a urn:uuid: a server rewrites those wherever it finds them.
    assert "urn:uuid:" not in json.dumps([e["request"] for e in entries])


def test_references_point_at_the_transactions_full_urls():
    stored, analysis_id = _stored()
    bundle = transaction_bundle(stored, analysis_id, PDF)
    full_urls = {entry["fullUrl"] for entry in bundle["entry"]}
    assert all(url.startswith("urn:uuid:") for url in full_urls)
    internal = [ref for ref in _references(bundle["entry"]) if ref.startswith("urn:uuid:")]
    assert internal and set(internal) <= full_urls
    (report,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert {r["reference"] for r in report["resource"]["result"]} == {
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    }


def test_the_pdf_travels_as_a_document_reference_of_the_report():
    stored, analysis_id = _stored(low_risk_untrained())
    bundle = transaction_bundle(stored, analysis_id, PDF)
    (entry,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"]
    (report,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    document = entry["resource"]
    assert _search(entry) == {"identifier": [f"{REPORT_PDF_SYSTEM}|{analysis_id}"]}
    attachment = document["content"][0]["attachment"]
    assert base64.b64decode(attachment["data"]) == PDF
    assert attachment["size"] == len(PDF)
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(PDF).digest()).decode()
    assert attachment["contentType"] == "application/pdf"
    assert document["context"]["related"] == [{"reference": report["fullUrl"]}]
    assert document["docStatus"] == "preliminary", "untrained weights: never final, the PDF neither"
    assert document.get("subject") == report["resource"].get("subject")
    assert document["meta"]["security"] == report["resource"]["meta"]["security"]


def test_a_pdf_above_the_cap_is_referenced_by_its_url():
    stored, analysis_id = _stored()
    big = b"%PDF" + b"0" * MAX_PDF_BYTES
    bundle = transaction_bundle(stored, analysis_id, big)
    (document,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"]
    attachment = document["content"][0]["attachment"]
    assert "data" not in attachment and attachment["url"] == LINKS.report
    assert attachment["size"] == len(big)


def test_the_same_report_makes_the_same_transaction():
    stored, analysis_id = _stored()
    original = copy.deepcopy(stored)
    first = transaction_bundle(stored, analysis_id, PDF)
    assert json.dumps(first, sort_keys=True) == json.dumps(transaction_bundle(stored, analysis_id, PDF), sort_keys=True)
    assert stored == original, "the stored bundle is not changed"


def test_a_rejected_analysis_writes_back_its_report_without_observations():
    stored, analysis_id = _stored(rejected_blurry())
    types = sorted(e["resource"]["resourceType"] for e in transaction_bundle(stored, analysis_id, PDF)["entry"])
    assert "Observation" not in types
    assert types.count("DiagnosticReport") == 1 and types.count("DocumentReference") == 1


def test_resources_another_change_adds_flow_through_with_their_references():
    """Transparency resources (a Provenance has no identifier; a Device referenced by its
    relative id) are written back like the rest."""
    stored, analysis_id = _stored()
    # The bundle as it was before the report task wrote its own Provenance and cards (issue 23):
    # these stand for resources a later change adds.
    stored["entry"] = [e for e in stored["entry"]
                       if e["resource"]["resourceType"] not in {"Provenance", "DocumentReference"}]
    report_url = stored["entry"][0]["fullUrl"]
    device = next(e for e in stored["entry"] if e["resource"]["resourceType"] == "Device")
    device_ref = f"Device/{device['resource']['id']}"
    stored["entry"].append({
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": {
            "resourceType": "Provenance",
            "id": "prov-1",
            "target": [{"reference": report_url}],
            "recorded": "2025-03-14T09:26:55+00:00",
            "agent": [{"who": {"reference": device_ref}}],
        },
    })
    stored["entry"].append({
        "fullUrl": "https://dermasentinel.org/fhir/DocumentReference/model-card-2.0.1",
        "resource": {
            "resourceType": "DocumentReference",
            "status": "current",
            "identifier": [{"system": "https://dermasentinel.org/fhir/NamingSystem/model-card", "value": "2.0.1"}],
            "content": [{"attachment": {"url": "https://example.test/card"}}],
        },
    })
    bundle = transaction_bundle(stored, analysis_id, PDF)
    by_url = {e["fullUrl"]: e for e in bundle["entry"]}
    (provenance,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"]
    assert _search(provenance)["_tag"][0].startswith(f"{RESOURCE_KEY_SYSTEM}|{analysis_id}/")
    assert provenance["resource"]["target"] == [{"reference": report_url}]
    assert provenance["resource"]["agent"][0]["who"]["reference"] == device["fullUrl"]
    assert device["fullUrl"] in by_url
    card = next(e for e in bundle["entry"] if e["resource"].get("identifier", [{}])[0].get("value") == "2.0.1")
    assert card["fullUrl"].startswith("urn:uuid:")
    assert _search(card) == {"identifier": ["https://dermasentinel.org/fhir/NamingSystem/model-card|2.0.1"]}


def _ok(status: int = 200) -> AttemptResult:
    return AttemptResult(ok=True, status_code=status, latency_ms=3.0, error=None, response_excerpt="{...}",
                         disable_endpoint=False)


def _answer(bundle: dict, statuses: list[str]) -> bytes:
    return json.dumps({
        "resourceType": "Bundle", "type": "transaction-response",
        "entry": [{"response": {"status": s, "location": f"{e['request']['url']}/{i}"}}
                  for i, (e, s) in enumerate(zip(bundle["entry"], statuses, strict=True))],
    }).encode()


@pytest.fixture(scope="module")
def sent() -> dict:
    stored, analysis_id = _stored()
    return transaction_bundle(stored, analysis_id, PDF)


def test_every_entry_2xx_is_success_and_the_log_keeps_a_summary(sent):
    n = len(sent["entry"])
    outcome = checked_response(_ok(), _answer(sent, ["201 Created"] * (n - 2) + ["200 OK"] * 2), sent, 1 << 20)
    assert outcome.ok and outcome.error is None
    assert outcome.response_excerpt.startswith(f"transaction-response: {n - 2} of {n} entries created, 2 already")
    assert "DiagnosticReport DiagnosticReport/0" in outcome.response_excerpt


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (lambda b: _answer(b, ["201"] * (len(b["entry"]) - 1) + ["412"]), "1 of "),
        (lambda b: _answer({"entry": b["entry"][:-1]}, ["201"] * (len(b["entry"]) - 1)), "entries for the"),
        (lambda b: b"<html>proxy error</html>", "not JSON"),
        (lambda b: json.dumps({"resourceType": "OperationOutcome"}).encode(), "not a transaction-response"),
    ],
)
def test_an_answer_that_is_not_all_2xx_is_a_failure(sent, answer, says):
    outcome = checked_response(_ok(), answer(sent), sent, 1 << 20)
    assert not outcome.ok and says in outcome.error
    assert outcome.response_excerpt is None
    assert outcome.error_class in {"entry_refused", "invalid_response"}


def test_an_answer_cut_at_the_read_limit_is_not_trusted(sent):
    outcome = checked_response(_ok(), b"x" * 100, sent, 100)
    assert not outcome.ok and "larger than 100 bytes" in outcome.error
