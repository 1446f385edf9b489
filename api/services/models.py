"""Model lifecycle for tenants: re-running an analysis on the current models, and the registered
versions with their model cards (docs/MODELS.md)."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import Conflict, NotFound
from api.services.owned import get_owned
from shared import model_cards, model_registry
from shared.context import AppContext
from shared.schemas.models import ModelCardOut, ModelList
from shared.tables import Analysis


def reprocess(context: AppContext, session: Session, tenant: TenantRef, analysis_id: uuid.UUID) -> Analysis:
    original = get_owned(session, Analysis, analysis_id, tenant, "analysis")
    try:
        return model_registry.reprocess(session, context.store, context.celery, original)
    except model_registry.NotReprocessable as exc:
        raise Conflict(str(exc)) from None


# ------------------------------------------------------------ the registry and its cards (issue 24)


def registered(session: Session) -> ModelList:
    """Every registered version, by kind, newest first, with the headline of its card."""
    rows = model_registry.list_models(session, with_evaluations=True)
    return ModelList(data=[model_cards.listed(row) for row in rows])


def card(session: Session, model_id: str) -> ModelCardOut:
    """The card of one registered version (404 for an unknown or malformed id). Models belong
    to no tenant: any key with ``models:read`` reads any card."""
    found = model_cards.card_for(session, model_id)
    if found is None:
        raise NotFound(f"no registered model with id {model_id!r}; `GET /v1/models` lists them")
    return found
