import base64
import copy
import dataclasses
import hashlib
import json

import pytest
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from shared import clinical
from shared.clinical import disposition
from tests.factories import (
    FUSION_SHA,
    SCALPEL_SHA,
    bias_warning_dark,
    failed,
    high_risk_trained,
    low_risk_untrained,
    record,
    rejected_blurry,
)
from worker.reporting.fhir import BundleContext, build_fhir_bundle

AIAST = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST"}


def resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def by_code(bundle: dict, code: str) -> dict:
    (found,) = [o for o in resources(bundle, "Observation") if o["code"]["coding"][0]["code"] == code]
    return found


def has_ai_label(resource: dict) -> bool:
    security = resource.get("meta", {}).get("security", [])
    return any(s["system"] == AIAST["system"] and s["code"] == AIAST["code"] for s in security)


def test_succeeded_bundle_validates_and_links_everything(links):
    analysis = high_risk_trained()
    bundle = build_fhir_bundle(analysis, links)
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection"
    json.dumps(bundle)

    (report,) = resources(bundle, "DiagnosticReport")
    assert report["status"] == "final"
    assert report["presentedForm"][0] == {
        "contentType": "application/pdf",
        "url": links.report,
        "title": f"DermaSentinel report {analysis.id}",
    }
    assert "malignancy probability 0.91 ± 0.04" in report["conclusion"]
    melanoma = {"system": "http://snomed.info/sct", "code": "372244006", "display": "Malignant melanoma (disorder)"}
    assert melanoma in report["conclusionCode"][0]["coding"]
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    assert all(url.startswith("urn:uuid:") for url in full_urls)
    assert {r["reference"] for r in report["result"]} <= full_urls
    assert len(report["result"]) == len(resources(bundle, "Observation")) == 10
    assert report["result"][0]["reference"] == next(
        e["fullUrl"] for e in bundle["entry"] if e["resource"] is by_code(bundle, "disposition")
    ), "the disposition leads the report's results"

    image_media, overlay_media = resources(bundle, "Media")
    assert image_media["content"]["url"] == links.image
    assert image_media["content"]["contentType"] == "image/jpeg"
    assert overlay_media["content"]["url"] == links.overlay
    image_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is image_media)
    for observation in resources(bundle, "Observation"):
        assert observation["derivedFrom"] == [{"reference": image_url}]
        assert has_ai_label(observation)
        assert observation["subject"] == {"reference": "Patient/p-000187", "type": "Patient"}
        assert observation["encounter"] == {"reference": "Encounter/visit-8812", "type": "Encounter"}
    assert has_ai_label(report) and has_ai_label(overlay_media)
    assert not has_ai_label(image_media)


def test_units_are_ucum(links):
    bundle = build_fhir_bundle(high_risk_trained(), links)
    ita = by_code(bundle, "ita")["valueQuantity"]
    assert (ita["value"], ita["system"], ita["code"]) == (38.6, "http://unitsofmeasure.org", "deg")
    diameter = by_code(bundle, "lesion-diameter")
    assert (diameter["valueQuantity"]["code"], diameter["valueQuantity"]["value"]) == ("mm", 7.416)
    assert diameter["component"][0]["valueQuantity"]["code"] == "{pixel}"
    assert by_code(bundle, "malignancy-probability")["valueQuantity"]["code"] == "1"
    assert by_code(bundle, "abcd-asymmetry")["valueQuantity"]["value"] == 0.81
    skin = by_code(bundle, "skin-group")
    assert skin["valueCodeableConcept"]["text"] == "light"
    assert skin["component"][0]["valueBoolean"] is False


def test_devices_carry_version_and_sha256(links):
    devices = resources(build_fhir_bundle(high_risk_trained(), links), "Device")
    versions = {d["deviceName"][0]["name"]: d["version"][0]["value"] for d in devices}
    assert versions == {"scalpel-unet-r34": "1.2.0", "fusion-effnet-b3": "2.0.1"}
    hashes = {d["identifier"][0]["value"] for d in devices}
    assert hashes == {SCALPEL_SHA, FUSION_SHA}


