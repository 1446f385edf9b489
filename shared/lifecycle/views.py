"""What clients see of an analysis: the record, its links, artifact URLs and event payloads.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from shared import clinical
from shared.clock import iso, utcnow
from shared.config import Settings
from shared.models import Analysis
from shared.storage import ARTIFACTS, IMAGES, ObjectStore


def api_base(settings: Settings) -> str:
    return (settings.public_url or settings.api_url).rstrip("/")


def links(settings: Settings, analysis_id: uuid.UUID) -> dict:
    base = f"{api_base(settings)}/v1/analyses/{analysis_id}"
    return {"self": base, "report": f"{base}/report.pdf", "fhir": f"{base}/fhir"}


def inputs_view(analysis: Analysis) -> dict:
    return {
        "age": analysis.age,
        "sex": analysis.sex,
        "site": analysis.site,
        "pixel_spacing_mm": analysis.pixel_spacing_mm,
    }


def analysis_record(analysis: Analysis) -> dict:
    """The analysis as plain data: what reports, FHIR and exports are built from."""
    return {
        "id": str(analysis.id),
        "external_id": analysis.external_id,
        "batch_id": str(analysis.batch_id) if analysis.batch_id else None,
        "status": analysis.status,
        "stage": analysis.stage,
        "priority": analysis.priority,
        "attempt": analysis.attempt,
        "created_at": iso(analysis.created_at),
        "started_at": iso(analysis.started_at),
        "completed_at": iso(analysis.completed_at),
        "inputs": inputs_view(analysis),
        "image": {
            "content_type": analysis.image_content_type,
            "width": analysis.image_width,
            "height": analysis.image_height,
            "sha256": analysis.image_sha256,
        },
        "result": _result_view(analysis.result),
        "rejection": _with_advice(analysis.rejection, clinical.retake_advice(_code(analysis.rejection))),
        "error": _with_advice(analysis.error, clinical.FAILED_ADVICE),
        "model": _model_view(analysis.model),
        # Beside the result, so that views without the provenance (lists) still say it.
        "weights": clinical.weights_status(analysis.model),
        "deadline_at": iso(analysis.deadline_at),
        "cancel_reason": analysis.cancel_reason,
        "reprocessed_from": str(analysis.reprocessed_from) if analysis.reprocessed_from else None,
    }


def _code(outcome: dict | None) -> str | None:
    return (outcome or {}).get("code")


def _with_advice(outcome: dict | None, advice: str) -> dict | None:
    """A rejection or error with ``advice``: what to do about it (shared.clinical's wording)."""
    return {**outcome, "advice": advice} if outcome else outcome


def _result_view(result: dict | None) -> dict | None:
    if not result or "uncertainty" not in result:
        return result
    return {**result, "uncertainty_level": clinical.uncertainty_level(result["uncertainty"])}


def _model_view(model: dict | None) -> dict | None:
    """Provenance plus ``banner``: what to show above output from weights that are not
    trained (None for trained weights)."""
    if not model:
        return model
    return {**model, "banner": clinical.weights_banner(model.get("weights") or clinical.UNKNOWN_WEIGHTS)}


def image_stored(analysis: Analysis) -> bool:
    """False while a direct upload waits for its ingest, and for one that ingest refused:
    the object under ``image_key`` is then the raw upload, never shown to anyone."""
    return bool(analysis.image_sha256)


def artifact_links(store: ObjectStore, analysis: Analysis) -> dict:
    """Presigned links that expire within the configured TTL (at most 15 minutes)."""
    artifacts = {"image": store.presigned_get(IMAGES, analysis.image_key)} if image_stored(analysis) else {}
    if analysis.mask_key:
        artifacts["mask"] = store.presigned_get(ARTIFACTS, analysis.mask_key)
    if analysis.overlay_key:
        artifacts["overlay"] = store.presigned_get(ARTIFACTS, analysis.overlay_key)
    artifacts["expires_at"] = iso(utcnow() + timedelta(seconds=store.settings.presign_ttl_seconds))
    return artifacts


def event_data(settings: Settings, analysis: Analysis) -> dict:
    """Webhook payload: ids, status, the client's reference, a summary and links.
    Never image bytes, never free text about the patient."""
    data = {
        "id": str(analysis.id),
        "status": analysis.status,
        "external_id": analysis.external_id,
        "batch_id": str(analysis.batch_id) if analysis.batch_id else None,
        "links": links(settings, analysis.id),
    }
    if analysis.result:
        data["result"] = {
            "diagnosis": analysis.result["diagnosis"],
            "probability": analysis.result["probability"],
            "uncertainty": analysis.result["uncertainty"],
            "risk_band": analysis.result["risk_band"],
        }
    if analysis.model:
        data["weights"] = analysis.model.get("weights")
    if analysis.rejection:
        code = analysis.rejection["code"]
        data["rejection"] = {"code": code, "advice": clinical.retake_advice(code)}
    if analysis.error:
        data["error"] = {"code": analysis.error["code"]}
    if analysis.cancel_reason:
        data["reason"] = analysis.cancel_reason
    return data
