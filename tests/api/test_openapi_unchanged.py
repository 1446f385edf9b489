"""The public contract does not drift by accident: today's OpenAPI document equals the one of
bd5f676 (the commit before issue 20's refactoring, saved in ``openapi_baseline.json``) except
where an issue says it may differ. A change to the contract adds its JSON pointer to
``ALLOWED`` with the issue that allows it; when the baseline is re-taken, ``ALLOWED`` empties.

To re-take the baseline at a commit: ``git worktree add /tmp/base COMMIT``, then in it
``PYTHONPATH=/tmp/base python -c 'import json; from api.main import create_app; from
shared.config import Settings; print(json.dumps(create_app(Settings(_env_file=None)).openapi(),
indent=1, sort_keys=True))' > tests/api/openapi_baseline.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from api.main import create_app
from shared.config import Settings

BASELINE = Path(__file__).with_name("openapi_baseline.json")

# Issue 24: the schemas of GET /v1/models and of the model card (shared/schemas/models.py).
ISSUE_24_SCHEMAS = (
    "AcceptanceCheckOut", "AppliedModelCard", "CardOperatingPoints", "CardTrainingData", "ChaiAISystemFacts",
    "ChaiBasicInfo", "ChaiKeyMetric", "ChaiKeyMetrics", "ChaiMetricResult", "ChaiModelSummary", "ChaiReleaseInfo",
    "ChaiResources", "ChaiTransparencyInformation", "ChaiTrustIngredients", "ChaiUsesAndDirections", "ChaiWarnings",
    "EvaluationSetOut", "FailedCriterionOut", "MetricEstimate", "ModelCardOut", "ModelList", "ModelListed",
    "RegisteredModelRef", "SkinGroupMetrics", "StoredEvaluationListed", "StoredEvaluationOut",
)

# JSON pointer (RFC 6901) of a part of the document that may differ from the baseline → the
# issue that allows it. Issue 20 changes no part of the contract.
ALLOWED: dict[str, str] = {
    "/components/schemas/AnalysisResult/properties/disposition": "issue 21: result.disposition",
    "/components/schemas/ModelInfo/properties/rollout": "issue 24: `canary` on the results a canary answered",
    "/components/schemas/AnalysisResult/properties/disposition_reasons":
        "issue 21: result.disposition_reasons; issue 24: the `drift` reason of safety mode",
    "/components/schemas/AnalysisResult/properties/safety_netting": "issue 21: result.safety_netting (routine)",
    "/components/schemas/AnalysisResult/properties/notice": "issue 21: a notice beside the untrained diagnosis",
    "/components/schemas/OperatingPoint/properties/rule_out_threshold": "issue 21: the rule-out threshold",
    "/components/schemas/OperatingPoint/properties/rule_out_sensitivity": "issue 21: its target sensitivity",
    "/components/schemas/Rejection/properties/code/description": "issue 21: the low_resolution rejection",
    "/webhooks/analysis.rejected/post/description": "issue 21: the low_resolution rejection",
    "/components/schemas/EventResultSummary/properties/disposition": "issue 21: the disposition in the analysis event",
    "/components/schemas/EventResultSummary/properties/disposition_reasons": "issue 21: its reasons in the event",
    "/components/schemas/EventResultSummary/required": "issue 21: the event's disposition fields are always sent",
    "/components/schemas/TriageItem/properties/disposition": "issue 21: triage items (JSON, CSV) carry the disposition",
    "/components/schemas/TriageItem/properties/disposition_reasons": "issue 21: and its reasons",
    "/components/schemas/TriageItem/required": "issue 21: the triage item's disposition fields",
    "/components/schemas/DispositionCounts": "issue 21: results per disposition",
    "/components/schemas/TriageSummaryOut/properties/dispositions": "issue 21: the triage summary counts dispositions",
    "/components/schemas/TriageSummaryOut/required": "issue 21: the triage summary's dispositions",
    "/components/schemas/BatchOut/properties/dispositions": "issue 21: batch progress counts dispositions",
    "/components/schemas/BatchOut/required": "issue 21: batch progress's dispositions",
    "/components/schemas/BatchCanceled/properties/dispositions": "issue 21: as BatchOut (its base)",
    "/components/schemas/BatchCanceled/required": "issue 21: as BatchOut (its base)",
    "/components/schemas/BatchCompletedData/properties/dispositions": "issue 21: batch.completed counts dispositions",
    "/components/schemas/BatchCompletedData/required": "issue 21: batch.completed's dispositions",
    "/paths/~1v1~1batches~1{batch_id}/get/description": "issue 21: progress describes its disposition counts",
    "/paths/~1v1~1batches~1{batch_id}~1results/get/description": "issue 21: the triage order groups by disposition",
    "/paths/~1v1~1dispositions": "issue 21: the dispositions and reason codes in words (the web app shows them)",
    "/components/schemas/DispositionVocabulary": "issue 21: GET /v1/dispositions",
    "/components/schemas/DispositionWords": "issue 21: GET /v1/dispositions",
    "/components/schemas/ReasonWords": "issue 21: GET /v1/dispositions",
    "/components/schemas/Scope": "issue 22: the scopes an API key holds",
    "/components/schemas/ApiKeyOut/properties/scopes": "issue 22: each key shows its scopes",
    "/components/schemas/ApiKeyOut/required": "issue 22: each key shows its scopes",
    "/components/schemas/ApiKeyCreated/properties/scopes": "issue 22: as ApiKeyOut (its base)",
    "/components/schemas/ApiKeyCreated/required": "issue 22: as ApiKeyOut (its base)",
    "/components/schemas/ApiKeyIn/properties/name": "issue 22: POST /v1/api-keys {name, scopes} (DESIGN.md)",
    "/components/schemas/ApiKeyIn/properties/scopes": "issue 22: POST /v1/api-keys {name, scopes} (DESIGN.md)",
    "/components/schemas/ApiKeyIn/properties/label/description": "issue 22: label is name's earlier spelling",
    "/paths/~1v1~1api-keys/post/description": "issue 22: a new key's scopes",
    "/paths/~1v1~1audit-events": "issue 22: GET /v1/audit-events, the tenant's audit trail (audit:read)",
    "/components/schemas/AuditEventOut": "issue 22: GET /v1/audit-events",
    "/components/schemas/AuditEventPage": "issue 22: GET /v1/audit-events",
    "/paths/~1v1~1analyses~1{analysis_id}/delete": "issue 22: erasure of one analysis (DELETE /v1/analyses/{id})",
    "/components/schemas/AnalysisInputsOut/properties/patient_reference": "issue 23: the patient, shown in inputs",
    "/components/schemas/AnalysisInputsOut/properties/encounter_reference": "issue 23: the encounter, shown in inputs",
    "/components/schemas/UploadSubmission/properties/patient_reference": "issue 23: patient_reference on uploads",
    "/components/schemas/UploadSubmission/properties/encounter_reference": "issue 23: encounter_reference on uploads",
    "/components/schemas/UploadSubmission/properties/external_id": "issue 23: external_id is the report's "
    "identifier; issue 25: no path separator",
    **{
        f"/paths/~1v1~1analyses/post/requestBody/content/{body}/schema/properties/{name}": f"issue 23: {why}"
        for body in ("multipart~1form-data", "application~1json")
        for name, why in (
            ("patient_reference", "the patient (FHIR reference or system|value) on submit"),
            ("encounter_reference", "the encounter (FHIR reference or system|value) on submit"),
            ("external_id", "external_id is the DiagnosticReport's identifier, not the patient's"),
        )
    },
    "/info/description": "issue 23: errors under /fhir are OperationOutcomes",
    "/components/schemas/AnalysisEventData/properties/patient_reference": "issue 23: events carry the patient "
    "reference (a FHIR Subscription filters on it)",
    "/tags": "issue 23: the fhir tag; issue 24: the models tag",
    "/paths/~1fhir~1metadata": "issue 23: the /fhir base's CapabilityStatement",
    "/paths/~1fhir~1SubscriptionTopic": "issue 23: the SubscriptionTopics (Backport IG on R4B)",
    "/paths/~1fhir~1SubscriptionTopic~1{topic_id}": "issue 23: one SubscriptionTopic",
    "/paths/~1fhir~1Subscription": "issue 23: FHIR Subscription create and search",
    "/paths/~1fhir~1Subscription~1{subscription_id}": "issue 23: FHIR Subscription read and delete",
    "/paths/~1fhir~1Subscription~1{subscription_id}~1$status": "issue 23: the Backport IG's $status",
    "/paths/~1fhir~1Subscription~1{subscription_id}~1$events": "issue 23: the Backport IG's $events",
    "/components/schemas/FhirBundle": "issue 23: /fhir answers",
    "/components/schemas/FhirCapabilityStatement": "issue 23: /fhir answers",
    "/components/schemas/FhirSubscription": "issue 23: /fhir answers",
    "/components/schemas/FhirSubscriptionTopic": "issue 23: /fhir answers",
    "/components/schemas/OperationOutcome": "issue 23: errors under /fhir",
    "/components/schemas/OperationOutcomeIssue": "issue 23: errors under /fhir",
    "/paths/~1v1~1fhir-destination": "issue 23: the tenant's EHR write-back destination (PUT, GET, DELETE)",
    "/paths/~1v1~1fhir-destination~1deliveries": "issue 23: its delivery log, as for webhooks",
    "/paths/~1v1~1fhir-destination~1deliveries~1{delivery_id}~1resend": "issue 23: a write-back resent",
    "/components/schemas/FhirDestinationIn": "issue 23: PUT /v1/fhir-destination",
    "/components/schemas/FhirDestinationOut": "issue 23: GET /v1/fhir-destination (never the private key)",
    "/components/schemas/AnalysisOut/properties/dicom_source": "issue 23: the DICOM source instance's UIDs",
    "/components/schemas/DicomSource": "issue 23: the DICOM source instance's UIDs",
    "/components/schemas/UploadIn/properties/content_type": "issue 23: a direct upload may be application/dicom",
    "/components/schemas/UploadsIn/properties/content_type": "issue 23: a direct upload may be application/dicom",
    "/components/schemas/UploadOut/properties/content_type": "issue 23: a direct upload may be application/dicom",
    "/paths/~1v1~1analyses/post/description": "issue 23: application/dicom accepted wherever an image is",
    "/paths/~1v1~1analyses/post/requestBody/content/multipart~1form-data/encoding":
        "issue 23: the image part's types, application/dicom among them",
    "/paths/~1v1~1analyses/post/requestBody/content/multipart~1form-data/schema/properties/image/description":
        "issue 23: application/dicom accepted wherever an image is",
    "/paths/~1v1~1analyses~1{analysis_id}~1dicom~1seg": "issue 23: the lesion mask as a DICOM Segmentation",
    "/paths/~1v1~1analyses~1{analysis_id}~1dicom~1sr": "issue 23: the findings as a TID 1500 DICOM SR",
    "/paths/~1v1~1analyses~1{analysis_id}~1dicom~1pdf": "issue 23: the report as DICOM Encapsulated PDF",
    "/paths/~1v1~1dicomweb-destination": "issue 23: the tenant's PACS destination, DICOMweb STOW-RS (PUT, GET, DELETE)",
    "/paths/~1v1~1dicomweb-destination~1deliveries": "issue 23: its delivery log, as for webhooks",
    "/paths/~1v1~1dicomweb-destination~1deliveries~1{delivery_id}~1resend": "issue 23: a STOW-RS store resent",
    "/components/schemas/DicomwebDestinationIn": "issue 23: PUT /v1/dicomweb-destination",
    "/components/schemas/DicomwebDestinationOut": "issue 23: GET /v1/dicomweb-destination (never a password or token)",
    "/components/schemas/DicomwebAuthNone": "issue 23: the PACS destination's authentication: none",
    "/components/schemas/DicomwebAuthBasic": "issue 23: … HTTP Basic",
    "/components/schemas/DicomwebAuthBearer": "issue 23: … a bearer token",
    "/components/schemas/DicomwebAuthOut": "issue 23: the kind of authentication shown back (and the Basic account)",
    "/paths/~1v1~1models": "issue 24: GET /v1/models, the registered versions (models:read)",
    "/paths/~1v1~1models~1{model_id}~1card": "issue 24: GET /v1/models/{id}/card, the model card (models:read)",
    **{f"/components/schemas/{name}": "issue 24: the model card and the list of versions" for name in ISSUE_24_SCHEMAS},
    "/paths/~1v1~1monitoring": "issue 24: GET /v1/monitoring, the tenant's own monitoring (models:read)",
    "/webhooks/model.drift_detected": "issue 24: the model.drift_detected event",
    "/components/schemas/WebhookEndpointIn/properties/events/anyOf": "issue 24: model.drift_detected can be chosen",
    "/components/schemas/WebhookEndpointPatch/properties/events/anyOf": "issue 24: model.drift_detected can be chosen",
    "/components/schemas/ModelDriftEvent": "issue 24: the model.drift_detected event",
    "/components/schemas/ModelDriftData": "issue 24: the model.drift_detected event",
    "/components/schemas/MonitoringLinks": "issue 24: the model.drift_detected event",
    "/components/schemas/DriftMeasures": "issue 24: the drift measures (event and GET /v1/monitoring)",
    "/components/schemas/DriftThresholds": "issue 24: the drift measures (event and GET /v1/monitoring)",
    "/components/schemas/MonitoringOut": "issue 24: GET /v1/monitoring",
    "/components/schemas/MonitoringWindow": "issue 24: GET /v1/monitoring",
    "/components/schemas/SafetyMode": "issue 24: GET /v1/monitoring",
    "/components/schemas/ModelMonitoring": "issue 24: GET /v1/monitoring",
    "/components/schemas/WindowInfo": "issue 24: GET /v1/monitoring",
    "/components/schemas/Proportion": "issue 24: GET /v1/monitoring",
    "/components/schemas/Share": "issue 24: GET /v1/monitoring",
    "/components/schemas/ProbabilityDistribution": "issue 24: GET /v1/monitoring",
    "/components/schemas/ReferenceInfo": "issue 24: GET /v1/monitoring",
    "/components/schemas/SkinGroupMix": "issue 24: GET /v1/monitoring",
    "/components/schemas/MetadataMix": "issue 24: GET /v1/monitoring",
    "/components/schemas/DriftState": "issue 24: GET /v1/monitoring",
    "/components/schemas/DriftEpisodeOut": "issue 24: GET /v1/monitoring",
    "/components/schemas/Outcomes": "issue 24: GET /v1/monitoring",
    "/components/schemas/OutcomeBlock": "issue 24: GET /v1/monitoring",
    # Issue 25: rough edges.
    **{
        f"/paths/~1v1~1analyses/post/requestBody/content/{kind}/schema/properties/{field}":
            f"issue 25: {field} validated (no path separator in external_id; pixel spacing 0.001-10 mm)"
        for kind in ("multipart~1form-data", "application~1json") for field in ("external_id", "pixel_spacing_mm")
    },
    "/components/schemas/UploadSubmission/properties/pixel_spacing_mm": "issue 25: pixel spacing 0.001-10 mm",
    **{
        f"/components/schemas/{schema}/properties/events/description":
            "issue 25: an endpoint without a filter lists every event type it receives, not []"
        for schema in ("WebhookEndpointOut", "WebhookEndpointWithSecret", "AnalysisWebhook")
    },
    **{
        f"/components/schemas/{schema}/properties/state":
            "issue 25: batch states canceled and expired apart from completed (DESIGN.md)"
        for schema in ("BatchSummary", "BatchOut", "BatchCanceled", "BatchCompletedData")
    },
    "/paths/~1v1~1batches~1{batch_id}~1cancel/post/description": "issue 25: a canceled batch ends `canceled`",
    "/paths/~1v1~1analyses~1{analysis_id}~1events": "issue 25: live progress of an analysis (Server-Sent Events)",
    "/paths/~1v1~1batches~1{batch_id}~1events": "issue 25: live progress of a batch (Server-Sent Events)",

    # Issue 25: file-based batches (an archive in by presigned PUT, output and errors files out).
    "/paths/~1v1~1batches~1{batch_id}~1archive": "issue 25: a batch's archive by presigned PUT",
    "/paths/~1v1~1batches~1{batch_id}~1seal/post/responses/409": "issue 25: sealing before the archive was PUT",
    "/paths/~1v1~1batches~1{batch_id}~1seal/post/responses/413/description": "issue 25: an archive over ARCHIVE_MAX_MB",
    "/paths/~1v1~1batches~1{batch_id}~1output": "issue 25: the batch's output file (NDJSON)",
    "/paths/~1v1~1batches~1{batch_id}~1errors": "issue 25: the batch's errors file (NDJSON)",
    "/components/schemas/BatchArchiveIn": "issue 25: POST /v1/batches/{id}/archive",
    "/components/schemas/BatchArchiveOut": "issue 25: POST /v1/batches/{id}/archive",
    "/components/schemas/BatchFileOut": "issue 25: GET /v1/batches/{id}/output|errors",
}


def _scoped_operations() -> dict[str, str]:
    """Issue 22: every operation that needs an API key names the scope it needs in its security
    requirement, and may answer 403 (the key lacks it)."""
    baseline = json.loads(BASELINE.read_text())
    allowed = {}
    for path, operations in baseline["paths"].items():
        for method, operation in operations.items():
            if operation.get("security"):
                at = _pointer(("paths", path, method))
                allowed[at + "/security"] = "issue 22: the scope this operation needs"
                allowed[at + "/responses/403"] = "issue 22: 403 names a missing scope"
    return allowed


def _pointer(parts: tuple[str, ...]) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def _differences(before: object, after: object, at: tuple[str, ...] = ()) -> list[str]:
    """The JSON pointers where the two documents differ, as deep as both are objects."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            if key not in after:
                found.append(f"{_pointer((*at, key))}: removed")
            elif key not in before:
                found.append(f"{_pointer((*at, key))}: added")
            else:
                found += _differences(before[key], after[key], (*at, key))
        return found
    return [] if before == after else [f"{_pointer(at) or '/'}: changed"]