def test_untrained_weights_are_visible_on_every_ai_resource(links):
    bundle = build_fhir_bundle(low_risk_untrained(), links)
    Bundle.model_validate(bundle)
    for resource in resources(bundle, "Observation"):
        assert any("weights: untrained" in n["text"] for n in resource["note"])
        assert resource["extension"][0]["valueCode"] == "untrained"
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["conclusion"].startswith("UNTRAINED MODEL")
    assert report["status"] == "preliminary"
    assert all(o["status"] == "preliminary" for o in resources(bundle, "Observation"))
    classifier = next(d for d in resources(bundle, "Device") if d["deviceName"][0]["name"] == "fusion-effnet-b3")
    assert "identifier" not in classifier
    assert "weights: untrained" in classifier["note"][0]["text"]
    assert "subject" not in report
    # No pixel spacing was given, so the diameter can only be stated in pixels.
    assert by_code(bundle, "lesion-diameter")["valueQuantity"]["code"] == "{pixel}"


def test_no_patient_details_leave_the_service(links):
    bundle = build_fhir_bundle(bias_warning_dark(), links)
    assert not resources(bundle, "Patient")
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["subject"] == {
        "type": "Patient",
        "identifier": {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "EHR-77-4411"},
    }
    assert all("name" not in r for r in resources(bundle, "Observation") + resources(bundle, "Media"))
    assert by_code(bundle, "skin-group")["component"][0]["valueBoolean"] is True
    assert "BIAS WARNING" in by_code(bundle, "skin-group")["note"][0]["text"]


def test_same_analysis_gives_the_same_bundle(links):
    assert build_fhir_bundle(high_risk_trained(), links) == build_fhir_bundle(high_risk_trained(), links)
    other = record(id="00000000-0000-4000-8000-000000000000")
    first = {e["fullUrl"] for e in build_fhir_bundle(high_risk_trained(), links)["entry"]}
    second = {e["fullUrl"] for e in build_fhir_bundle(other, links)["entry"]}
    assert not first & second


def test_rejected_bundle_is_final_with_reason_and_no_observations(links):
    bundle = build_fhir_bundle(rejected_blurry(), dataclasses.replace(links, overlay=None))
    Bundle.model_validate(bundle)
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["status"] == "final"
    assert "Image rejected (blurry)" in report["conclusion"]
    assert "Retake the photo in focus" in report["conclusion"]
    assert report["conclusionCode"][0]["coding"][0]["code"] == "image-rejected-blurry"
    assert not resources(bundle, "Observation")
    assert "result" not in report
    assert len(resources(bundle, "Media")) == 1


def test_failed_bundle_is_cancelled(links):
    bundle = build_fhir_bundle(failed(), dataclasses.replace(links, overlay=None))
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["status"] == "cancelled"
    assert "storage_unavailable" in report["conclusion"]


def test_validation_rejects_a_broken_bundle(links):
    # The R4B models check structure and required elements (not code bindings), so the
    # validation inside build_fhir_bundle catches a missing status or a misspelt element.
    bundle = build_fhir_bundle(high_risk_trained(), links)
    missing_status = copy.deepcopy(bundle)
    del by_code(missing_status, "ita")["status"]
    with pytest.raises(ValidationError):
        Bundle.model_validate(missing_status)
    misspelt = copy.deepcopy(bundle)
    misspelt["entry"][0]["resource"]["presentedFrom"] = misspelt["entry"][0]["resource"].pop("presentedForm")
    with pytest.raises(ValidationError):
        Bundle.model_validate(misspelt)


