"""/v1/uploads: presigned PUTs for images, for backlogs too big to send through the API.

One at a time (``POST /v1/uploads``, then ``POST /v1/analyses {"upload_id"}``), or in bulk for
a backlog (``POST /v1/uploads/bulk``, then ``POST /v1/uploads/submit``): the same checks, the
fixed cost of a request paid once per call instead of once per image."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

from api.auth import AuthenticatedTenant
from api.deps import ContextDep, SessionDep, authorized
from api.problems import TYPE_BASE, Problem, Unprocessable, problems
from api.services import bulk
from api.services import uploads as service
from shared import lifecycle
from shared.clinical.vocabulary import AGE_MAX, AGE_MIN
from shared.clock import iso
from shared.config import Settings
from shared.schemas import (
    CANCEL_AFTER_SCHEMA,
    AnalysisInputs,
    AnalysisSummary,
    ProblemDetails,
    ResponseModel,
    UploadIn,
    UploadNext,
    UploadOut,
    parse_duration,
)
from shared.schemas.common import PIXEL_SPACING_MAX_MM, PIXEL_SPACING_MIN_MM
from shared.scopes import Scope
from shared.tables import Upload

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
CreateUpload = Annotated[AuthenticatedTenant, authorized(Scope.analyses_write, "upload.create", "upload")]
CreateUploads = Annotated[AuthenticatedTenant, authorized(Scope.analyses_write, "upload.create_bulk", "upload")]
SubmitUploads = Annotated[AuthenticatedTenant, authorized(Scope.analyses_write, "upload.submit", "upload")]


class UploadsOut(ResponseModel):
    uploads: list[UploadOut]


def _json_number(value: object) -> object:
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number")
    return value


class UploadsIn(UploadIn):
    """``POST /v1/uploads/bulk``: how many upload ids, for images of one type."""

    # A JSON number: `true` is not 1.
    count: Annotated[int, BeforeValidator(_json_number)] = Field(
        ge=1, le=service.MAX_BULK, description=f"How many (1–{service.MAX_BULK})"
    )


ItemCancelAfter = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({key: value for key, value in CANCEL_AFTER_SCHEMA.items() if key != "maximum"}),
]


class UploadSubmission(AnalysisInputs):
    """One image of ``POST /v1/uploads/submit``: the fields of ``POST /v1/analyses`` (JSON body),
    with the request's ``Idempotency-Key`` and ``Cancel-After`` as fields of the item."""

    upload_id: uuid.UUID
    # A JSON body: numbers must be JSON numbers (the form route's text-to-number parsing would
    # read `false` as 0).
    age: Annotated[int | None, BeforeValidator(_json_number)] = Field(default=None, ge=AGE_MIN, le=AGE_MAX)
    pixel_spacing_mm: Annotated[float | None, BeforeValidator(_json_number)] = Field(
        default=None, ge=PIXEL_SPACING_MIN_MM, le=PIXEL_SPACING_MAX_MM,
        description=AnalysisInputs.model_fields["pixel_spacing_mm"].description,
    )
    idempotency_key: Annotated[str, StringConstraints(max_length=255, pattern=r"^[^\x00]*$")] | None = None
    # Unbounded in the schema: a deadline past MAX_CANCEL_AFTER_SECONDS refuses that item alone
    # (its own 422 in the answer), not the whole call.
    cancel_after: ItemCancelAfter | None = None


class UploadSubmissionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[UploadSubmission] = Field(min_length=1, max_length=service.MAX_BULK)


class UploadSubmissionResult(ResponseModel):
    upload_id: uuid.UUID
    status: int = Field(description="What `POST /v1/analyses` would have answered for this item: 202 or 4xx")
    replayed: bool = Field(default=False, description="An idempotent replay of an earlier submission")
    analysis: AnalysisSummary | None = Field(default=None, description="When accepted")
    problem: ProblemDetails | None = Field(default=None, description="When refused: why, as problem+json")


class UploadSubmissionsOut(ResponseModel):
    accepted: int
    refused: int
    results: list[UploadSubmissionResult] = Field(description="One per item, in the order sent")


def _upload_body(settings: Settings, upload: Upload, url: str) -> UploadOut:
    return UploadOut(
        id=upload.id,
        url=url,
        method="PUT",
        headers={"Content-Type": upload.content_type},
        expires_at=iso(upload.url_expires_at),
        submit_before=iso(upload.usable_until),
        max_bytes=settings.max_upload_bytes,
        content_type=upload.content_type,
        next=UploadNext(method="POST", path="/v1/analyses", body={"upload_id": str(upload.id)}),
    )


