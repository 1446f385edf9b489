"""/v1/analyses: HTTP only: call the service, shape the answer. What the submission's fields
mean and how they are refused is ``api.forms``."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from api import forms, live
from api.auth import AuthenticatedTenant, TenantRef
from api.capacity import Capacity
from api.deps import CapacityDep, ContextDep, SessionDep, audit_note, authorized, in_session, parse_id
from api.forms import PREFER_DESCRIPTION
from api.middleware import DEADLINE_EXTENSION
from api.multipart import CleanImage, clean_image, read_multipart
from api.problems import BadRequest, NotFound, NotReady, Unprocessable, problems
from api.services import analyses as service
from api.services import progress, webhook_endpoints
from shared import lifecycle
from shared.context import AppContext
from shared.schemas import (
    AnalysisInputs,
    AnalysisOut,
    AnalysisPage,
    AnalysisSummary,
    FeedbackIn,
    FeedbackOut,
)
from shared.scopes import Scope
from shared.storage import ARTIFACTS
from shared.tables import Analysis, Feedback, Report

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
Submit = Annotated[AuthenticatedTenant, authorized(Scope.analyses_write, "analysis.submit", "analysis")]
ListAnalyses = Annotated[AuthenticatedTenant, authorized(Scope.analyses_read, "analysis.list", "analysis")]
ReadAnalysis = Annotated[
    AuthenticatedTenant, authorized(Scope.analyses_read, "analysis.read", "analysis", "analysis_id")
]
CancelAnalysis = Annotated[
    AuthenticatedTenant, authorized(Scope.analyses_write, "analysis.cancel", "analysis", "analysis_id")
]
WriteFeedback = Annotated[
    AuthenticatedTenant, authorized(Scope.feedback_write, "feedback.create", "analysis", "analysis_id")
]
ReadArtifact = Annotated[
    AuthenticatedTenant, authorized(Scope.analyses_read, "artifact.read", "analysis", "analysis_id")
]
ReadReport = Annotated[AuthenticatedTenant, authorized(Scope.analyses_read, "report.read", "analysis", "analysis_id")]
ReadFhir = Annotated[AuthenticatedTenant, authorized(Scope.analyses_read, "fhir.read", "analysis", "analysis_id")]
FollowAnalysis = Annotated[
    AuthenticatedTenant, authorized(Scope.analyses_read, "analysis.events", "analysis", "analysis_id")
]


def view(context: AppContext, session: Session, analysis: Analysis) -> AnalysisOut:
    """One analysis as the API shows it: the record, with links, presigned artifacts, report
    readiness and feedback (``shared.lifecycle.analysis_view``, which exports use too)."""
    return lifecycle.analysis_view(
        context.settings,
        context.store,
        analysis,
        service.report_for(session, analysis.id),
        service.feedback_for(session, analysis.id),
    )


def summary(analysis: Analysis) -> AnalysisSummary:
    return lifecycle.analysis_summary(analysis)


def json_body(analysis: AnalysisOut) -> dict[str, Any]:
    """The JSON of an answer sent as a ``JSONResponse`` (a status or header of its own): the
    fields that were set, as the routes' ``response_model_exclude_unset`` sends them."""
    return analysis.model_dump(mode="json", exclude_unset=True)


SUBMIT_ERRORS = problems(
    (400, "No image and no upload_id, both, or a body that is not JSON"),
    (409, "`type` …/batch_sealed: the batch takes no new items (create a new batch); …/conflict: the "
     "Idempotency-Key was used for another request, or the direct upload was used, expired or never arrived"),
    (404, "No upload with that `upload_id`"),
    413,
    415,
)