def test_synthetic_weights_are_flagged_like_untrained(links):
    bundle = build_fhir_bundle(record(model={"weights": "synthetic"}), links)
    for resource in resources(bundle, "Observation"):
        assert any(n["text"].startswith("weights: synthetic — ") for n in resource["note"])
        assert resource["extension"][0]["valueCode"] == "synthetic"
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["conclusion"].startswith("MODEL TRAINED ON SYNTHETIC IMAGES ONLY")
    assert report["status"] == "preliminary"
    # A melanoma output of weights that are not trained is not filed under the SNOMED melanoma code.
    assert all(c["system"] != "http://snomed.info/sct" for c in report["conclusionCode"][0]["coding"])
    assert "not clinically meaningful" in report["conclusionCode"][0]["text"]


def test_the_conclusion_recommends_the_clinical_plan(links):
    for analysis in (high_risk_trained(), low_risk_untrained(), bias_warning_dark()):
        assert analysis.result is not None
        (report,) = resources(build_fhir_bundle(analysis, links), "DiagnosticReport")
        plan = " ".join(clinical.plan_for(analysis.result, analysis.model))
        assert report["conclusion"].endswith(f"Recommended: {plan}")


def test_rejected_bundle_from_untrained_weights_is_preliminary(links):
    rejected = rejected_blurry()
    assert rejected.model is not None
    untrained = rejected.model_copy(update={"model": rejected.model.model_copy(update={"weights": "untrained"})})
    (report,) = resources(build_fhir_bundle(untrained, dataclasses.replace(links, overlay=None)), "DiagnosticReport")
    assert report["status"] == "preliminary"


DISPOSITIONS = "https://dermasentinel.org/fhir/CodeSystem/disposition"
REASONS = "https://dermasentinel.org/fhir/CodeSystem/disposition-reason"


def disposition_of(bundle: dict) -> tuple[str, list[str], list[str]]:
    """(disposition code, reason codes, note texts) of the bundle's disposition Observation."""
    observation = by_code(bundle, "disposition")
    (coding,) = observation["valueCodeableConcept"]["coding"]
    assert coding["system"] == DISPOSITIONS
    reasons = []
    for component in observation.get("component", []):
        assert component["code"]["coding"][0]["code"] == "disposition-reason"
        (reason,) = component["valueCodeableConcept"]["coding"]
        assert reason["system"] == REASONS and reason["display"] == disposition.REASON_TEXT[reason["code"]]
        reasons.append(reason["code"])
    return coding["code"], reasons, [n["text"] for n in observation.get("note", [])]


def test_the_disposition_is_a_coded_observation_with_its_reasons(links):
    urgent = build_fhir_bundle(high_risk_trained(), links)
    assert disposition_of(urgent) == ("urgent_referral", ["high_probability", "diameter_over_6mm"], [])
    (report,) = resources(urgent, "DiagnosticReport")
    assert report["conclusion"].startswith("Disposition: Urgent referral, because the melanoma probability reaches")

    dark = build_fhir_bundle(bias_warning_dark(), links)
    analysis = bias_warning_dark()
    assert analysis.result is not None
    assert disposition_of(dark)[:2] == ("clinician_review", analysis.result.disposition_reasons)


def test_a_routine_disposition_carries_the_safety_netting(links):
    routine = record(result={"probability": 0.03, "uncertainty": 0.01, "diagnosis": "benign", "risk_band": "low",
                          "concepts": {"diameter_mm": 4.1}})
    code, reasons, notes = disposition_of(build_fhir_bundle(routine, links))
    assert (code, reasons) == ("routine", ["below_rule_out"])
    assert notes == [f"Safety netting: {disposition.SAFETY_NETTING}"]


def test_untrained_disposition_is_review_and_never_reassures(links):
    bundle = build_fhir_bundle(low_risk_untrained(), links)
    code, reasons, notes = disposition_of(bundle)
    assert code == "clinician_review" and reasons[0] == "weights_not_trained"
    assert not set(reasons) & set(clinical.MODEL_OUTPUT_REASONS)
    assert clinical.NOT_ASSESSABLE in notes
    (report,) = resources(bundle, "DiagnosticReport")
    assert "Disposition: Clinician review, because the model's weights are not trained" in report["conclusion"]
    text = json.dumps(bundle, ensure_ascii=False).lower()
    for phrase in ("no concern", "no ai-flagged concern", "low uncertainty", "routine", "urgent"):
        assert phrase not in text, phrase


