"""Model lifecycle for tenants: re-running an analysis on the current models (docs/MODELS.md)."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import Conflict
from api.services.owned import get_owned
from shared import model_registry
from shared.context import AppContext
from shared.tables import Analysis


def reprocess(context: AppContext, session: Session, tenant: TenantRef, analysis_id: uuid.UUID) -> Analysis:
    original = get_owned(session, Analysis, analysis_id, tenant, "analysis")
    try:
        return model_registry.reprocess(session, context.store, context.celery, original)
    except model_registry.NotReprocessable as exc:
        raise Conflict(str(exc)) from None