@router.post(
    "",
    status_code=202,
    openapi_extra=forms.SUBMIT_SCHEMA,
    summary="Submit an image for analysis",
    response_model=AnalysisOut,
    response_model_exclude_unset=True,
    response_description="Accepted: the analysis, `queued`; poll `Location` or wait for a webhook",
    description="The photo (JPEG, PNG or DICOM, multipart `image`) or a direct upload's `upload_id`, with "
    "optional patient context; a DICOM image's header gives the age, sex and site the form leaves out "
    "(docs/DICOM.md). Answers 202 with the queued analysis and `Location`; with `Prefer: wait=N` it answers 201 "
    "with the final analysis if it finishes within N seconds. `Idempotency-Key` makes a retry safe; "
    "`Cancel-After` (or `cancel_after`) sets a deadline. `webhook_url` (with `webhook_events_filter`) sends this "
    "analysis' events there, signed with the answer's `webhook.secret`. Research use only, not a certified "
    "medical device.",
    responses={
        201: {
            "description": "`Prefer: wait=N` and the analysis finished in time: the final analysis",
            "model": AnalysisOut,
            "headers": {"Preference-Applied": {"schema": {"type": "string"}, "description": "wait=N"}},
        },
        200: {"description": "As 201, for an idempotent replay of a finished analysis", "model": AnalysisOut},
        **SUBMIT_ERRORS,
    },
)
async def submit_analysis(
    request: Request,
    tenant: Submit,
    context: ContextDep,
    capacity: CapacityDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    cancel_after: Annotated[str | None, Header(alias="Cancel-After", max_length=32)] = None,
    prefer: Annotated[str | None, Header(max_length=200, description=PREFER_DESCRIPTION)] = None,
) -> JSONResponse:
    """Read, check and clean the upload holding no database connection; then one short
    transaction stores the row. With an ``upload_id`` (a multipart field, or a JSON body)
    instead of the image, the ingest worker checks and cleans the direct upload. With
    ``Prefer: wait=N`` the answer waits up to N seconds for the outcome (``_answer``)."""
    settings = context.settings
    wait = forms.preferred_wait(prefer)
    if idempotency_key is not None and "\x00" in idempotency_key:
        raise Unprocessable("Idempotency-Key: must not contain NUL bytes")
    if forms.is_json(request):
        fields = await forms.read_json_fields(request, settings.api_max_json_bytes)
    else:
        submitted = None
        async with request.app.state.limiter.upload_slot(tenant.id):
            form = await read_multipart(request, settings.max_upload_bytes, settings.max_upload_mb)
            raw = form.files.get("image")
            declared_type = form.file_types.get("image")
            fields = dict(form.fields)
            del form
            if raw is not None:
                if fields.get("upload_id"):
                    raise BadRequest("send either an 'image' file or an 'upload_id', not both")
                deadline = forms.cancel_after(
                    cancel_after, fields.pop("cancel_after", None), settings.max_cancel_after_seconds
                )
                webhook = await forms.request_webhook(context, tenant, fields)
                inputs = forms.parse_inputs(fields)
                async with capacity.decode(tenant.id):
                    image = await run_in_threadpool(
                        clean_image, raw, settings.max_image_pixels, settings.max_decode_side, declared_type
                    )
                del raw
                if image.dicom is not None:
                    inputs = image.dicom.fill(inputs)  # the header's age, sex, site where the form gave none
                submitted, body = await in_session(
                    capacity, context, tenant.id, _submit, context, tenant, image, inputs, idempotency_key, deadline,
                    webhook,
                )
        if submitted is not None:
            # Outside the upload slot: a client waiting for its result does not hold the
            # tenant's concurrent-upload quota.
            return await _answer(request, capacity, context, tenant, submitted, body, wait)
    if not fields.get("upload_id"):
        raise BadRequest(
            "the request has no image: send the photo as a multipart 'image' file field (image=@lesion.jpg), "
            "or the 'upload_id' of a direct upload (POST /v1/uploads)"
        )
    upload_id = forms.upload_id(fields.pop("upload_id"))
    deadline = forms.cancel_after(cancel_after, fields.pop("cancel_after", None), settings.max_cancel_after_seconds)
    webhook = await forms.request_webhook(context, tenant, fields)
    inputs = forms.parse_inputs(fields)
    queued, body = await in_session(
        capacity, context, tenant.id, _submit_upload, context, tenant, upload_id, inputs, idempotency_key, deadline,
        webhook,
    )
    return await _answer(request, capacity, context, tenant, queued, body, wait)