# ---------------------------------------------------------------- issue 23: references, AI transparency

EXTERNAL_ID = "https://dermasentinel.org/fhir/NamingSystem/external-id"
ANALYSIS_ID = "https://dermasentinel.org/fhir/NamingSystem/analysis-id"
REGISTRY_ID = "https://dermasentinel.org/fhir/NamingSystem/model-registry-id"
FUSION_REGISTRY_ID = "5e0f3c1a-9b7d-4c2e-8a61-0d4f2b7e9c13"
SCALPEL_REGISTRY_ID = "0c9a7e52-3f1b-4d8e-9a26-7b5c4e3d2f10"
CARD = {"kind": "fusion", "version": "2.0.1", "training_data": {"description": "ISIC 2020, grouped by patient"},
        "calibration": {"threshold": 0.42, "rule_out_threshold": 0.12}, "metrics": {"auc": 0.91}}


def full_url(bundle: dict, resource: dict) -> str:
    return next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is resource)


def registered(**model_changes) -> object:
    """The high-risk trained record, its networks from the model registry with a validated operating point."""
    return record(model={
        "scalpel": {"registry_id": SCALPEL_REGISTRY_ID},
        "fusion": {"registry_id": FUSION_REGISTRY_ID},
        "backend": "torch-cpu",
        "threshold": 0.42,
        "operating_point": {"threshold": 0.42, "temperature": 1.27, "target_sensitivity": 0.9,
                            "chosen_on": "validation", "rule_out_threshold": 0.12, "rule_out_sensitivity": 0.95},
        **model_changes,
    })


def test_external_id_is_the_reports_identifier_and_the_patient_reference_its_subject(links):
    bundle = build_fhir_bundle(high_risk_trained(), links)
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["identifier"] == [
        {"system": ANALYSIS_ID, "value": "1b4e28ba-2fa1-11d2-883f-0016d3cca427"},
        {"system": EXTERNAL_ID, "value": "CLINIC-A-000187"},
    ]
    assert report["subject"] == {"reference": "Patient/p-000187", "type": "Patient"}
    assert report["encounter"] == {"reference": "Encounter/visit-8812", "type": "Encounter"}
    # The external id names the request, nothing else: no Patient, no subject identifier from it.
    assert not resources(bundle, "Patient")
    assert json.dumps(bundle).count("CLINIC-A-000187") == 1
    for media in resources(bundle, "Media"):
        assert media["subject"] == report["subject"] and media["encounter"] == report["encounter"]


def test_without_a_patient_reference_there_is_no_subject_even_with_an_external_id(links):
    analysis = record(inputs={"patient_reference": None, "encounter_reference": None})
    bundle = build_fhir_bundle(analysis, links)
    Bundle.model_validate(bundle)
    (report,) = resources(bundle, "DiagnosticReport")
    assert {"system": EXTERNAL_ID, "value": "CLINIC-A-000187"} in report["identifier"]
    for resource in [report, *resources(bundle, "Observation"), *resources(bundle, "Media")]:
        assert "subject" not in resource and "encounter" not in resource
    no_external = build_fhir_bundle(record(external_id=None), links)
    (report,) = resources(no_external, "DiagnosticReport")
    assert [i["system"] for i in report["identifier"]] == [ANALYSIS_ID]


def test_an_absolute_patient_reference_and_an_encounter_identifier(links):
    analysis = record(inputs={"patient_reference": "https://ehr.example.test/fhir/Patient/77",
                              "encounter_reference": "https://ehr.example.test/visits|V-2025-0314"})
    bundle = build_fhir_bundle(analysis, links)
    (report,) = resources(bundle, "DiagnosticReport")
    assert report["subject"] == {"reference": "https://ehr.example.test/fhir/Patient/77", "type": "Patient"}
    assert report["encounter"] == {
        "type": "Encounter", "identifier": {"system": "https://ehr.example.test/visits", "value": "V-2025-0314"},
    }
    assert all(o["encounter"] == report["encounter"] for o in resources(bundle, "Observation"))