def _under(difference: str, allowed: str) -> bool:
    """Whether ``difference`` lies at or inside the part of the document ``allowed`` points to."""
    pointer = difference.rsplit(": ", 1)[0]
    return pointer == allowed or pointer.startswith(allowed + "/")


def test_the_openapi_document_equals_the_baseline_but_for_allowed_changes():
    # Through JSON, as a client reads it (tuples become lists, keys strings).
    today = json.loads(json.dumps(create_app(Settings(_env_file=None)).openapi()))
    baseline = json.loads(BASELINE.read_text())
    differences = _differences(baseline, today)
    allowed_now = {**ALLOWED, **_scoped_operations()}
    unexplained = [d for d in differences if not any(_under(d, allowed) for allowed in allowed_now)]
    assert not unexplained, "the OpenAPI document changed where no issue allows it:\n" + "\n".join(unexplained)
    stale = [allowed for allowed in allowed_now if not any(_under(d, allowed) for d in differences)]
    assert not stale, f"allowed differences that no longer differ (drop them from ALLOWED): {stale}"


def test_the_diff_names_where_documents_differ():
    before = {"paths": {"/v1/a": {"get": {"summary": "A"}}, "/v1/b": {}}}
    after = {"paths": {"/v1/a": {"get": {"summary": "B"}}, "/v1/c": {}}}
    assert _differences(before, after) == [
        "/paths/~1v1~1a/get/summary: changed",
        "/paths/~1v1~1b: removed",
        "/paths/~1v1~1c: added",
    ]
    assert _differences(before, before) == []
