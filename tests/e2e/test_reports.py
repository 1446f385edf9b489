"""PDF report, FHIR Bundle and clinician feedback through the real stack."""

from __future__ import annotations

import csv
import io

from fhir.resources.R4B.bundle import Bundle
from pypdf import PdfReader

from worker.pipeline.synthetic import encode_jpeg, make_lesion


def _submit(api, seed=31, **fields):
    image = encode_jpeg(make_lesion(seed=seed, size=(240, 320), radius_frac=0.2, irregularity=0.4).image)
    data = {"age": "47", "sex": "female", "site": "lower extremity", "external_id": f"mrn-{seed}", **fields}
    return api.post("/v1/analyses", files={"image": ("l.jpg", image, "image/jpeg")}, data=data).json()


def test_report_is_409_until_ready_then_pdf_and_fhir(api, worker, wait, wait_final):
    created = _submit(api)
    early = api.get(f"/v1/analyses/{created['id']}/report.pdf")
    if early.status_code == 409:
        assert early.headers["retry-after"]
        assert early.headers["content-type"].startswith("application/problem+json")

    analysis = wait_final(created["id"])
    assert analysis["status"] == "succeeded"
    pdf = wait(lambda: (r := api.get(f"/v1/analyses/{created['id']}/report.pdf")).status_code == 200 and r,
               timeout=120, message="the PDF report")
    assert pdf.headers["content-type"] == "application/pdf"
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    flat = " ".join(text.split())
    assert created["id"] in flat
    assert f"{analysis['result']['probability']:.2f}" in flat
    assert "UNTRAINED MODEL" in flat
    assert "not a certified medical device" in flat.lower()

    fhir = api.get(f"/v1/analyses/{created['id']}/fhir")
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate(fhir.json())
    kinds = [entry.resource.get_resource_type() for entry in bundle.entry]
    assert kinds.count("DiagnosticReport") == 1 and "Observation" in kinds and "Device" in kinds
    report = next(e.resource for e in bundle.entry if e.resource.get_resource_type() == "DiagnosticReport")
    assert report.presentedForm[0].url.endswith(f"/v1/analyses/{created['id']}/report.pdf")
    assert "mrn-31" in fhir.text
    assert api.get(f"/v1/analyses/{created['id']}").json()["report"]["ready"] is True


def test_rejected_analysis_gets_a_short_report(api, worker, wait, wait_final):
    image = encode_jpeg(make_lesion(seed=32, size=(240, 320), blur=8.0).image)
    created = api.post("/v1/analyses", files={"image": ("b.jpg", image, "image/jpeg")}).json()
    assert wait_final(created["id"])["status"] == "rejected"
    pdf = wait(lambda: (r := api.get(f"/v1/analyses/{created['id']}/report.pdf")).status_code == 200 and r,
               timeout=120, message="the rejection report")
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages).split())
    assert "blur" in text.lower()
    assert "retake" in text.lower() or "focus" in text.lower()


def test_feedback_is_stored_shown_and_exported(api, worker, wait_final, settings, tmp_path):
    from cli.exports import export_feedback

    created = _submit(api, seed=33)
    analysis = wait_final(created["id"])
    assert analysis["status"] == "succeeded"
    response = api.post(
        f"/v1/analyses/{created['id']}/feedback",
        json={"agrees": False, "final_diagnosis": "dysplastic nevus", "histopathology": "compound nevus, mild atypia"},
    )
    assert response.status_code == 201
    shown = api.get(f"/v1/analyses/{created['id']}").json()["feedback"]
    assert shown[0]["final_diagnosis"] == "dysplastic nevus" and shown[0]["agrees"] is False
    assert api.post(f"/v1/analyses/{created['id']}/feedback", json={"agrees": "maybe"}).status_code == 422

    out = tmp_path / "feedback.csv"
    export_feedback(settings, out, all_tenants=True)
    rows = [r for r in csv.DictReader(out.open()) if r["analysis_id"] == created["id"]]
    assert len(rows) == 1
    row = rows[0]
    assert row["final_diagnosis"] == "dysplastic nevus"
    assert float(row["probability"]) == analysis["result"]["probability"]
    assert row["weights"] == "untrained"
    assert row["image_key"].startswith("tenants/")


def test_fhir_media_links_are_stable_and_redirect_to_fresh_downloads(api, worker, wait, wait_final):
    import httpx

    created = _submit(api, seed=34)
    assert wait_final(created["id"])["status"] == "succeeded"
    bundle = wait(lambda: (r := api.get(f"/v1/analyses/{created['id']}/fhir")).status_code == 200 and r.json(),
                  timeout=120, message="the FHIR bundle")
    media = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Media"]
    urls = sorted(m["content"]["url"] for m in media)
    assert urls == sorted(f"{api.base_url}/v1/analyses/{created['id']}/artifacts/{n}" for n in ("image", "overlay"))
    for url in urls:
        redirect = api.get(url, follow_redirects=False)
        assert redirect.status_code == 307
        download = httpx.get(redirect.headers["location"])
        assert download.status_code == 200 and download.headers["content-type"].startswith("image/")


def test_the_bundle_places_the_patient_encounter_and_external_id(api, worker, wait, wait_final):
    """Issue 23 through the real API and worker: `external_id` is the DiagnosticReport's
    identifier, `patient_reference` its subject, `encounter_reference` its encounter, never a
    Patient resource; a Device for the model and a Provenance link the AI output to it."""
    created = _submit(api, seed=35, external_id="acc-35", patient_reference="Patient/p-35",
                      encounter_reference="urn:oid:1.2.36.1|visit-35")
    assert created["inputs"]["patient_reference"] == "Patient/p-35"
    assert wait_final(created["id"])["status"] == "succeeded"
    body = wait(lambda: (r := api.get(f"/v1/analyses/{created['id']}/fhir")).status_code == 200 and r.json(),
                timeout=120, message="the FHIR bundle")
    Bundle.model_validate(body)
    entries = {e["fullUrl"]: e["resource"] for e in body["entry"]}
    by_type: dict[str, list[dict]] = {}
    for resource in entries.values():
        by_type.setdefault(resource["resourceType"], []).append(resource)
    (report,) = by_type["DiagnosticReport"]
    assert report["status"] == "preliminary"  # the test stack's weights are not trained
    assert {"system": "https://dermasentinel.org/fhir/NamingSystem/external-id", "value": "acc-35"} in report[
        "identifier"]
    assert report["subject"] == {"reference": "Patient/p-35", "type": "Patient"}
    visit = {"system": "urn:oid:1.2.36.1", "value": "visit-35"}
    assert report["encounter"] == {"type": "Encounter", "identifier": visit}
    assert "Patient" not in by_type
    assert all(o["subject"] == report["subject"] for o in by_type["Observation"])
    assert "acc-35" not in str([r for r in entries.values() if r is not report])
    (provenance,) = by_type["Provenance"]
    targets = {t["reference"] for t in provenance["target"]}
    assert {r["reference"] for r in report["result"]} <= targets
    for agent in provenance["agent"]:
        assert entries[agent["who"]["reference"]]["resourceType"] == "Device"
    model_device = next(d for d in by_type["Device"] if "property" in d)
    codes = {p["type"]["coding"][0]["code"] for p in model_device["property"]}
    assert {"weights-status", "decision-threshold", "rule-out-threshold"} <= codes
