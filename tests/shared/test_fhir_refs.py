"""shared.fhir_refs: the one parser of patient and encounter references (issue 23), as the API,
direct uploads' submit items, CLI manifests and the FHIR bundle read them. No services."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.reference import Reference
from pydantic import ValidationError

from api import forms
from api.problems import Unprocessable
from cli.manifest import _fields
from shared.fhir_refs import MAX_LENGTH, InvalidReference, parse_reference
from shared.schemas import AnalysisInputs

GOOD_PATIENTS = {
    "Patient/123": ("relative", {"reference": "Patient/123", "type": "Patient"}),
    "Patient/a-b.C9": ("relative", {"reference": "Patient/a-b.C9", "type": "Patient"}),
    "Patient/123/_history/4": ("relative", {"reference": "Patient/123/_history/4", "type": "Patient"}),
    f"Patient/{'x' * 64}": ("relative", {"reference": f"Patient/{'x' * 64}", "type": "Patient"}),
    "https://ehr.example.org/fhir/Patient/123": (
        "absolute", {"reference": "https://ehr.example.org/fhir/Patient/123", "type": "Patient"}
    ),
    "http://10.0.0.5:8080/baseR4/Patient/p1/_history/2": (
        "absolute", {"reference": "http://10.0.0.5:8080/baseR4/Patient/p1/_history/2", "type": "Patient"}
    ),
    "urn:oid:1.2.36.146.595.217.0.1|12345": (
        "identifier",
        {"type": "Patient", "identifier": {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}},
    ),
    "https://hospital.example.org/mrn|MRN 0042": (
        "identifier",
        {"type": "Patient", "identifier": {"system": "https://hospital.example.org/mrn", "value": "MRN 0042"}},
    ),
}


@pytest.mark.parametrize("text", list(GOOD_PATIENTS))
def test_each_spelling_becomes_a_valid_fhir_reference(text):
    kind, fhir = GOOD_PATIENTS[text]
    parsed = parse_reference(text, "Patient")
    assert (parsed.kind, parsed.text, parsed.as_fhir()) == (kind, text, fhir)
    Reference.model_validate(parsed.as_fhir())


def test_an_encounter_takes_encounter_references():
    assert parse_reference("Encounter/visit-8812", "Encounter").as_fhir() == {
        "reference": "Encounter/visit-8812", "type": "Encounter",
    }
    assert parse_reference("urn:oid:2.16.840.1|V-1", "Encounter").as_fhir()["type"] == "Encounter"


BAD_PATIENTS = {
    "": "empty",
    "123": "not a reference",
    "patient/123": "not a reference",
    "Patient/": "not a reference",
    "Patient/a b": "not a reference",
    "Patient/abc_def": "not a reference",
    f"Patient/{'x' * 65}": "not a reference",
    "Patient/1/2": "not a reference",
    "Encounter/123": "refers to a Encounter",
    "Observation/1": "refers to a Observation",
    "https://ehr.example.org/fhir/Encounter/1": "refers to a Encounter",
    "https://ehr.example.org/patients/1": "ends in Patient/<id>",
    "https://ehr.example.org/patients?id=1": "no query or fragment",
    "https://ehr.example.org/fhir/Patient/1?x=1": "no query or fragment",
    "ftp://ehr.example.org/fhir/Patient/1": "not an http(s) URL",
    "https:///fhir/Patient/1": "not an http(s) URL",
    "|12345": "needs its system",
    "urn:oid:1.2.3|": "needs a value",
    "urn:oid:1.2.3|   x": "starts or ends with whitespace",
    "mrn|12345": "not a URI",
    "urn oid|12345": "not a URI",
    "urn:oid:1.2.3|12|34": "one '|'",
    "urn:oid:1.2.3| 12345": "starts or ends with whitespace",
    "Patient/1\n": "control character",
    "urn:oid:1.2.3|12\t345": "control character",
    "urn:oid:1.2.3|12\x00345": "control character",
    " Patient/1": "starts or ends with whitespace",
    "Patient/" + "1" * (MAX_LENGTH + 1): "longer than",
}


@pytest.mark.parametrize("text", list(BAD_PATIENTS))
def test_anything_else_is_refused_saying_why_without_quoting_it(text):
    with pytest.raises(InvalidReference) as refused:
        parse_reference(text, "Patient")
    message = str(refused.value)
    assert BAD_PATIENTS[text] in message
    if len(text) > 8:
        assert text.strip() not in message, "a refusal never repeats what may identify a patient"


def test_the_api_inputs_refuse_a_bad_reference_naming_the_field():
    inputs = AnalysisInputs.model_validate({"patient_reference": " Patient/1 ", "encounter_reference": "Encounter/2"})
    assert (inputs.patient_reference, inputs.encounter_reference) == ("Patient/1", "Encounter/2")
    with pytest.raises(ValidationError) as refused:
        AnalysisInputs.model_validate({"patient_reference": "Encounter/1"})
    assert refused.value.errors()[0]["loc"] == ("patient_reference",)
    for field, value in (("patient_reference", "mrn-1"), ("encounter_reference", "Patient/1")):
        with pytest.raises(Unprocessable) as problem:
            forms.parse_inputs({field: value})
        assert problem.value.errors[0]["field"] == field
        assert problem.value.detail.startswith(f"{field}: ")


def test_the_idempotency_fingerprint_is_unchanged_without_references():
    """Keys stored before issue 23 still replay: no reference, the same fingerprint text."""
    before = {"age": 54, "sex": "female", "site": "torso", "pixel_spacing_mm": None, "external_id": "x-1",
              "batch_id": None, "priority": "interactive"}
    assert AnalysisInputs.model_validate(before).fingerprint_fields() == before
    with_patient = AnalysisInputs.model_validate({**before, "patient_reference": "Patient/1"}).fingerprint_fields()
    assert with_patient == {**before, "patient_reference": "Patient/1"}


def test_manifest_rows_use_the_same_parser(tmp_path):
    path = tmp_path / "a.jpg"
    fields = _fields({"patient_reference": "urn:oid:1.2.3|77", "encounter_reference": "Encounter/v1"}, path)
    assert (fields["patient_reference"], fields["encounter_reference"]) == ("urn:oid:1.2.3|77", "Encounter/v1")
    assert "patient_reference" not in _fields({}, path)
    with pytest.raises(ValueError, match="^patient_reference refers to a Encounter"):
        _fields({"patient_reference": "Encounter/v1"}, path)
