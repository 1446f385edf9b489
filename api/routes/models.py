"""POST /v1/analyses/{id}/reprocess: the same image and inputs again, on the active models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.auth import AuthenticatedTenant
from api.deps import ContextDep, SessionDep, authorized, parse_id
from api.problems import problems
from api.routes.analyses import json_body, view
from api.services import models as service
from shared.schemas import AnalysisOut
from shared.scopes import Scope

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
ReprocessAnalysis = Annotated[
    AuthenticatedTenant, authorized(Scope.analyses_write, "analysis.reprocess", "analysis", "analysis_id")
]


@router.post(
    "/{analysis_id}/reprocess",
    status_code=202,
    summary="Run an analysis again on the current models",
    description="Queues a new analysis of the same image and inputs; it runs on the models active when a worker "
    "takes it and names the original in `reprocessed_from`. The original and its result are kept unchanged, so "
    "both results can be compared (each records its `model.version`). Only finished analyses whose image was "
    "stored can be reprocessed. Research use only, not a certified medical device.",
    response_model=AnalysisOut,
    response_model_exclude_unset=True,
    responses=problems(404, (409, "The analysis is not finished, or its image was never stored")),
)
def reprocess_analysis(
    analysis_id: str, context: ContextDep, tenant: ReprocessAnalysis, session: SessionDep
) -> JSONResponse:
    analysis = service.reprocess(context, session, tenant, parse_id(analysis_id))
    body = json_body(view(context, session, analysis))  # names the original in reprocessed_from
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/analyses/{analysis.id}"})