async def _answer(
    request: Request,
    capacity: Capacity,
    context: AppContext,
    tenant: TenantRef,
    submitted: service.Submitted,
    body: AnalysisOut,
    wait: int | None,
) -> JSONResponse:
    headers = {"Location": f"/v1/analyses/{submitted.analysis.id}"}
    audit_note(request).resource_id = str(submitted.analysis.id)
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    if wait is None:
        return JSONResponse(json_body(body), status_code=202, headers=headers)
    headers["Preference-Applied"] = f"wait={wait}"
    # The deadline that guards against stalled dependencies starts after the wait asked for.
    setattr(request.state, DEADLINE_EXTENSION, float(wait))
    final = body.status in service.FINAL_STATUSES or await service.wait_until_final(
        capacity, context, tenant.id, submitted.analysis.id, wait, gone=request.is_disconnected
    )
    if not final:
        return JSONResponse(json_body(body), status_code=202, headers=headers)
    webhook = body.webhook
    body = await in_session(capacity, context, tenant.id, _final_view, context, tenant, submitted.analysis.id)
    if webhook is not None:
        body = body.model_copy(update={"webhook": webhook})
    return JSONResponse(json_body(body), status_code=200 if submitted.replayed else 201, headers=headers)


def _final_view(session: Session, context: AppContext, tenant: TenantRef, analysis_id: uuid.UUID) -> AnalysisOut:
    return view(context, session, service.get(session, tenant, analysis_id))


def _submitted_view(session: Session, context: AppContext, submitted: service.Submitted) -> AnalysisOut:
    body = view(context, session, submitted.analysis)
    if submitted.webhook is not None:
        body = body.model_copy(
            update={"webhook": webhook_endpoints.request_webhook_view(context, submitted.webhook)}
        )
    return body


def _submit(
    session: Session,
    context: AppContext,
    tenant: TenantRef,
    image: CleanImage,
    inputs: AnalysisInputs,
    idempotency_key: str | None,
    cancel_after: float | None,
    webhook: service.RequestWebhook | None,
) -> tuple[service.Submitted, AnalysisOut]:
    submitted = service.submit(
        context, session, tenant, image, inputs, idempotency_key, cancel_after=cancel_after, webhook=webhook
    )
    return submitted, _submitted_view(session, context, submitted)


def _submit_upload(
    session: Session,
    context: AppContext,
    tenant: TenantRef,
    upload_id: uuid.UUID,
    inputs: AnalysisInputs,
    idempotency_key: str | None,
    cancel_after: float | None,
    webhook: service.RequestWebhook | None,
) -> tuple[service.Submitted, AnalysisOut]:
    submitted = service.submit_upload(
        context, session, tenant, upload_id, inputs, idempotency_key, cancel_after=cancel_after, webhook=webhook
    )
    return submitted, _submitted_view(session, context, submitted)


@router.get(
    "",
    summary="List analyses, newest first",
    description="The tenant's analyses, newest first, in pages of `limit`; pass `next_cursor` back as `cursor` "
    "for the next page. Filters: `status`, `batch_id`, `external_id`. List items carry no model provenance, "
    "links or artifacts: fetch one analysis for those.",
    response_model=AnalysisPage,
    response_model_exclude_unset=True,
    responses=problems((400, "The cursor is not one this API issued"), (404, "No batch with that `batch_id`")),
)
async def list_analyses(
    request: Request,
    tenant: ListAnalyses,
    context: ContextDep,
    capacity: CapacityDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    status: Literal["queued", "processing", "succeeded", "rejected", "failed", "canceled"] | None = None,
    batch_id: str | None = None,
    external_id: str | None = None,
) -> AnalysisPage:
    # Issue 27: one thread hop for the unit of work (the session, the page, the commit), not
    # one each for the session's start, the handler, its end and the answer's validation.
    page = await in_session(
        capacity, context, tenant.id, _list_page, tenant, limit, cursor, status,
        parse_id(batch_id, "batch") if batch_id else None, external_id,
    )
    audit_note(request).detail["returned"] = len(page.data)
    return page