def test_the_model_device_carries_identity_weights_and_operating_points(links):
    bundle = build_fhir_bundle(registered(), links)
    Bundle.model_validate(bundle)
    classifier = next(d for d in resources(bundle, "Device") if d["deviceName"][0]["name"] == "fusion-effnet-b3")
    assert classifier["type"]["coding"][0]["code"] == "Artificial-Intelligence"
    assert classifier["version"] == [{"value": "2.0.1"}]
    assert {(i["system"].rsplit("/", 1)[1], i["value"]) for i in classifier["identifier"]} == {
        ("model-sha256", FUSION_SHA), ("model-registry-id", FUSION_REGISTRY_ID),
    }
    properties = {p["type"]["coding"][0]["code"]: p for p in classifier["property"]}
    assert properties["weights-status"]["valueCode"][0]["coding"][0]["code"] == "trained"
    quantity = {code: p["valueQuantity"][0]["value"] for code, p in properties.items() if "valueQuantity" in p}
    assert quantity == {"decision-threshold": 0.42, "high-risk-threshold": 0.8, "rule-out-threshold": 0.12,
                        "temperature": 1.27, "target-sensitivity": 0.9, "rule-out-sensitivity": 0.95, "seed": 42}
    assert properties["operating-point-source"]["valueCode"][0]["text"] == "validation"
    assert properties["backend"]["valueCode"][0]["text"] == "torch-cpu"
    assert classifier["extension"][0]["valueCode"] == "trained"
    segmenter = next(d for d in resources(bundle, "Device") if d is not classifier)
    assert {"system": REGISTRY_ID, "value": SCALPEL_REGISTRY_ID, "type": {"text": "model registry id"}} in segmenter[
        "identifier"]
    for device in resources(bundle, "Device"):
        assert not has_ai_label(device), "a Device is not AI output"


def test_defaults_are_named_as_such_and_the_classical_segmenter_is_not_called_ai(links):
    bundle = build_fhir_bundle(low_risk_untrained(), links)
    classifier, = [d for d in resources(bundle, "Device") if d["deviceName"][0]["name"] == "fusion-effnet-b3"]
    properties = {p["type"]["coding"][0]["code"]: p for p in classifier["property"]}
    assert properties["weights-status"]["valueCode"][0]["text"] == "untrained"
    assert properties["decision-threshold"]["valueQuantity"][0]["value"] == clinical.MELANOMA_THRESHOLD
    assert properties["rule-out-threshold"]["valueQuantity"][0]["value"] == disposition.DEFAULT_RULE_OUT_THRESHOLD
    assert properties["operating-point-source"]["valueCode"][0]["text"] == "default"
    assert properties["rule-out-threshold-source"]["valueCode"][0]["text"] == "default"
    segmenter = next(d for d in resources(bundle, "Device") if d is not classifier)
    assert "coding" not in segmenter["type"], "a rule-based segmenter is not typed as AI"


def test_provenance_links_the_ai_output_to_the_model_devices(links):
    bundle = build_fhir_bundle(high_risk_trained(), links)
    (provenance,) = resources(bundle, "Provenance")
    (report,) = resources(bundle, "DiagnosticReport")
    overlay = next(m for m in resources(bundle, "Media") if has_ai_label(m))
    image = next(m for m in resources(bundle, "Media") if not has_ai_label(m))
    expected = [full_url(bundle, report), *(r["reference"] for r in report["result"]), full_url(bundle, overlay)]
    assert [t["reference"] for t in provenance["target"]] == expected
    for target in provenance["target"]:
        resource = next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == target["reference"])
        assert has_ai_label(resource), "every target is labelled AI-asserted"
    devices = {full_url(bundle, d) for d in resources(bundle, "Device")}
    assert {a["who"]["reference"] for a in provenance["agent"]} == devices
    assert {a["type"]["coding"][0]["code"] for a in provenance["agent"]} == {"author"}
    assert provenance["reason"][0]["coding"][0]["code"] == "AIAST"
    assert provenance["entity"] == [{"role": "source", "what": {"reference": full_url(bundle, image)}}]
    assert provenance["recorded"] == report["issued"]
    assert not resources(bundle, "Organization") and not has_ai_label(provenance)


