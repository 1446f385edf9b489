"""DELETE /v1/analyses/{id}: erasure of one analysis (issue 22, GDPR Art. 17;
docs/DATA_RIGHTS.md). HTTP only: ``shared.tenant_data.erase_analysis`` does the work."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.auth import AuthenticatedTenant
from api.deps import CapacityDep, ContextDep, audit_note, authorized, parse_id
from api.problems import Conflict, NotFound, problems
from shared import tenant_data
from shared.scopes import Scope

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])


@router.delete(
    "/{analysis_id}",
    status_code=204,
    response_class=Response,
    summary="Erase an analysis and everything derived from it",
    description="Deletes the image, mask, overlay, PDF report and FHIR bundle, the result, questions and "
    "feedback, and this analysis' webhook events with their deliveries; afterwards every URL of the analysis "
    "answers 404. The audit trail keeps a record of the erasure without patient data. An analysis still "
    "`queued` or `processing` answers 409: cancel it first (`POST /v1/analyses/{id}/cancel`). Needs the "
    "`analyses:write` scope.",
    responses={
        204: {"description": "Erased; nothing of the analysis remains but its audit record"},
        **problems(
            (403, "The API key lacks the `analyses:write` scope"),
            404,
            (409, "The analysis is still queued or processing: cancel it first"),
        ),
    },
)
async def erase_analysis(
    analysis_id: str,
    request: Request,
    tenant: Annotated[
        AuthenticatedTenant, authorized(Scope.analyses_write, "analysis.erase", "analysis", "analysis_id")
    ],
    context: ContextDep,
    capacity: CapacityDep,
) -> Response:
    ident = parse_id(analysis_id)
    # The rows go in one short transaction in one of the tenant's database slots, then the
    # objects; ``authorized`` writes the audit row (actor, outcome, these counts) afterwards.
    async with capacity.database(tenant.id):
        try:
            erased = await run_in_threadpool(tenant_data.erase_analysis, context, tenant.id, ident)
        except tenant_data.AnalysisNotFound:
            raise NotFound(f"no analysis with id {ident}") from None
        except tenant_data.ErasureRefused as exc:
            raise Conflict(str(exc)) from None
    audit_note(request).detail.update(erased.detail())
    return Response(status_code=204)