def _list_page(
    session: Session,
    tenant: TenantRef,
    limit: int,
    cursor: str | None,
    status: str | None,
    batch_id: uuid.UUID | None,
    external_id: str | None,
) -> AnalysisPage:
    rows, next_cursor = service.list_page(
        session, tenant, limit=limit, cursor=cursor, status=status, batch_id=batch_id, external_id=external_id
    )
    return AnalysisPage(data=[summary(a) for a in rows], next_cursor=next_cursor)


@router.get(
    "/{analysis_id}",
    summary="Status, result and short-lived artifact links",
    description="Status and stage, timestamps, inputs, `result` (succeeded), `rejection` (a clinical gate "
    "refused the image) or `error` (failed), `model` provenance with `weights` (`untrained` output carries no "
    "meaning), presigned `artifacts` (valid until `artifacts.expires_at`), report readiness and feedback. "
    "Research use only, not a certified medical device.",
    response_model=AnalysisOut,
    response_model_exclude_unset=True,
    responses=problems(404),
)
async def get_analysis(
    analysis_id: str, tenant: ReadAnalysis, context: ContextDep, capacity: CapacityDep
) -> AnalysisOut:
    # Issue 27: the read, the view and the commit in one thread hop (``in_session``).
    return await in_session(capacity, context, tenant.id, _read_view, context, tenant, parse_id(analysis_id))


def _read_view(session: Session, context: AppContext, tenant: TenantRef, analysis_id: uuid.UUID) -> AnalysisOut:
    """``view`` of the tenant's analysis (404 for anyone else's id): the analysis, whether its
    report is stored and its feedback read in one statement, of the report only what the view
    shows (its time), not its FHIR document (issue 27). One row per feedback (one with none)."""
    rows = session.execute(
        select(Analysis, Report, Feedback)
        .outerjoin(Report, Report.analysis_id == Analysis.id)
        .outerjoin(Feedback, Feedback.analysis_id == Analysis.id)
        .where(Analysis.id == analysis_id, Analysis.tenant_id == tenant.id)
        .order_by(Feedback.created_at)
        .options(load_only(Report.analysis_id, Report.created_at))
    ).all()
    if not rows:
        raise NotFound(f"no analysis with id {analysis_id}")
    analysis, report, _ = rows[0]
    feedback = [row[2] for row in rows if row[2] is not None]
    return lifecycle.analysis_view(context.settings, context.store, analysis, report, feedback)


@router.get(
    "/{analysis_id}/events",
    summary="Live progress: every state change, as Server-Sent Events",
    description=live.ANALYSIS_DESCRIPTION,
    response_class=Response,
    responses={
        200: {
            "description": "`text/event-stream`: `event: state` events (`data`: JSON, `contentSchema`), "
            "each with its `id`; heartbeat comments; ends after the final state",
            "content": {live.MEDIA_TYPE: {"schema": live.ANALYSIS_STREAM_SCHEMA}},
        },
        204: {"description": "`Last-Event-ID` was the final state: nothing follows (an EventSource stops)"},
        **problems(404),
    },
)
async def follow_analysis(
    request: Request,
    analysis_id: str,
    tenant: FollowAnalysis,
    context: ContextDep,
    capacity: CapacityDep,
    # Typed `str` with a None default, not `str | None`: the document then says "a string of
    # digits, optional" rather than "digits or null" (a client that sends `null` is refused).
    last_event_id: str = Header(
        None, alias="Last-Event-ID", pattern=r"^[0-9]{1,18}$",
        description="The `id` of the last event received: the stream resumes after it",
    ),
) -> Response:
    ident = parse_id(analysis_id)
    resume: str | None = last_event_id
    after = int(resume) if resume is not None else 0
    found = await live.read(capacity, context, tenant, progress.analysis_progress, ident, after)
    if found is None:
        raise NotFound(f"no analysis with id {analysis_id}")
    if resume is not None and found.final and not found.transitions:
        return Response(status_code=204)
    events = live.analysis_events(request.app.state.progress_feed, context, capacity, tenant, ident, after)
    return live.response(events, context.settings)


