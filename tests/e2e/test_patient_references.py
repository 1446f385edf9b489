"""Issue 23: patient and encounter references through the real API: accepted on every submit
path and shown back in `inputs`, refused with a 422 that names the field (multipart form, JSON
body, and each item of a direct-upload submission)."""

from __future__ import annotations

import httpx

from worker.pipeline.synthetic import encode_jpeg, make_lesion

PATIENT = "urn:oid:1.2.36.146.595.217.0.1|MRN-4411"
ENCOUNTER = "Encounter/visit-2025-0314"


def _image(seed: int) -> bytes:
    return encode_jpeg(make_lesion(seed=seed, size=(120, 160), radius_frac=0.22).image)


def _problem(response: httpx.Response, field: str) -> dict:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert [e["field"] for e in body["errors"]] == [field], body
    assert body["detail"].startswith(f"{field}: ")
    return body


def _uploaded(api: httpx.Client, seed: int) -> str:
    upload = api.post("/v1/uploads", json={"content_type": "image/jpeg"}).json()
    put = httpx.put(upload["url"], content=_image(seed), headers=upload["headers"], timeout=30)
    assert put.status_code == 200, put.text
    return upload["id"]


def test_references_are_accepted_stored_and_shown_on_each_submit_path(api):
    form = api.post("/v1/analyses", files={"image": ("a.jpg", _image(61), "image/jpeg")},
                    data={"patient_reference": PATIENT, "encounter_reference": ENCOUNTER, "external_id": "acc-61"})
    assert form.status_code == 202, form.text
    shown = api.get(f"/v1/analyses/{form.json()['id']}").json()
    assert (shown["inputs"]["patient_reference"], shown["inputs"]["encounter_reference"]) == (PATIENT, ENCOUNTER)
    assert shown["external_id"] == "acc-61"

    direct = api.post("/v1/analyses", json={"upload_id": _uploaded(api, 62), "patient_reference": "Patient/p62"})
    assert direct.status_code == 202, direct.text
    assert direct.json()["inputs"]["patient_reference"] == "Patient/p62"
    assert direct.json()["inputs"]["encounter_reference"] is None

    bulk = api.post("/v1/uploads/submit", json={"items": [
        {"upload_id": _uploaded(api, 63), "patient_reference": "https://ehr.example.test/fhir/Patient/63",
         "encounter_reference": "https://ehr.example.test/visits|V-63"},
    ]})
    assert bulk.status_code == 200, bulk.text
    (item,) = bulk.json()["results"]
    assert item["status"] == 202
    assert item["analysis"]["inputs"]["patient_reference"] == "https://ehr.example.test/fhir/Patient/63"
    assert item["analysis"]["inputs"]["encounter_reference"] == "https://ehr.example.test/visits|V-63"
    listed = api.get("/v1/analyses", params={"limit": 10}).json()["data"]
    assert {a["inputs"]["patient_reference"] for a in listed} >= {PATIENT, "Patient/p62"}


def test_a_bad_reference_is_a_422_naming_the_field_on_each_path(api):
    image = {"image": ("a.jpg", _image(64), "image/jpeg")}
    _problem(api.post("/v1/analyses", files=image, data={"patient_reference": "MRN-4411"}), "patient_reference")
    _problem(api.post("/v1/analyses", files=image, data={"patient_reference": "Encounter/1"}), "patient_reference")
    _problem(api.post("/v1/analyses", files=image, data={"encounter_reference": "Patient/1"}), "encounter_reference")
    _problem(api.post("/v1/analyses", files=image, data={"encounter_reference": "mrn|1"}), "encounter_reference")
    refused = _problem(api.post("/v1/analyses", json={"upload_id": _uploaded(api, 65),
                                                      "patient_reference": "urn:oid:1.2.3|MRN\n1"}),
                       "patient_reference")
    assert "MRN" not in refused["detail"], "a refusal never repeats what may identify a patient"
    items = [{"upload_id": _uploaded(api, 66), "encounter_reference": "Encounter/has space"}]
    _problem(api.post("/v1/uploads/submit", json={"items": items}), "items.0.encounter_reference")
    # Nothing was stored for any of them.
    assert api.get("/v1/analyses").json()["data"] == []