def test_the_operators_organisation_is_named_when_configured(links):
    bundle = build_fhir_bundle(high_risk_trained(), links, BundleContext(organization="Clinic A Dermatology"))
    Bundle.model_validate(bundle)
    (organization,) = resources(bundle, "Organization")
    assert organization["name"] == "Clinic A Dermatology"
    org_url = full_url(bundle, organization)
    (provenance,) = resources(bundle, "Provenance")
    custodian = [a for a in provenance["agent"] if a["type"]["coding"][0]["code"] == "custodian"]
    assert custodian == [{"type": custodian[0]["type"], "who": {"reference": org_url}}]
    authors = [a for a in provenance["agent"] if a["type"]["coding"][0]["code"] == "author"]
    assert len(authors) == 2 and all(a["onBehalfOf"] == {"reference": org_url} for a in authors)
    assert all(d["owner"] == {"reference": org_url} for d in resources(bundle, "Device"))


def test_a_registered_model_card_comes_as_a_document_reference(links):
    context = BundleContext(model_cards={FUSION_REGISTRY_ID: CARD})
    bundle = build_fhir_bundle(registered(), links, context)
    Bundle.model_validate(bundle)
    (document,) = resources(bundle, "DocumentReference")
    assert document["type"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/AIinputsCS", "code": "AIModelCard", "display": "AI Model-Card",
    }
    classifier = next(d for d in resources(bundle, "Device") if d["deviceName"][0]["name"] == "fusion-effnet-b3")
    assert document["subject"] == {"reference": full_url(bundle, classifier)}
    attachment = document["content"][0]["attachment"]
    data = base64.b64decode(attachment["data"])
    assert json.loads(data) == CARD and attachment["size"] == len(data)
    assert attachment["contentType"] == "application/json"
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert FUSION_REGISTRY_ID in document["description"] and not has_ai_label(document)
    # With the API's base known, a second content links the card's current page (issue 24).
    linked = build_fhir_bundle(registered(), dataclasses.replace(links, api="https://ds.example"), context)
    Bundle.model_validate(linked)
    (document,) = resources(linked, "DocumentReference")
    assert document["content"][1]["attachment"]["url"] == (
        f"https://ds.example/v1/models/{FUSION_REGISTRY_ID}/card?format=html")
    # No card in the registry (or no registry row): no DocumentReference.
    assert not resources(build_fhir_bundle(registered(), links), "DocumentReference")
    assert not resources(build_fhir_bundle(high_risk_trained(), links, context), "DocumentReference")


def test_every_bundle_has_its_provenance_and_validates(links):
    no_overlay = dataclasses.replace(links, overlay=None)
    context = BundleContext(organization="Clinic A", model_cards={FUSION_REGISTRY_ID: CARD})
    for analysis, bundle_links in ((rejected_blurry(), no_overlay), (failed(), no_overlay),
                                   (low_risk_untrained(), links), (registered(), links)):
        bundle = build_fhir_bundle(analysis, bundle_links, context)
        Bundle.model_validate(bundle)
        (provenance,) = resources(bundle, "Provenance")
        (report,) = resources(bundle, "DiagnosticReport")
        assert provenance["target"][0] == {"reference": full_url(bundle, report)}
        overlays = 1 if bundle_links.overlay is not None else 0
        assert len(provenance["target"]) == 1 + len(resources(bundle, "Observation")) + overlays


def test_status_is_preliminary_unless_the_weights_are_trained(links):
    for weights, status in (("trained", "final"), ("synthetic", "preliminary"), ("untrained", "preliminary")):
        (report,) = resources(build_fhir_bundle(registered(weights=weights), links), "DiagnosticReport")
        assert report["status"] == status, weights
