"""What clients see of an analysis: the record, its links, artifact URLs and event payloads,
each as the typed model the API documents (shared.schemas).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from sqlalchemy import ColumnElement

from shared import clinical
from shared.clock import iso, utcnow
from shared.config import Settings
from shared.schemas.analyses import (
    AnalysisInputsOut,
    AnalysisLinks,
    AnalysisOut,
    AnalysisRecord,
    AnalysisResult,
    AnalysisSummary,
    Artifacts,
    DicomSource,
    ErrorInfo,
    FeedbackRecord,
    ImageInfo,
    ModelInfo,
    Rejection,
    ReportState,
)
from shared.schemas.common import CancelReason
from shared.schemas.events import AnalysisEventData, CodeOnly, EventRejection, EventResultSummary
from shared.storage import ARTIFACTS, IMAGES, ObjectStore
from shared.tables import Analysis, Feedback, Report

View = TypeVar("View", bound=BaseModel)


def api_base(settings: Settings) -> str:
    return (settings.public_url or settings.api_url).rstrip("/")


def links(settings: Settings, analysis_id: uuid.UUID) -> AnalysisLinks:
    base = f"{api_base(settings)}/v1/analyses/{analysis_id}"
    return AnalysisLinks(self=base, report=f"{base}/report.pdf", fhir=f"{base}/fhir")


def inputs_view(analysis: Analysis) -> AnalysisInputsOut:
    return AnalysisInputsOut(
        age=analysis.age,
        sex=analysis.sex,
        site=analysis.site,
        pixel_spacing_mm=analysis.pixel_spacing_mm,
        patient_reference=analysis.patient_reference,
        encounter_reference=analysis.encounter_reference,
    )


def read_result(stored: Mapping[str, Any] | None, model: ModelInfo | None) -> AnalysisResult | None:
    """A stored result (``analyses.result``) as every surface shows it (``shown_result``), read
    beside the provenance of the model that made it (``read_model``): for readers that select
    the columns rather than the row (exports)."""
    if not stored:
        return None
    return shown_result(AnalysisResult.model_validate(stored), model)


def shown_result(result: AnalysisResult, model: ModelInfo | None) -> AnalysisResult:
    """The result as clients see it, judged by the one set of clinical rules (shared.clinical):

    - ``uncertainty_level``: the uncertainty in words;
    - ``notice``: the weights banner beside the diagnosis whenever the weights are not ``trained``
      (unknown weights included), null for trained weights;
    - ``disposition``, ``disposition_reasons`` and ``safety_netting`` as every other surface
      (PDF, FHIR, note, questions) gives them (``clinical.disposition_of``): from weights that are
      not trained always ``clinician_review`` with ``weights_not_trained`` first, a result stored
      before dispositions existed included. A trained result stored before then keeps a null
      disposition: its review reasons were not recorded, and the API does not invent them.
    """
    weights = clinical.weights_status(model)
    update: dict[str, Any] = {
        "uncertainty_level": clinical.uncertainty_level(result.uncertainty),
        "notice": clinical.weights_banner(weights or clinical.UNKNOWN_WEIGHTS),
    }
    if result.disposition is not None or not clinical.is_clinically_meaningful(weights):
        decision = clinical.disposition_of(result, model)
        update.update(
            disposition=decision.disposition,
            disposition_reasons=list(decision.reasons),
            safety_netting=decision.safety_netting,
        )
    return result.model_copy(update=update)


def shown_disposition() -> ColumnElement[str | None]:
    """``shown_result``'s disposition as SQL, for what is counted or ordered in the database
    (batch progress, ``batch.completed``, the triage order) without reading each result: null
    but for succeeded analyses; ``clinician_review`` from weights that are not ``trained`` (no
    provenance included); else the stored one (null when stored before dispositions existed).
    Postgres keeps it in a generated column (``shared.tables.SHOWN_DISPOSITION_SQL``), the SQL
    twin of ``clinical.disposition_of``."""
    return Analysis.shown_disposition.expression


def read_model(stored: Mapping[str, Any] | None) -> ModelInfo | None:
    """A stored provenance (``analyses.model``) as typed data, with ``banner``: what to show
    above output from weights that are not trained (None for trained weights)."""
    if not stored:
        return None
    model = ModelInfo.model_validate(stored)
    return model.model_copy(update={"banner": clinical.weights_banner(model.weights or clinical.UNKNOWN_WEIGHTS)})


def result_of(analysis: Analysis) -> AnalysisResult | None:
    """The analysis' result, typed and as clients see it (``read_result``)."""
    return read_result(analysis.result, model_of(analysis))


def model_of(analysis: Analysis) -> ModelInfo | None:
    """The provenance of the networks that ran for the analysis, typed (``read_model``)."""
    return read_model(analysis.model)


def rejection_of(analysis: Analysis) -> Rejection | None:
    """The gate's (or ingest's) refusal with ``advice``: how to retake the photo (shared.clinical)."""
    if not analysis.rejection:
        return None
    rejection = Rejection.model_validate(analysis.rejection)
    return rejection.model_copy(update={"advice": clinical.retake_advice(rejection.code)})


