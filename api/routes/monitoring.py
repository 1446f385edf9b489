"""/v1/monitoring: the tenant's own view of how the model behaves on its results (issue 24;
docs/MONITORING.md). Aggregates only, never a patient's record: a key that reads the model
registry and model cards (``models:read``) reads this too, and each read is audited
(``monitoring.read``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from api.auth import AuthenticatedTenant
from api.deps import ContextDep, SessionDep, audit_note, authorized
from api.problems import problems
from api.services import monitoring as service
from shared.schemas.monitoring import MonitoringOut
from shared.scopes import Scope

router = APIRouter(prefix="/v1/monitoring", tags=["models"])

ReadMonitoring = Annotated[AuthenticatedTenant, authorized(Scope.models_read, "monitoring.read", "monitoring")]


@router.get(
    "",
    summary="How the model behaves on this tenant's results",
    description="Per model version, over the window of its newest final results (`window`: the last "
    "`MONITOR_WINDOW` results, none older than `MONITOR_WINDOW_HOURS` nor than the last time an operator cleared "
    "that version's drift): the probability distribution against the model's reference recorded at evaluation "
    "(population stability index and Kolmogorov–Smirnov statistic), rejection rates by code, the failure rate, the "
    "ITA skin-group mix (and its PSI against the reference's), the sex, site and age-band mix, the disposition mix; "
    "and, from feedback with a histopathology or final diagnosis, the model's sensitivity and specificity overall "
    "and per skin group with counts and Wilson 95% intervals. `drift` says which measures cross their threshold "
    "and whether a drift episode is open; `safety_mode` whether every new result is `clinician_review` (reason "
    "`drift`) until an operator clears it. Only this tenant's results are counted. Needs the `models:read` scope; "
    "each read is recorded (`monitoring.read`). Research use only, not a certified medical device.",
    response_model=MonitoringOut,
    responses=problems((403, "The key lacks the `models:read` scope")),
)
def get_monitoring(
    request: Request, context: ContextDep, tenant: ReadMonitoring, session: SessionDep
) -> MonitoringOut:
    answer = service.view(context, session, tenant)
    audit_note(request).detail["models"] = len(answer.models)
    return answer
