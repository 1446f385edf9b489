"""FHIR R4 (validated against the R4B models) Bundle for one analysis, for EHR import.

Code systems:
- DiagnosticReport.code: LOINC 18748-4 "Diagnostic imaging study" (no LOINC or SNOMED CT code
  names AI dermoscopic lesion analysis specifically) plus the local code
  `dermoscopic-lesion-analysis` in LOCAL_CODES, which carries the exact meaning.
- Observation codes: local codes in LOCAL_CODES (no standard codes exist for ITA, TTA
  uncertainty or the ABCD concept scores); category `imaging` from observation-category.
- The disposition (issue 21) is its own coded Observation, `disposition` in LOCAL_CODES: the
  value codes it in DISPOSITION_CODES (`urgent_referral`, `clinician_review`, `routine`, the
  API's values), each reason is a component coded in DISPOSITION_REASON_CODES (the API's
  `disposition_reasons`), and a routine one's safety netting is its note. An Observation rather
  than `conclusionCode`: a CodeableConcept has no room for the reasons, and an Observation is
  what an EHR's worklist can query; the conclusion text says the same in words.
- conclusionCode: SNOMED CT 372244006 "Malignant melanoma (disorder)" when the model says
  melanoma and its weights are trained (never from weights that are not), always alongside a
  local code for the AI screening result; benign has no matching SNOMED concept ("not
  melanoma" is not a nevus diagnosis), so local code only.
- Units: UCUM — "1" for unitless scores and probabilities, "mm", "{pixel}", "deg" for ITA.
- AI label: meta.security v3-ObservationValue#AIAST on the report, every Observation and the
  overlay Media (the only AI-produced resources; the source image, Devices, the Provenance,
  the Organization and the model cards are not).

Patient and encounter (issue 23): the report's `subject` is the client's `patient_reference`
(a literal `reference` for `Patient/<id>` or an absolute URL, a logical `identifier` for
`system|value`; shared.fhir_refs), its `encounter` the `encounter_reference`; both are copied to
every Observation and Media. The client's `external_id` is the DiagnosticReport's identifier
(EXTERNAL_ID_SYSTEM) beside the analysis id: it names the request, never the patient. Without a
patient reference the report has no subject (no Patient is ever invented).

AI transparency (issue 23; HL7 "AI Transparency on FHIR" where stable, docs/DECISIONS.md):
- The classifier's Device is the model's Device (`model.version` is the classifier's): type
  AIdeviceTypeCS#Artificial-Intelligence, name, version, identifiers (checkpoint sha256, model
  registry id), and properties (MODEL_PROPERTY_CODES) for the weights status and the operating
  points (decision, high-risk and rule-out thresholds, temperature, target sensitivities, where
  they were chosen), plus backend and seed. The segmenter keeps its own Device (AI-typed only
  when it is the U-Net; the classical segmenter is rule-based). Both are owned by the operator's
  Organization when ORGANIZATION_NAME names one.
- One Provenance: target = the DiagnosticReport, every Observation and the overlay Media; agent
  = each Device as `author` (on behalf of the Organization), and the Organization as
  `custodian`; reason AIAST; entity = the submitted image as `source`.
- A DocumentReference (AIinputsCS#AIModelCard) per network whose registry row has a card: the
  card inline as JSON (`attachment.data`), its subject the network's Device.

Statuses: succeeded → DiagnosticReport "final", but "preliminary" (never "final") whenever the
weights are not `trained`, rejected analyses included, and so are its Observations: output of
such weights is never a finished result. Rejected (otherwise) → "final" with a conclusion that
says why the image was refused and what to do, and no Observations: the analysis did finish and
its answer ("no assessment possible from this image") is definitive, which is what "final"
means; "cancelled" and "entered-in-error" would claim it was aborted or recorded by mistake.
Failed (system error) → "cancelled": the analysis was started and not completed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from fhir.resources.R4B.bundle import Bundle

from shared import clinical
from shared.clinical import disposition as dispositions
from shared.fhir_refs import InvalidReference, ReferenceType, parse_reference
from shared.model_cards import card_url
from shared.schemas.analyses import AnalysisRecord, AnalysisResult, Checkpoint, Concepts, ModelInfo
from worker.reporting import wording

FHIR_BASE = "https://dermasentinel.org/fhir"
LOCAL_CODES = f"{FHIR_BASE}/CodeSystem/lesion-analysis"
DISPOSITION_CODES = f"{FHIR_BASE}/CodeSystem/disposition"
DISPOSITION_REASON_CODES = f"{FHIR_BASE}/CodeSystem/disposition-reason"
EXTERNAL_ID_SYSTEM = f"{FHIR_BASE}/NamingSystem/external-id"
ANALYSIS_ID_SYSTEM = f"{FHIR_BASE}/NamingSystem/analysis-id"
MODEL_SHA256_SYSTEM = f"{FHIR_BASE}/NamingSystem/model-sha256"
MODEL_WEIGHTS_EXTENSION = f"{FHIR_BASE}/StructureDefinition/model-weights"
MODEL_REGISTRY_SYSTEM = f"{FHIR_BASE}/NamingSystem/model-registry-id"
MODEL_PROPERTY_CODES = f"{FHIR_BASE}/CodeSystem/model-property"
WEIGHTS_STATUS_CODES = f"{FHIR_BASE}/CodeSystem/weights-status"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"

# HL7 AI Transparency on FHIR (STU1 / its ballot): the AI Device type and the model card's type.
AI_DEVICE_TYPE = {
    "system": "http://hl7.org/fhir/uv/aitransparency/CodeSystem/AIdeviceTypeCS",
    "code": "Artificial-Intelligence",
    "display": "All kinds of Artificial Intelligence",
}
AI_MODEL_CARD = {
    "system": "http://terminology.hl7.org/CodeSystem/AIinputsCS",
    "code": "AIModelCard",
    "display": "AI Model-Card",
}
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"

AI_ASSISTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
# Fixed namespace so fullUrls are a pure function of the analysis id and the resource's role.
FULL_URL_NAMESPACE = uuid.UUID("4f6b7c3e-8f0e-5d7a-9b1c-2e3d4f5a6b7c")

UNITLESS = {"unit": "1", "system": UCUM, "code": "1"}


@dataclass(frozen=True)
class BundleLinks:
    """Where the bundle's attachments are: the PDF report, the submitted image and the
    segmentation overlay (None: there is none, e.g. for a rejected image)."""

    report: str
    image: str
    overlay: str | None = None
    # The API's base URL: the model cards' pages are linked under it (GET /v1/models/{id}/card).
    api: str | None = None


@dataclass(frozen=True)
class BundleContext:
    """What the bundle says beyond the record: the operator's organisation (ORGANIZATION_NAME;
    None: none is named) and the model cards of the networks that ran, by model registry id
    (``shared.model_registry.cards_by_id``; a network without one gets no DocumentReference)."""

    organization: str | None = None
    model_cards: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def build_fhir_bundle(
    record: AnalysisRecord, links: BundleLinks, context: BundleContext | None = None
) -> dict[str, Any]:
    builder = _BundleBuilder(record, links, context or BundleContext())
    bundle = builder.build()
    Bundle.model_validate(bundle)
    return bundle


class _BundleBuilder:
    def __init__(self, record: AnalysisRecord, links: BundleLinks, context: BundleContext):
        self.record = record
        self.links = links
        self.context = context
        self.untrained = wording.is_untrained(record)
        # Output of weights that are not trained is never final (FHIR: "preliminary").
        self.status = "preliminary" if self.untrained else "final"
        self.weights = wording.weights(record) or clinical.UNKNOWN_WEIGHTS
        self.entries: list[dict[str, Any]] = []
        self.subject = _reference(record.inputs.patient_reference, "Patient")
        self.encounter = _reference(record.inputs.encounter_reference, "Encounter")
        self.created = _instant(record.created_at)
        self.issued = _instant(record.completed_at or record.created_at)
        self.organization_ref = self.ref("organization") if context.organization else None

    def ref(self, role: str) -> str:
        return f"urn:uuid:{uuid.uuid5(FULL_URL_NAMESPACE, f'{self.record.id}/{role}')}"

    def add(self, role: str, resource: dict[str, Any]) -> str:
        full_url = self.ref(role)
        resource_type = resource.pop("resourceType")
        resource = {"resourceType": resource_type, "id": full_url.removeprefix("urn:uuid:"), **resource}
        self.entries.append({"fullUrl": full_url, "resource": resource})
        return full_url

    def ai_meta(self) -> dict[str, Any]:
        return {"security": [dict(AI_ASSISTED)]}

    def weights_extension(self) -> list[dict[str, Any]]:
        return [{"url": MODEL_WEIGHTS_EXTENSION, "valueCode": self.weights}]

    def untrained_note(self) -> list[dict[str, Any]]:
        if not self.untrained:
            return []
        return [{"text": f"weights: {self.weights} — {wording.banner(self.record)}."}]

    def build(self) -> dict[str, Any]:
        segmenter_ref, classifier_ref = self.add_devices()
        image_ref = self.add_image_media()
        overlay_ref = self.add_overlay_media(segmenter_ref, self.links.overlay) if self.links.overlay else None
        observations: list[str] = []
        if self.record.status == "succeeded" and self.record.result is not None:
            observations = self.add_observations(self.record.result, image_ref, segmenter_ref, classifier_ref)
        report = self.report_resource(image_ref, overlay_ref, observations)
        self.add_model_cards(segmenter_ref, classifier_ref)
        if self.organization_ref is not None:
            organization = {"resourceType": "Organization", "active": True, "name": self.context.organization}
            self.add("organization", organization)
        ai_output = [self.ref("report"), *observations, *([overlay_ref] if overlay_ref else [])]
        devices = [ref for ref in (classifier_ref, segmenter_ref) if ref is not None]
        self.add("provenance", self.provenance(ai_output, devices, image_ref))
        # The report leads the bundle: it is what an EHR files; the rest supports it.
        self.entries.insert(0, {"fullUrl": self.ref("report"), "resource": report})
        return {
            "resourceType": "Bundle",
            "id": self.ref("bundle").removeprefix("urn:uuid:"),
            "identifier": {"system": "urn:ietf:rfc:3986", "value": self.ref("bundle")},
            "type": "collection",
            "timestamp": self.issued,
            "entry": self.entries,
        }

    def add_devices(self) -> tuple[str, str | None]:
        """The segmenter's Device, and the model's: the classifier, whose version is the
        model's (``model.version``) and whose operating points decide the result."""
        model = self.record.model
        if model is not None and model.scalpel is not None:
            segmenter = self.device(model.scalpel, "AI lesion segmentation model", ai=True)
        else:
            segmenter = self.device(None, "Rule-based lesion segmentation (no checkpoint)", ai=False)
            segmenter["deviceName"] = [{"name": "classical colour-threshold segmenter", "type": "model-name"}]
        segmenter["note"] = [{"text": f"Gate 1 segmenter: {model.segmenter if model is not None else 'unknown'}."}]
        segmenter_ref = self.add("device/segmenter", segmenter)
        if model is None:
            return segmenter_ref, None
        classifier = self.device(model.fusion, "AI melanoma classification model", ai=True)
        if model.fusion is None:
            classifier["deviceName"] = [{"name": "melanoma classifier (checkpoint not recorded)", "type": "model-name"}]
        if model.version and "version" not in classifier:
            classifier["version"] = [{"value": model.version}]
        classifier["extension"] = self.weights_extension()
        classifier["property"] = self.model_properties(model)
        classifier["note"] = self.untrained_note() or [{"text": "weights: trained."}]
        return segmenter_ref, self.add("device/classifier", classifier)

    def device(self, checkpoint: Checkpoint | None, kind: str, *, ai: bool) -> dict[str, Any]:
        """A network's Device: name, version, checkpoint sha256 and model registry id; typed
        as AI (AI Transparency's Device type) when it is a learnt model."""
        device: dict[str, Any] = {
            "resourceType": "Device",
            "status": "active",
            "type": {"coding": [dict(AI_DEVICE_TYPE)], "text": kind} if ai else {"text": kind},
        }
        if checkpoint is not None:
            device["deviceName"] = [{"name": checkpoint.name, "type": "model-name"}]
            if checkpoint.version:
                device["version"] = [{"value": checkpoint.version}]
            identifiers = []
            if checkpoint.sha256:
                identifiers.append(
                    {"system": MODEL_SHA256_SYSTEM, "value": checkpoint.sha256,
                     "type": {"text": "sha256 of model checkpoint"}}
                )
            if checkpoint.registry_id:
                identifiers.append(
                    {"system": MODEL_REGISTRY_SYSTEM, "value": checkpoint.registry_id,
                     "type": {"text": "model registry id"}}
                )
            if identifiers:
                device["identifier"] = identifiers
        if self.organization_ref is not None:
            device["owner"] = {"reference": self.organization_ref}
        return device

    def model_properties(self, model: ModelInfo) -> list[dict[str, Any]]:
        """The weights status and the operating points as Device properties (MODEL_PROPERTY_CODES):
        what a reader needs to judge the output without the API."""
        point = model.operating_point
        threshold = point.threshold if point is not None else model.threshold
        rule_out = point.rule_out_threshold if point is not None else None
        chosen_on = point.chosen_on if point is not None else "default"
        properties = [
            _property("weights-status", "Weights status", code_value=(WEIGHTS_STATUS_CODES, self.weights)),
            _property("decision-threshold", "Melanoma decision threshold (calibrated probability above it)",
                      quantity=clinical.operating_threshold(threshold)),
            _property("high-risk-threshold", "High-risk threshold (lower bound of the high band)",
                      quantity=clinical.high_risk_threshold(threshold)),
            _property("rule-out-threshold", "Rule-out threshold",
                      quantity=dispositions.rule_out_threshold(rule_out)),
            _property("operating-point-source", "Where the operating point was chosen", text=chosen_on),
        ]
        if rule_out is None:
            properties.append(
                _property("rule-out-threshold-source", "Where the rule-out threshold was chosen", text="default")
            )
        if point is not None:
            properties.append(_property("temperature", "Temperature scaling", quantity=point.temperature))
            if point.target_sensitivity is not None:
                properties.append(_property("target-sensitivity", "Sensitivity the threshold was chosen for",
                                            quantity=point.target_sensitivity))
            if point.rule_out_sensitivity is not None:
                properties.append(_property("rule-out-sensitivity", "Sensitivity the rule-out threshold was chosen for",
                                            quantity=point.rule_out_sensitivity))
        if model.backend:
            properties.append(_property("backend", "Inference backend", text=model.backend))
        if model.fusion is not None and model.fusion.seed is not None:
            properties.append(_property("seed", "Random seed of the weights", quantity=model.fusion.seed))
        return properties

    def add_model_cards(self, segmenter_ref: str, classifier_ref: str | None) -> None:
        """A DocumentReference for each network whose model registry row has a card: the card
        inline (``attachment.data``, JSON) as registered, and a link to its current page
        (``GET /v1/models/{id}/card``), its subject the network's Device."""
        model = self.record.model
        if model is None:
            return
        for kind, checkpoint, device_ref in (
            ("scalpel", model.scalpel, segmenter_ref), ("fusion", model.fusion, classifier_ref)
        ):
            if checkpoint is None or device_ref is None or not checkpoint.registry_id:
                continue
            card = self.context.model_cards.get(checkpoint.registry_id)
            if not card:
                continue
            data = json.dumps(card, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            title = f"Model card: {checkpoint.name} {checkpoint.version}"
            self.add(f"document/model-card-{kind}", {
                "resourceType": "DocumentReference",
                "status": "current",
                "type": {"coding": [dict(AI_MODEL_CARD)], "text": "AI model card"},
                "subject": {"reference": device_ref},
                "date": self.issued,
                "description": f"{title} (model registry {checkpoint.registry_id}), as registered",
                "content": [{
                    "attachment": {
                        "contentType": "application/json",
                        "data": base64.b64encode(data).decode(),
                        "size": len(data),
                        "hash": base64.b64encode(hashlib.sha1(data).digest()).decode(),
                        "title": title,
                    },
                }, *([{
                    # The card as the registry shows it now (its evaluation, acceptance, status):
                    # needs a key with models:read.
                    "attachment": {
                        "contentType": "text/html",
                        "url": f"{self.links.api}{card_url(checkpoint.registry_id)}?format=html",
                        "title": f"{title} (current)",
                    },
                }] if self.links.api else [])],
            })

    def provenance(self, targets: list[str], devices: list[str], image_ref: str) -> dict[str, Any]:
        """Who made the AI output: the model's Devices as authors (on behalf of the operator's
        Organization, its custodian), from the submitted image (AI Transparency's AI Provenance)."""
        on_behalf = {"onBehalfOf": {"reference": self.organization_ref}} if self.organization_ref else {}
        agents = [
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author", "display": "Author"}]},
                "who": {"reference": ref},
                **on_behalf,
            }
            for ref in devices
        ]
        if self.organization_ref is not None:
            agents.append({
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "custodian", "display": "Custodian"}]},
                "who": {"reference": self.organization_ref},
            })
        return {
            "resourceType": "Provenance",
            "target": [{"reference": ref} for ref in targets],
            "occurredDateTime": self.issued,
            "recorded": self.issued,
            "reason": [{"coding": [dict(AI_ASSISTED)], "text": "AI-asserted output"}],
            "activity": {"coding": [{"system": DATA_OPERATION, "code": "CREATE", "display": "create"}]},
            "agent": agents,
            "entity": [{"role": "source", "what": {"reference": image_ref}}],
        }

    def add_image_media(self) -> str:
        url = self.links.image
        media = {
            "resourceType": "Media",
            "status": "completed",
            "type": _media_type(),
            "content": _attachment(url, _content_type(url), "Submitted dermoscopic image"),
            "createdDateTime": self.created,
        }
        self.common_context(media)
        return self.add("media/image", media)

    def add_overlay_media(self, segmenter_ref: str, url: str) -> str:
        media = {
            "resourceType": "Media",
            "meta": self.ai_meta(),
            "extension": self.weights_extension(),
            "status": "completed",
            "type": _media_type(),
            "device": {"reference": segmenter_ref},
            "content": _attachment(url, "image/jpeg", "Lesion segmentation overlay"),
            "note": [{"text": "Lesion segmentation overlay computed from the submitted image."}]
            + self.untrained_note(),
        }
        self.common_context(media)
        return self.add("media/overlay", media)

    def common_context(self, resource: dict[str, Any]) -> None:
        site = self.record.inputs.site
        if self.subject:
            resource["subject"] = self.subject
        if self.encounter:
            resource["encounter"] = self.encounter
        if site != "unknown":
            resource["bodySite"] = {"text": site}

    def add_observations(
        self, result: AnalysisResult, image_ref: str, segmenter_ref: str, classifier_ref: str | None
    ) -> list[str]:
        concepts, equity, band = result.concepts, result.equity, result.risk_band
        # The disposition leads the report's results: it is what a clinic acts on.
        refs = [self.add("observation/disposition", self.disposition(result, image_ref, classifier_ref))]

        probability = self.observation(
            "malignancy-probability", "Melanoma malignancy probability (model)", image_ref, classifier_ref,
            valueQuantity={"value": _dec(result.probability), **UNITLESS},
            interpretation=[
                {"coding": [_local(f"risk-{band}", f"{band.capitalize()} risk")], "text": f"Risk band {band}"}
            ],
        )
        refs.append(self.add("observation/malignancy-probability", probability))
        uncertainty = self.observation(
            "prediction-uncertainty", "Prediction uncertainty (SD over test-time views)", image_ref, classifier_ref,
            valueQuantity={"value": _dec(result.uncertainty), **UNITLESS},
            component=[
                {
                    "code": {
                        "coding": [_local("tta-probability", "Test-time view probability")],
                        "text": f"View {i + 1}",
                    },
                    "valueQuantity": {"value": _dec(p), **UNITLESS},
                }
                for i, p in enumerate(result.tta_probabilities)
            ] or None,
        )
        refs.append(self.add("observation/prediction-uncertainty", uncertainty))
        coverage = self.observation(
            "lesion-coverage", "Lesion area fraction of image", image_ref, segmenter_ref,
            valueQuantity={"value": _dec(result.segmentation.coverage), **UNITLESS},
        )
        refs.append(self.add("observation/lesion-coverage", coverage))
        for key, label, score in wording.concept_scores(concepts):
            concept = self.observation(
                f"abcd-{key}", f"{label} score (0..1)", image_ref, segmenter_ref,
                valueQuantity={"value": _dec(score), **UNITLESS},
                interpretation=[{"text": clinical.concept_grade(score)}],
            )
            refs.append(self.add(f"observation/abcd-{key}", concept))
        refs.append(self.add("observation/lesion-diameter", self.diameter(concepts, image_ref, segmenter_ref)))
        ita = self.observation(
            "ita", "Individual typology angle (skin tone)", image_ref, segmenter_ref,
            valueQuantity={"value": _dec(equity.ita_degrees), "unit": "degree", "system": UCUM, "code": "deg"},
        )
        refs.append(self.add("observation/ita", ita))
        group = equity.skin_group
        skin = self.observation(
            "skin-group", "Skin tone group from ITA", image_ref, segmenter_ref,
            valueCodeableConcept={"coding": [_local(f"skin-{group.replace(' ', '-')}", group)], "text": group},
            component=[
                {
                    "code": {"coding": [_local("bias-warning", "Skin tone bias warning")]},
                    "valueBoolean": equity.bias_warning,
                }
            ],
        )
        if equity.bias_warning:
            skin["note"] = [{"text": wording.equity_text(equity)}] + skin.get("note", [])
        refs.append(self.add("observation/skin-group", skin))
        return refs

    def disposition(self, result: AnalysisResult, image_ref: str, classifier_ref: str | None) -> dict[str, Any]:
        """What should happen next, coded, with every reason as a component."""
        decision = clinical.disposition_of(result, self.record.model)
        text = clinical.disposition_text(decision)
        components = [
            {
                "code": {"coding": [_local("disposition-reason", "Disposition reason")], "text": "Reason"},
                "valueCodeableConcept": {
                    "coding": [{"system": DISPOSITION_REASON_CODES, "code": code, "display": sentence}],
                    "text": sentence,
                },
            }
            for code, sentence in zip(decision.reasons, clinical.reason_sentences(decision), strict=True)
        ]
        observation = self.observation(
            "disposition", "Disposition: what should happen next", image_ref, classifier_ref,
            valueCodeableConcept={
                "coding": [{"system": DISPOSITION_CODES, "code": decision.disposition, "display": text}],
                "text": text,
            },
            component=components or None,
        )
        notes = [{"text": clinical.NOT_ASSESSABLE}] if self.untrained else []
        if result.disposition is None:
            notes.append({"text": clinical.DISPOSITION_NOT_RECORDED})
        if decision.safety_netting:
            notes.append({"text": f"Safety netting: {decision.safety_netting}"})
        if notes or "note" in observation:
            observation["note"] = observation.get("note", []) + notes
        return observation

    def diameter(self, concepts: Concepts, image_ref: str, segmenter_ref: str) -> dict[str, Any]:
        px = {"value": _dec(concepts.diameter_px), "unit": "pixel", "system": UCUM, "code": "{pixel}"}
        if concepts.diameter_mm is None:
            return self.observation("lesion-diameter", "Lesion diameter", image_ref, segmenter_ref, valueQuantity=px)
        return self.observation(
            "lesion-diameter", "Lesion diameter", image_ref, segmenter_ref,
            valueQuantity={"value": _dec(concepts.diameter_mm), "unit": "mm", "system": UCUM, "code": "mm"},
            component=[
                {"code": {"coding": [_local("lesion-diameter-px", "Lesion diameter in pixels")]}, "valueQuantity": px}
            ],
        )

    def observation(
        self, code: str, display: str, image_ref: str, device_ref: str | None, **value: Any
    ) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "meta": self.ai_meta(),
            "extension": self.weights_extension(),
            "status": self.status,
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
            "code": {"coding": [{"system": LOCAL_CODES, "code": code, "display": display}], "text": display},
            "effectiveDateTime": self.created,
            "issued": self.issued,
            "derivedFrom": [{"reference": image_ref}],
        }
        if self.subject:
            resource["subject"] = self.subject
        if self.encounter:
            resource["encounter"] = self.encounter
        if device_ref:
            resource["device"] = {"reference": device_ref}
        resource.update({k: v for k, v in value.items() if v is not None})
        if self.untrained:
            resource["note"] = self.untrained_note()
        return resource

    def report_resource(self, image_ref: str, overlay_ref: str | None, observations: list[str]) -> dict[str, Any]:
        conclusion, conclusion_codes = self.conclusion()
        report: dict[str, Any] = {
            "resourceType": "DiagnosticReport",
            "id": self.ref("report").removeprefix("urn:uuid:"),
            "meta": self.ai_meta(),
            "extension": self.weights_extension(),
            "identifier": self.report_identifiers(),
            "status": "cancelled" if self.record.status == "failed" else self.status,
            "category": [{"text": "Dermatology imaging (AI screening)"}],
            "code": {
                "coding": [
                    {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"},
                    _local("dermoscopic-lesion-analysis", "AI dermoscopic lesion analysis (melanoma screening)"),
                ],
                "text": "AI dermoscopic lesion analysis (melanoma screening)",
            },
            "effectiveDateTime": self.created,
            "issued": self.issued,
            "conclusion": conclusion,
            "presentedForm": [
                {
                    "contentType": "application/pdf",
                    "url": self.links.report,
                    "title": f"DermaSentinel report {self.record.id}",
                }
            ],
            "media": [{"comment": "Submitted dermoscopic image", "link": {"reference": image_ref}}],
        }
        if self.subject:
            report["subject"] = self.subject
        if self.encounter:
            report["encounter"] = self.encounter
        if conclusion_codes:
            report["conclusionCode"] = conclusion_codes
        if overlay_ref:
            report["media"].append({"comment": "Lesion segmentation overlay", "link": {"reference": overlay_ref}})
        if observations:
            report["result"] = [{"reference": ref} for ref in observations]
        return report

    def report_identifiers(self) -> list[dict[str, Any]]:
        """The analysis id, and the client's ``external_id`` (their name for this request)."""
        identifiers = [{"system": ANALYSIS_ID_SYSTEM, "value": str(self.record.id)}]
        if self.record.external_id:
            identifiers.append({"system": EXTERNAL_ID_SYSTEM, "value": self.record.external_id})
        return identifiers

    def conclusion(self) -> tuple[str, list[dict[str, Any]]]:
        record = self.record
        prefix = f"{wording.banner(record)}. " if self.untrained else ""
        if record.status == "succeeded" and record.result is not None:
            result = record.result
            band, diagnosis = result.risk_band, result.diagnosis
            decision = clinical.disposition_of(result, record.model)
            why = "; ".join(clinical.reason_sentences(decision))
            disposition = f"Disposition: {clinical.disposition_text(decision)}" + (f", because {why}." if why else ".")
            if result.disposition is None:
                disposition += f" {clinical.DISPOSITION_NOT_RECORDED}"
            # Nothing read off untrained output may sound like an answer: it is said to be meaningless.
            screening_text = "Model output (not clinically meaningful)" if self.untrained else "AI screening"
            text = (
                f"{prefix}{disposition} {screening_text}: {diagnosis}, malignancy probability "
                f"{wording.fmt_prob(result.probability)} ± {wording.fmt_prob(result.uncertainty)}, "
                f"risk band {band}. Recommended: {' '.join(clinical.plan_for(result, record.model))}"
            )
            screening = _local(f"screen-{diagnosis}-{band}", f"AI screening {diagnosis}, {band} risk")
            codes: list[dict[str, Any]] = [{"coding": [screening]}]
            if diagnosis == "melanoma" and not self.untrained:
                # No SNOMED melanoma code from weights that are not trained: an EHR would file it as one.
                codes[0]["coding"].append(
                    {"system": SNOMED, "code": "372244006", "display": "Malignant melanoma (disorder)"}
                )
            meaning = " from weights that are not trained: not clinically meaningful" if self.untrained else ""
            codes[0]["text"] = f"AI screening result: {diagnosis} ({band} risk) — not a diagnosis{meaning}"
            return text, codes
        if record.status == "rejected":
            rejection = record.rejection
            code = rejection.code if rejection is not None else "unknown"
            detail = rejection.detail if rejection is not None else ""
            text = (
                f"{prefix}Image rejected ({code}): {clinical.rejection_reason(code)} "
                f"{detail}. No lesion assessment was made. "
                f"{clinical.retake_advice(code)}"
            )
            label = f"Image rejected: {code}"
            codes = [{"coding": [_local(f"image-rejected-{code}", label)], "text": label}]
            return text, codes
        error_code = record.error.code if record.error is not None else "unknown"
        return f"{prefix}Analysis failed with a system error ({error_code}). {clinical.FAILED_ADVICE}", []


def _property(
    code: str,
    display: str,
    *,
    quantity: float | None = None,
    code_value: tuple[str, str] | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    """A Device property typed by MODEL_PROPERTY_CODES: a unitless quantity, or a code, or text."""
    prop: dict[str, Any] = {"type": {"coding": [{"system": MODEL_PROPERTY_CODES, "code": code, "display": display}]}}
    if quantity is not None:
        prop["valueQuantity"] = [{"value": _dec(quantity), **UNITLESS}]
    elif code_value is not None:
        system, value = code_value
        prop["valueCode"] = [{"coding": [{"system": system, "code": value}], "text": value}]
    elif text is not None:
        prop["valueCode"] = [{"text": text}]
    return prop


def _reference(stored: str | None, expected: ReferenceType) -> dict[str, Any] | None:
    """The client's patient or encounter as a FHIR Reference (shared.fhir_refs); None when
    none was given. Stored values were checked on the way in; one that no longer parses is
    left out rather than failing the report."""
    if not stored:
        return None
    try:
        return parse_reference(stored, expected).as_fhir()
    except InvalidReference:
        return None


def _media_type() -> dict[str, Any]:
    return {"coding": [{"system": MEDIA_TYPE, "code": "image", "display": "Image"}]}


def _local(code: str, display: str) -> dict[str, str]:
    """A Coding in DermaSentinel's own code system (LOCAL_CODES)."""
    return {"system": LOCAL_CODES, "code": code, "display": display}


def _attachment(url: str, content_type: str | None, title: str) -> dict[str, str]:
    attachment = {"url": url, "title": title}
    if content_type:
        attachment["contentType"] = content_type
    return attachment


def _content_type(url: str) -> str | None:
    path = urlparse(url).path.lower()
    if path.endswith((".jpg", ".jpeg")):
        return "image/jpeg"
    if path.endswith(".png"):
        return "image/png"
    return None


def _instant(value: str) -> str:
    """ISO-8601 with an explicit offset, as FHIR instant requires (naive times are UTC)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.isoformat()


def _dec(value: float) -> float:
    return round(float(value), 4)