def error_of(analysis: Analysis) -> ErrorInfo | None:
    """The failure with ``advice``: what to do about a system error (shared.clinical)."""
    if not analysis.error:
        return None
    return ErrorInfo.model_validate(analysis.error).model_copy(update={"advice": clinical.FAILED_ADVICE})


def analysis_record(analysis: Analysis) -> AnalysisRecord:
    """The analysis as typed data: what the API, reports, FHIR, questions and exports are built from."""
    model = model_of(analysis)
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
        result=read_result(analysis.result, model),
        rejection=rejection_of(analysis),
        error=error_of(analysis),
        model=model,
        # Beside the result, so that views without the provenance (lists) still say it.
        weights=clinical.weights_status(model),
        deadline_at=iso(analysis.deadline_at),
        cancel_reason=analysis.cancel_reason,
        reprocessed_from=analysis.reprocessed_from,
        dicom_source=DicomSource.model_validate(analysis.dicom_source) if analysis.dicom_source else None,
    )


def fields_for(view: type[BaseModel], source: BaseModel) -> dict[str, Any]:
    """The fields of ``source`` that ``view`` declares and ``source`` was given, to build one
    view from another (``view(**fields_for(view, record), ...)``). A field left unset stays
    unset, so it stays off the wire (the routes answer with ``response_model_exclude_unset``)
    exactly as in ``source``."""
    return {name: getattr(source, name) for name in source.model_fields_set if name in view.model_fields}


def narrowed(view: type[View], source: BaseModel) -> View:
    """``source`` as the smaller ``view`` (a record as a list's summary): the fields ``view``
    does not declare are dropped, not carried along as extras."""
    return view(**fields_for(view, source))


def analysis_summary(analysis: Analysis) -> AnalysisSummary:
    """The analysis as lists show it: the record without its model's provenance."""
    return narrowed(AnalysisSummary, analysis_record(analysis))


def image_stored(analysis: Analysis) -> bool:
    """False while a direct upload waits for its ingest, and for one that ingest refused:
    the object under ``image_key`` is then the raw upload, never shown to anyone."""
    return bool(analysis.image_sha256)


def artifact_links(store: ObjectStore, analysis: Analysis) -> Artifacts:
    """Presigned links that expire within the configured TTL (at most 15 minutes); only the
    artifacts that exist are set."""
    found = {"image": store.presigned_get(IMAGES, analysis.image_key)} if image_stored(analysis) else {}
    if analysis.mask_key:
        found["mask"] = store.presigned_get(ARTIFACTS, analysis.mask_key)
    if analysis.overlay_key:
        found["overlay"] = store.presigned_get(ARTIFACTS, analysis.overlay_key)
    return Artifacts(**found, expires_at=iso(utcnow() + timedelta(seconds=store.settings.presign_ttl_seconds)))


def analysis_view(
    settings: Settings, store: ObjectStore, analysis: Analysis, report: Report | None, feedback: Iterable[Feedback]
) -> AnalysisOut:
    """One analysis as the API shows it (``GET /v1/analyses/{id}``) and a tenant's export keeps
    it (``shared.tenant_data``): the record, with links, presigned artifacts, report readiness
    and feedback."""
    return AnalysisOut(
        **fields_for(AnalysisOut, analysis_record(analysis)),
        updated_at=iso(analysis.updated_at),
        links=links(settings, analysis.id),
        artifacts=artifact_links(store, analysis),
        report=ReportState(ready=report is not None, created_at=iso(report.created_at) if report else None),
        feedback=[
            FeedbackRecord(
                agrees=f.agrees,
                final_diagnosis=f.final_diagnosis,
                histopathology=f.histopathology,
                notes=f.notes,
                created_at=iso(f.created_at),
            )
            for f in feedback
        ],
    )


def event_data(settings: Settings, analysis: Analysis) -> AnalysisEventData:
    """Webhook payload: ids, status, the client's reference, a summary and links; the
    optional parts are set only when they apply (and so sent only then: ``record_event``
    leaves unset fields out). Never image bytes, never free text about the patient."""
    data = AnalysisEventData(
        id=analysis.id,
        status=analysis.status,
        external_id=analysis.external_id,
        batch_id=analysis.batch_id,
        links=links(settings, analysis.id),
    )
    if analysis.patient_reference is not None:
        data.patient_reference = analysis.patient_reference
    model = model_of(analysis)
    result = read_result(analysis.result, model)
    if result is not None:
        data.result = EventResultSummary(
            diagnosis=result.diagnosis,
            probability=result.probability,
            uncertainty=result.uncertainty,
            risk_band=result.risk_band,
            disposition=result.disposition,
            disposition_reasons=result.disposition_reasons,
        )
    if model is not None:
        data.weights = model.weights
    rejection = rejection_of(analysis)
    if rejection is not None:
        data.rejection = EventRejection(code=rejection.code, advice=rejection.advice)
    error = error_of(analysis)
    if error is not None:
        data.error = CodeOnly(code=error.code)
    if analysis.cancel_reason:
        # The column holds only the reasons shared.lifecycle.states names.
        data.reason = cast(CancelReason, analysis.cancel_reason)
    return data