@router.post(
    "/{analysis_id}/cancel",
    summary="Cancel a queued or processing analysis",
    description="The analysis ends `canceled` (`cancel_reason` `requested`) and one `analysis.canceled` event is "
    "sent. A final analysis answers 409.",
    response_model=AnalysisOut,
    response_model_exclude_unset=True,
    responses=problems(404, (409, "The analysis is already final")),
)
def cancel_analysis(
    analysis_id: str, tenant: CancelAnalysis, context: ContextDep, session: SessionDep
) -> AnalysisOut:
    analysis = service.cancel(context, session, tenant, parse_id(analysis_id))
    return view(context, session, analysis)


@router.post(
    "/{analysis_id}/feedback",
    status_code=201,
    summary="Clinician feedback on a result",
    description="Whether the clinician agrees, the final diagnosis and histopathology when known, and notes. "
    "Only for succeeded analyses; each call adds one entry (shown under `feedback` on the analysis).",
    response_model=FeedbackOut,
    response_model_exclude_unset=True,
    responses=problems(404, (409, "The analysis did not succeed")),
)
def post_feedback(analysis_id: str, tenant: WriteFeedback, body: FeedbackIn, session: SessionDep) -> FeedbackOut:
    feedback = service.add_feedback(session, tenant, parse_id(analysis_id), body)
    return FeedbackOut(
        analysis_id=feedback.analysis_id,
        agrees=feedback.agrees,
        final_diagnosis=feedback.final_diagnosis,
        histopathology=feedback.histopathology,
        notes=feedback.notes,
    )


def _report_or_409(session: Session, tenant: TenantRef, analysis_id: str) -> tuple[Analysis, Report]:
    return service.ready_report(session, tenant, parse_id(analysis_id))


@router.get(
    "/{analysis_id}/artifacts/{name}",
    status_code=307,
    response_class=RedirectResponse,
    summary="Stable link to the image, mask or overlay: redirects to a fresh short-lived URL",
    description="Answers 307 to a presigned URL valid for a few minutes, so a page can keep this link. 409 while "
    "the artifact does not exist (not yet, or never for this outcome).",
    responses={
        307: {"description": "Redirect to the artifact", "headers": {"Location": {"schema": {"type": "string"}}}},
        **problems(404, (409, "The artifact does not exist for this analysis (yet)")),
    },
)
def get_artifact(
    request: Request,
    analysis_id: str,
    name: Literal["image", "mask", "overlay"],
    tenant: ReadArtifact,
    context: ContextDep,
    session: SessionDep,
) -> RedirectResponse:
    audit_note(request).detail["artifact"] = name
    analysis = service.get(session, tenant, parse_id(analysis_id))
    url = getattr(lifecycle.artifact_links(context.store, analysis), name)
    if url is None:
        raise NotReady(f"the {name} is not available for an analysis that is {analysis.status}")
    return RedirectResponse(url, status_code=307, headers={"Cache-Control": "private, no-store"})


REPORT_ERRORS = problems(
    404,
    (409, "`type` …/not_ready: no report yet (`Retry-After`), or none will come (canceled, refused upload)"),
)


@router.get(
    "/{analysis_id}/report.pdf",
    response_class=Response,
    summary="The PDF report",
    description="The clinician-facing PDF: findings, ABCD, equity, quality, the scribe note and model provenance, "
    "marked research use only. 409 until the report worker has written it.",
    responses={
        200: {"content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}},
        **REPORT_ERRORS,
    },
)
def get_report(analysis_id: str, tenant: ReadReport, context: ContextDep, session: SessionDep) -> Response:
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


@router.get(
    "/{analysis_id}/fhir",
    summary="FHIR R4 Bundle for EHRs",
    description="A FHIR R4 `Bundle` (DiagnosticReport, Observations, the PDF as a Binary) for an EHR, "
    "`application/fhir+json`. 409 until the report is ready.",
    response_class=Response,
    responses={
        200: {
            "description": "A FHIR R4 Bundle",
            "content": {"application/fhir+json": {"schema": {"type": "object", "additionalProperties": True}}},
        },
        **REPORT_ERRORS,
    },
)
def get_fhir(analysis_id: str, tenant: ReadFhir, session: SessionDep) -> JSONResponse:
    _, report = _report_or_409(session, tenant, analysis_id)
    return JSONResponse(report.fhir, media_type="application/fhir+json")
