"""POST /v1/analyses/{id}/reprocess: the same image and inputs again, on the active models.
GET /v1/models and GET /v1/models/{id}/card: the registered versions and each one's model card
(issue 24; docs/MODELS.md), for keys that hold ``models:read``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from api.auth import AuthenticatedTenant
from api.deps import ContextDep, SessionDep, audit_note, authorized, parse_id
from api.problems import problems
from api.routes.analyses import json_body, view
from api.services import models as service
from shared.model_cards import render_html
from shared.schemas import AnalysisOut
from shared.schemas.models import ModelCardOut, ModelList
from shared.scopes import Scope

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])
registry_router = APIRouter(prefix="/v1/models", tags=["models"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
ReprocessAnalysis = Annotated[
    AuthenticatedTenant, authorized(Scope.analyses_write, "analysis.reprocess", "analysis", "analysis_id")
]
ListModels = Annotated[AuthenticatedTenant, authorized(Scope.models_read, "model.list", "model")]
ReadModelCard = Annotated[AuthenticatedTenant, authorized(Scope.models_read, "model_card.read", "model", "model_id")]
# The HTML card runs no script and loads nothing: its own inline style only.
CARD_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


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


@registry_router.get(
    "",
    summary="The registered model versions",
    description="Every version in the model registry (Scalpel and Fusion), newest first by kind: status "
    "(`candidate`, `active`, `retired`), weights (`trained` or `synthetic`), operating thresholds, the latest "
    "stored evaluation's set and overall AUC with its 95% interval, the latest activation's acceptance check "
    "and whether it was overridden, and the link to each model card. Needs the `models:read` scope.",
    response_model=ModelList,
    responses=problems(),
)
def list_models(tenant: ListModels, session: SessionDep) -> ModelList:
    return service.registered(session)


def wants_html(accept: str | None) -> bool:
    """Whether an ``Accept`` header prefers HTML to JSON (JSON wins a tie and is the default)."""
    weights: dict[str, float] = {}
    for part in (accept or "").split(","):
        media, *parameters = [piece.strip() for piece in part.split(";")]
        weight = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        media = media.lower()
        weights[media] = max(weights.get(media, 0.0), weight)
    return weights.get("text/html", 0.0) > weights.get("application/json", 0.0)


@registry_router.get(
    "/{model_id}/card",
    summary="The model card of a registered version",
    description="The model card of one registered version, generated from its registry row, the card its training "
    "run wrote and the evaluations stored against it: intended and out-of-scope use, model type, inputs and outputs, "
    "training data, the latest evaluation's metrics overall and per ITA skin group (counts and 95% intervals), the "
    "operating points with their sensitivities, limitations and bias notes, weights status, the latest activation's "
    "acceptance check, and the same facts as a CHAI Applied Model Card (`applied_model_card`). JSON by default; a "
    "self-contained HTML page for `Accept: text/html` or `?format=html`. Research use only; not a certified "
    "medical device. Needs the `models:read` scope; every read is audited (`model_card.read`).",
    response_model=ModelCardOut,
    responses={
        200: {"description": "The model card", "content": {"text/html": {"schema": {"type": "string"}}}},
        **problems((404, "No registered model with that id")),
    },
)
def get_model_card(
    model_id: str,
    request: Request,
    tenant: ReadModelCard,
    session: SessionDep,
    format: Annotated[Literal["json", "html"] | None, Query(description="`html` for the page (as `Accept: "
                                                                          "text/html`); default JSON")] = None,
) -> Response:
    card = service.card(session, model_id)
    html = format == "html" or (format is None and wants_html(request.headers.get("accept")))
    audit_note(request).detail["format"] = "html" if html else "json"
    headers = {"Vary": "Accept"}
    if html:
        return HTMLResponse(render_html(card), headers={**headers, "Content-Security-Policy": CARD_CSP})
    return JSONResponse(card.model_dump(mode="json", by_alias=True), headers=headers)
