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
  overlay Media (the only AI-produced resources; the source image and Devices are not).

Statuses: succeeded → DiagnosticReport "final", but "preliminary" (never "final") whenever the
weights are not `trained`, rejected analyses included, and so are its Observations: output of
such weights is never a finished result. Rejected (otherwise) → "final" with a conclusion that
says why the image was refused and what to do, and no Observations: the analysis did finish and
its answer ("no assessment possible from this image") is definitive, which is what "final"
means; "cancelled" and "entered-in-error" would claim it was aborted or recorded by mistake.
Failed (system error) → "cancelled": the analysis was started and not completed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from fhir.resources.R4B.bundle import Bundle

from shared import clinical
from shared.schemas.analyses import AnalysisRecord, AnalysisResult, Concepts
from worker.reporting import wording

FHIR_BASE = "https://dermasentinel.org/fhir"
LOCAL_CODES = f"{FHIR_BASE}/CodeSystem/lesion-analysis"
DISPOSITION_CODES = f"{FHIR_BASE}/CodeSystem/disposition"
DISPOSITION_REASON_CODES = f"{FHIR_BASE}/CodeSystem/disposition-reason"
EXTERNAL_ID_SYSTEM = f"{FHIR_BASE}/NamingSystem/external-id"
ANALYSIS_ID_SYSTEM = f"{FHIR_BASE}/NamingSystem/analysis-id"
MODEL_SHA256_SYSTEM = f"{FHIR_BASE}/NamingSystem/model-sha256"
MODEL_WEIGHTS_EXTENSION = f"{FHIR_BASE}/StructureDefinition/model-weights"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"

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


def build_fhir_bundle(record: AnalysisRecord, links: BundleLinks) -> dict[str, Any]:
    builder = _BundleBuilder(record, links)
    bundle = builder.build()
    Bundle.model_validate(bundle)
    return bundle


class _BundleBuilder:
    def __init__(self, record: AnalysisRecord, links: BundleLinks):
        self.record = record
        self.links = links
        self.untrained = wording.is_untrained(record)
        # Output of weights that are not trained is never final (FHIR: "preliminary").
        self.status = "preliminary" if self.untrained else "final"
        self.weights = wording.weights(record) or clinical.UNKNOWN_WEIGHTS
        self.entries: list[dict[str, Any]] = []
        self.subject = _subject(record.external_id)
        self.created = _instant(record.created_at)
        self.issued = _instant(record.completed_at or record.created_at)

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
        model = self.record.model
        if model is not None and model.scalpel is not None:
            scalpel = model.scalpel
            segmenter = _device(scalpel.name, scalpel.version, scalpel.sha256, "AI lesion segmentation model")
        else:
            segmenter = _device(
                "classical colour-threshold segmenter", None, None, "Rule-based lesion segmentation (no checkpoint)"
            )
        segmenter["note"] = [{"text": f"Gate 1 segmenter: {model.segmenter if model is not None else 'unknown'}."}]
        segmenter_ref = self.add("device/segmenter", segmenter)
        if model is None or model.fusion is None:
            return segmenter_ref, None
        fusion = model.fusion
        classifier = _device(fusion.name, fusion.version, fusion.sha256, "AI melanoma classification model")
        classifier["extension"] = self.weights_extension()
        classifier["note"] = self.untrained_note() or [{"text": "weights: trained."}]
        if fusion.seed is not None:
            classifier["property"] = [{"type": {"text": "seed"}, "valueQuantity": [{"value": fusion.seed}]}]
        return segmenter_ref, self.add("device/classifier", classifier)

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
            "identifier": [{"system": ANALYSIS_ID_SYSTEM, "value": str(self.record.id)}],
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
        if conclusion_codes:
            report["conclusionCode"] = conclusion_codes
        if overlay_ref:
            report["media"].append({"comment": "Lesion segmentation overlay", "link": {"reference": overlay_ref}})
        if observations:
            report["result"] = [{"reference": ref} for ref in observations]
        return report

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


def _device(name: str, version: str | None, sha256: str | None, kind: str) -> dict[str, Any]:
    device: dict[str, Any] = {
        "resourceType": "Device",
        "status": "active",
        "deviceName": [{"name": name, "type": "model-name"}],
        "type": {"text": kind},
    }
    if version:
        device["version"] = [{"value": version}]
    if sha256:
        device["identifier"] = [
            {"system": MODEL_SHA256_SYSTEM, "value": sha256, "type": {"text": "sha256 of model checkpoint"}}
        ]
    return device


def _subject(external_id: str | None) -> dict[str, Any] | None:
    """A logical Patient reference by the client's own id; no names or demographics."""
    if not external_id:
        return None
    return {"type": "Patient", "identifier": {"system": EXTERNAL_ID_SYSTEM, "value": external_id}}


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
