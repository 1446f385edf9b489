"""/v1/analyses: parse input, call the service, shape the answer."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import ValidationError

from api.deps import CapacityDep, ContextDep, CurrentTenant, SessionDep, in_session, parse_id
from api.problems import BadRequest, NotReady, PayloadTooLarge, Unprocessable
from api.services import analyses as service
from api.uploads import clean_image, read_multipart
from shared import analyses as lifecycle
from shared.models import Analysis
from shared.schemas import AnalysisInputs, FeedbackIn, parse_duration
from shared.storage import ARTIFACTS

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])

SUBMIT_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "JPEG or PNG"},
                        "upload_id": {
                            "type": "string", "format": "uuid",
                            "description": "instead of image: the id of a direct upload (POST /v1/uploads)",
                        },
                        "cancel_after": {
                            "type": "string",
                            "description": "deadline, as the Cancel-After header: 90s, 5m, 1h30m or seconds",
                        },
                        "age": {"type": "integer", "minimum": 0, "maximum": 120},
                        "sex": {"type": "string", "enum": ["male", "female", "unknown"]},
                        "site": {
                            "type": "string",
                            "enum": [
                                "head/neck", "upper extremity", "lower extremity", "torso",
                                "palms/soles", "oral/genital", "unknown",
                            ],
                        },
                        "pixel_spacing_mm": {"type": "number", "exclusiveMinimum": 0},
                        "external_id": {"type": "string", "maxLength": 200},
                        "batch_id": {"type": "string", "format": "uuid"},
                        "priority": {"type": "string", "enum": ["interactive", "bulk"]},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["upload_id"],
                    "properties": {
                        "upload_id": {"type": "string", "format": "uuid"},
                        "cancel_after": {"type": ["string", "number"]},
                        "age": {"type": "integer", "minimum": 0, "maximum": 120},
                        "sex": {"type": "string", "enum": ["male", "female", "unknown"]},
                        "site": {"type": "string"},
                        "pixel_spacing_mm": {"type": "number", "exclusiveMinimum": 0},
                        "external_id": {"type": "string", "maxLength": 200},
                        "batch_id": {"type": "string", "format": "uuid"},
                        "priority": {"type": "string", "enum": ["interactive", "bulk"]},
                    },
                }
            },
        },
    }
}


def view(context: ContextDep, session, analysis: Analysis) -> dict:
    body = lifecycle.analysis_record(analysis)
    body["updated_at"] = lifecycle.iso(analysis.updated_at)
    body["links"] = lifecycle.links(context.settings, analysis.id)
    body["artifacts"] = lifecycle.artifact_links(context.store, analysis)
    report = service.report_for(session, analysis.id)
    body["report"] = {"ready": report is not None, "created_at": lifecycle.iso(report.created_at) if report else None}
    body["feedback"] = [
        {
            "agrees": f.agrees,
            "final_diagnosis": f.final_diagnosis,
            "histopathology": f.histopathology,
            "notes": f.notes,
            "created_at": lifecycle.iso(f.created_at),
        }
        for f in service.feedback_for(session, analysis.id)
    ]
    return body


def summary(analysis: Analysis) -> dict:
    body = lifecycle.analysis_record(analysis)
    body.pop("model", None)
    return body


def _parse_inputs(fields: dict) -> AnalysisInputs:
    values = {k: v for k, v in fields.items() if v != "" and v is not None}
    try:
        return AnalysisInputs.model_validate(values)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"]) or "form", "message": err["msg"]}
            for err in exc.errors()
        ]
        raise Unprocessable(
            "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        ) from None


def _field_error(field: str, message: str) -> Unprocessable:
    return Unprocessable(f"{field}: {message}", errors=[{"field": field, "message": message}])


def _cancel_after(header: str | None, field: object, limit: int) -> float | None:
    """Seconds from the ``Cancel-After`` header or the ``cancel_after`` field (one of them)."""
    if header is not None and field not in (None, ""):
        raise _field_error("cancel_after", "send the deadline as the Cancel-After header or the field, not both")
    name, value = ("Cancel-After", header) if header is not None else ("cancel_after", field)
    if value in (None, ""):
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise _field_error(name, str(exc)) from None
    if seconds > limit:
        raise _field_error(name, f"must be at most {limit} seconds")
    return seconds


def _upload_id(value: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise _field_error("upload_id", "is not an upload id (a UUID from POST /v1/uploads)") from None


async def _read_json_fields(request: Request, max_bytes: int) -> dict:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"the request body is larger than {max_bytes // 1024} KiB")
    try:
        fields = json.loads(body)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise BadRequest("the body must be a JSON object with an upload_id")
    return fields


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


@router.post("", status_code=202, openapi_extra=SUBMIT_SCHEMA, summary="Submit an image for analysis")
async def submit_analysis(
    request: Request,
    context: ContextDep,
    capacity: CapacityDep,
    tenant: CurrentTenant,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    cancel_after: Annotated[str | None, Header(alias="Cancel-After", max_length=32)] = None,
):
    """Read, check and clean the upload holding no database connection; then one short
    transaction stores the row. With an ``upload_id`` (a multipart field, or a JSON body)
    instead of the image, the ingest worker checks and cleans the direct upload."""
    settings = context.settings
    if idempotency_key is not None and "\x00" in idempotency_key:
        raise Unprocessable("Idempotency-Key: must not contain NUL bytes")
    if _is_json(request):
        fields = await _read_json_fields(request, settings.api_max_json_bytes)
    else:
        async with request.app.state.limiter.upload_slot(tenant.id):
            form = await read_multipart(request, settings.max_upload_bytes, settings.max_upload_mb)
            raw = form.files.get("image")
            fields = dict(form.fields)
            del form
            if raw is not None:
                if fields.get("upload_id"):
                    raise BadRequest("send either an 'image' file or an 'upload_id', not both")
                deadline = _cancel_after(cancel_after, fields.pop("cancel_after", None), settings.max_cancel_after_seconds)
                inputs = _parse_inputs(fields)
                async with capacity.decode(tenant.id):
                    image = await run_in_threadpool(clean_image, raw, settings.max_image_pixels, settings.max_decode_side)
                del raw
                submitted, body = await in_session(
                    capacity, context, tenant.id, _submit, context, tenant, image, inputs, idempotency_key, deadline
                )
                return _accepted(submitted, body)
    if not fields.get("upload_id"):
        raise BadRequest(
            "the request has no image: send the photo as a multipart 'image' file field (image=@lesion.jpg), "
            "or the 'upload_id' of a direct upload (POST /v1/uploads)"
        )
    upload_id = _upload_id(fields.pop("upload_id"))
    deadline = _cancel_after(cancel_after, fields.pop("cancel_after", None), settings.max_cancel_after_seconds)
    inputs = _parse_inputs(fields)
    submitted, body = await in_session(
        capacity, context, tenant.id, _submit_upload, context, tenant, upload_id, inputs, idempotency_key, deadline
    )
    return _accepted(submitted, body)


def _accepted(submitted: service.Submitted, body: dict) -> JSONResponse:
    headers = {"Location": f"/v1/analyses/{submitted.analysis.id}"}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=202, headers=headers)


def _submit(session, context, tenant, image, inputs, idempotency_key, cancel_after) -> tuple[service.Submitted, dict]:
    submitted = service.submit(context, session, tenant, image, inputs, idempotency_key, cancel_after=cancel_after)
    return submitted, view(context, session, submitted.analysis)


def _submit_upload(
    session, context, tenant, upload_id, inputs, idempotency_key, cancel_after
) -> tuple[service.Submitted, dict]:
    submitted = service.submit_upload(
        context, session, tenant, upload_id, inputs, idempotency_key, cancel_after=cancel_after
    )
    return submitted, view(context, session, submitted.analysis)


@router.get("", summary="List analyses, newest first")
def list_analyses(
    tenant: CurrentTenant,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    status: Literal["queued", "processing", "succeeded", "rejected", "failed", "canceled"] | None = None,
    batch_id: str | None = None,
    external_id: str | None = None,
):
    rows, next_cursor = service.list_page(
        session,
        tenant,
        limit=limit,
        cursor=cursor,
        status=status,
        batch_id=parse_id(batch_id, "batch") if batch_id else None,
        external_id=external_id,
    )
    return {"data": [summary(a) for a in rows], "next_cursor": next_cursor}


@router.get("/{analysis_id}", summary="Status, result and short-lived artifact links")
def get_analysis(analysis_id: str, context: ContextDep, tenant: CurrentTenant, session: SessionDep):
    return view(context, session, service.get(session, tenant, parse_id(analysis_id)))


@router.post("/{analysis_id}/cancel", summary="Cancel a queued or processing analysis")
def cancel_analysis(analysis_id: str, context: ContextDep, tenant: CurrentTenant, session: SessionDep):
    analysis = service.cancel(context, session, tenant, parse_id(analysis_id))
    return view(context, session, analysis)


@router.post("/{analysis_id}/feedback", status_code=201, summary="Clinician feedback on a result")
def post_feedback(analysis_id: str, body: FeedbackIn, tenant: CurrentTenant, session: SessionDep):
    feedback = service.add_feedback(session, tenant, parse_id(analysis_id), body)
    return {
        "analysis_id": str(feedback.analysis_id),
        "agrees": feedback.agrees,
        "final_diagnosis": feedback.final_diagnosis,
        "histopathology": feedback.histopathology,
        "notes": feedback.notes,
    }


def _report_or_409(session, tenant, analysis_id: str):
    analysis = service.get(session, tenant, parse_id(analysis_id))
    report = service.report_for(session, analysis.id)
    if report is None:
        if analysis.status == "canceled":
            raise NotReady("canceled analyses have no report")
        if analysis.status == "rejected" and not lifecycle.image_stored(analysis):
            raise NotReady("the upload was refused before analysis (see rejection); there is no report")
        raise NotReady(
            f"the report is not ready yet (analysis is {analysis.status}); retry shortly",
            headers={"Retry-After": "2"},
        )
    return analysis, report


@router.get(
    "/{analysis_id}/artifacts/{name}",
    status_code=307,
    response_class=RedirectResponse,
    summary="Stable link to the image, mask or overlay: redirects to a fresh short-lived URL",
)
def get_artifact(
    analysis_id: str,
    name: Literal["image", "mask", "overlay"],
    context: ContextDep,
    tenant: CurrentTenant,
    session: SessionDep,
):
    analysis = service.get(session, tenant, parse_id(analysis_id))
    links = lifecycle.artifact_links(context.store, analysis)
    if name not in links:
        raise NotReady(f"the {name} is not available for an analysis that is {analysis.status}")
    return RedirectResponse(links[name], status_code=307, headers={"Cache-Control": "private, no-store"})


@router.get("/{analysis_id}/report.pdf", response_class=Response, summary="The PDF report")
def get_report(analysis_id: str, context: ContextDep, tenant: CurrentTenant, session: SessionDep):
    analysis, report = _report_or_409(session, tenant, analysis_id)
    pdf = context.store.get(ARTIFACTS, report.pdf_key)
    return Response(
        pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="dermasentinel-{analysis.id}.pdf"',
            "Cache-Control": "private, no-store",
        },
    )


@router.get("/{analysis_id}/fhir", summary="FHIR R4 Bundle for EHRs")
def get_fhir(analysis_id: str, tenant: CurrentTenant, session: SessionDep):
    _, report = _report_or_409(session, tenant, analysis_id)
    return JSONResponse(report.fhir, media_type="application/fhir+json")
