"""Exports for retraining: one tenant's feedback unless every tenant is asked for."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.context import AppContext
from shared.csv_export import SafeDictWriter
from shared.db import session_scope
from shared.lifecycle.views import model_of, result_of
from shared.tables import Analysis, Feedback, Tenant

COLUMNS = [
    "tenant", "analysis_id", "external_id", "image_key", "image_sha256", "age", "sex", "site",
    "predicted_diagnosis", "probability", "uncertainty", "risk_band", "segmenter", "weights",
    "fusion_version", "fusion_sha256", "agrees", "final_diagnosis", "histopathology", "notes",
    "feedback_at",
]


class ExportScopeError(ValueError):
    """No tenant was named and the choice is not obvious."""


def export_feedback(
    settings: Settings, out: Path, tenant_name: str | None = None, *, all_tenants: bool = False
) -> int:
    """Write feedback rows to `out` and return how many. One tenant's rows: `tenant_name`,
    or the only tenant when there is just one; every tenant's only with `all_tenants`."""
    if tenant_name and all_tenants:
        raise ExportScopeError("name one tenant or ask for all tenants, not both")
    context = AppContext(settings)
    try:
        return _write(context, out, tenant_name, all_tenants)
    finally:
        context.close()


def _write(context: AppContext, out: Path, tenant_name: str | None, all_tenants: bool) -> int:
    query = (
        select(Feedback, Analysis, Tenant.name)
        .join(Analysis, Analysis.id == Feedback.analysis_id)
        .join(Tenant, Tenant.id == Feedback.tenant_id)
        .order_by(Feedback.created_at)
    )
    if not all_tenants:
        with context.session_factory() as session:
            tenant_name = tenant_name or _only_tenant(session)
            if session.execute(select(Tenant.id).where(Tenant.name == tenant_name)).first() is None:
                raise ExportScopeError(f"no tenant named {tenant_name!r}")
        query = query.where(Tenant.name == tenant_name)
    count = 0
    tmp = out.with_suffix(out.suffix + ".tmp")
    with session_scope(context.session_factory) as session, tmp.open("w", newline="") as handle:
        writer = SafeDictWriter(handle, COLUMNS)
        writer.writeheader()
        for feedback, analysis, tenant in session.execute(query):
            writer.writerow(
                {
                    "tenant": tenant,
                    "analysis_id": analysis.id,
                    "external_id": analysis.external_id,
                    "image_key": analysis.image_key,
                    "image_sha256": analysis.image_sha256,
                    "age": analysis.age,
                    "sex": analysis.sex,
                    "site": analysis.site,
                    **_prediction(analysis),
                    "agrees": feedback.agrees,
                    "final_diagnosis": feedback.final_diagnosis,
                    "histopathology": feedback.histopathology,
                    "notes": feedback.notes,
                    "feedback_at": feedback.created_at.isoformat(),
                }
            )
            count += 1
    tmp.replace(out)
    return count


def _prediction(analysis: Analysis) -> dict[str, object]:
    """The prediction the feedback judges, and the model that made it (read as the API reads
    them); empty cells where the analysis has no result or no model ran."""
    result, model = result_of(analysis), model_of(analysis)
    fusion = model and model.fusion
    return {
        "predicted_diagnosis": result and result.diagnosis,
        "probability": result and result.probability,
        "uncertainty": result and result.uncertainty,
        "risk_band": result and result.risk_band,
        "segmenter": model and model.segmenter,
        "weights": model and model.weights,
        "fusion_version": fusion and fusion.version,
        "fusion_sha256": fusion and fusion.sha256,
    }


def _only_tenant(session: Session) -> str:
    names = session.execute(select(Tenant.name).order_by(Tenant.name).limit(2)).scalars().all()
    if len(names) != 1:
        raise ExportScopeError(
            "several tenants exist; name one with --tenant NAME, or export everyone's feedback with --all-tenants"
            if names
            else "there are no tenants yet"
        )
    return names[0]
