"""GET /v1/monitoring's SQL: the tenant's own monitoring windows (issue 24; shared.monitoring)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.auth import TenantRef
from shared import monitoring
from shared.context import AppContext
from shared.schemas.monitoring import MonitoringOut


def view(context: AppContext, session: Session, tenant: TenantRef) -> MonitoringOut:
    """Each model version with results in the tenant's window: only this tenant's rows are read."""
    return monitoring.tenant_monitoring(session, context.settings, tenant.id)
