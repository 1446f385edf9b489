"""What clients see of an analysis: the record, its links, artifact URLs and event payloads.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from shared import clinical
from shared.clock import iso, utcnow
from shared.config import Settings
from shared.schemas.analyses import (
    AnalysisInputsOut,
    AnalysisRecord,
    AnalysisResult,
    ErrorInfo,
    ImageInfo,
    ModelInfo,
    Rejection,
)
from shared.storage import ARTIFACTS, IMAGES, ObjectStore
from shared.tables import Analysis


def api_base(settings: Settings) -> str:
    return (settings.public_url or settings.api_url).rstrip("/")


def links(settings: Settings, analysis_id: uuid.UUID) -> dict:
    base = f"{api_base(settings)}/v1/analyses/{analysis_id}"
    return {"self": base, "report": f"{base}/report.pdf", "fhir": f"{base}/fhir"}


def inputs_view(analysis: Analysis) -> AnalysisInputsOut:
    return AnalysisInputsOut(
        age=analysis.age,
        sex=analysis.sex,
        site=analysis.site,
        pixel_spacing_mm=analysis.pixel_spacing_mm,
    )


def result_of(analysis: Analysis) -> AnalysisResult | None:
    """The stored result, typed, with ``uncertainty_level`` in words (shared.clinical)."""
    if not analysis.result:
        return None
    result = AnalysisResult.model_validate(analysis.result)
    return result.model_copy(update={"uncertainty_level": clinical.uncertainty_level(result.uncertainty)})


def model_of(analysis: Analysis) -> ModelInfo | None:
    """The stored provenance, typed, with ``banner``: what to show above output from weights
    that are not trained (None for trained weights)."""
    if not analysis.model:
        return None
    model = ModelInfo.model_validate(analysis.model)
    return model.model_copy(update={"banner": clinical.weights_banner(model.weights or clinical.UNKNOWN_WEIGHTS)})


def analysis_record(analysis: Analysis) -> AnalysisRecord:
    """The analysis as typed data: what the API, reports, FHIR, questions and exports are built from."""
    rejection = analysis.rejection
    error = analysis.error
    return AnalysisRecord(
        id=analysis.id,
        external_id=analysis.external_id,
        batch_id=analysis.batch_id,
        status=analysis.status,
        stage=analysis.stage,
        priority=analysis.priority,
        attempt=analysis.attempt,
        created_at=iso(analysis.created_at),
        started_at=iso(analysis.started_at),
        completed_at=iso(analysis.completed_at),
        inputs=inputs_view(analysis),
        image=ImageInfo(
            content_type=analysis.image_content_type,
            width=analysis.image_width,
            height=analysis.image_height,
            sha256=analysis.image_sha256,
        ),
        result=result_of(analysis),
        # Rejections and errors with ``advice``: what to do about it (shared.clinical's wording).
        rejection=Rejection.model_validate({**rejection, "advice": clinical.retake_advice(rejection.get("code"))})
        if rejection else None,
        error=ErrorInfo.model_validate({**error, "advice": clinical.FAILED_ADVICE}) if error else None,
        model=model_of(analysis),
        # Beside the result, so that views without the provenance (lists) still say it.
        weights=clinical.weights_status(analysis.model),
        deadline_at=iso(analysis.deadline_at),
        cancel_reason=analysis.cancel_reason,
        reprocessed_from=analysis.reprocessed_from,
    )


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
    result = result_of(analysis)
    if result is not None:
        data["result"] = result.model_dump(include={"diagnosis", "probability", "uncertainty", "risk_band"})
    weights = clinical.weights_status(analysis.model)
    if analysis.model:
        data["weights"] = weights
    if analysis.rejection:
        code = analysis.rejection.get("code")
        data["rejection"] = {"code": code, "advice": clinical.retake_advice(code)}
    if analysis.error:
        data["error"] = {"code": analysis.error.get("code")}
    if analysis.cancel_reason:
        data["reason"] = analysis.cancel_reason
    return data