@router.post(
    "",
    status_code=201,
    summary="A short-lived URL to PUT one image to, and its upload id",
    description="PUT the image to `url` with the given `headers` before `expires_at`, then submit it with "
    "`POST /v1/analyses` and `{\"upload_id\": …}` before `submit_before`; the ingest worker checks and cleans it "
    "as the API would have.",
    response_model=UploadOut,
    response_model_exclude_unset=True,
)
def create_upload(
    context: ContextDep, tenant: CreateUpload, session: SessionDep, body: UploadIn | None = None
) -> UploadOut:
    upload, url = service.create(context, session, tenant, body or UploadIn())
    return _upload_body(context.settings, upload, url)


@router.post(
    "/bulk",
    status_code=201,
    summary=f"Up to {service.MAX_BULK} upload ids and URLs in one call, for a backlog",
    description="The same as `count` calls of `POST /v1/uploads` (each URL is for one image, short-lived, "
    "its own key), in one request and one transaction.",
    response_model=UploadsOut,
    response_model_exclude_unset=True,
    responses=problems(422),
)
def create_uploads(context: ContextDep, tenant: CreateUploads, session: SessionDep, body: UploadsIn) -> UploadsOut:
    made = service.create_many(context, session, tenant, body, body.count)
    return UploadsOut(uploads=[_upload_body(context.settings, upload, url) for upload, url in made])


@router.post(
    "/submit",
    status_code=200,
    summary=f"Submit up to {service.MAX_BULK} direct uploads for analysis in one call",
    description="Each item is what `POST /v1/analyses` takes as a JSON body (`upload_id` and the analysis "
    "fields), plus its own `idempotency_key` and `cancel_after`. Each item is checked as that route checks it "
    "and answered on its own: `status` 202 with the queued `analysis`, or the 4xx that route would have given, "
    "with its `problem` (an item refused leaves the others alone). A body that does not parse is a 422 for the "
    "whole call; nothing is stored then.",
    response_model=UploadSubmissionsOut,
    response_model_exclude_unset=True,
    responses=problems(
        (409, "A concurrent request used one of the idempotency keys at the same moment: nothing was stored, retry"),
        422,
    ),
)
def submit_uploads(
    context: ContextDep, tenant: SubmitUploads, session: SessionDep, body: UploadSubmissionsIn
) -> UploadSubmissionsOut:
    limit = context.settings.max_cancel_after_seconds
    results: list[UploadSubmissionResult | None] = []
    work = []
    for item in body.items:
        if item.cancel_after is not None and item.cancel_after > limit:
            message = f"must be at most {limit} seconds"
            problem = Unprocessable(f"cancel_after: {message}", errors=[{"field": "cancel_after", "message": message}])
            results.append(_refused(item.upload_id, problem))
            continue
        inputs = AnalysisInputs.model_validate(item.model_dump(include=set(AnalysisInputs.model_fields)))
        work.append((item.upload_id, inputs, item.idempotency_key, item.cancel_after))
        results.append(None)
    outcomes = iter(bulk.submit_many(context, session, tenant, work))
    for n, done in enumerate(results):
        if done is not None:
            continue
        outcome = next(outcomes)
        if outcome.analysis is None:
            assert outcome.problem is not None
            results[n] = _refused(outcome.upload_id, outcome.problem)
        else:
            results[n] = UploadSubmissionResult(
                upload_id=outcome.upload_id,
                status=202,
                replayed=outcome.replayed,
                analysis=lifecycle.analysis_summary(outcome.analysis),
            )
    answered = [r for r in results if r is not None]
    accepted = sum(1 for r in answered if r.status == 202)
    return UploadSubmissionsOut(accepted=accepted, refused=len(answered) - accepted, results=answered)


def _refused(upload_id: uuid.UUID, problem: Problem) -> UploadSubmissionResult:
    """An item answered with the problem ``POST /v1/analyses`` would have sent for it."""
    errors = {"errors": problem.errors} if problem.errors else {}
    return UploadSubmissionResult(
        upload_id=upload_id,
        status=problem.status,
        problem=ProblemDetails(
            type=TYPE_BASE + problem.code,
            title=problem.title,
            status=problem.status,
            detail=problem.detail,
            instance="/v1/uploads/submit",
            **errors,
        ),
    )
