"""Exports for retraining."""

from __future__ import annotations

import csv
from pathlib import Path

from sqlalchemy import select

from shared.config import Settings
from shared.context import AppContext
from shared.db import session_scope
from shared.models import Analysis, Feedback, Tenant

COLUMNS = [
    "tenant", "analysis_id", "external_id", "image_key", "image_sha256", "age", "sex", "site",
    "predicted_diagnosis", "probability", "uncertainty", "risk_band", "segmenter", "weights",
    "fusion_version", "fusion_sha256", "agrees", "final_diagnosis", "histopathology", "notes",
    "feedback_at",
]


def export_feedback(settings: Settings, out: Path, tenant_name: str | None = None) -> int:
    context = AppContext(settings)
    query = (
        select(Feedback, Analysis, Tenant.name)
        .join(Analysis, Analysis.id == Feedback.analysis_id)
        .join(Tenant, Tenant.id == Feedback.tenant_id)
        .order_by(Feedback.created_at)
    )
    if tenant_name:
        query = query.where(Tenant.name == tenant_name)
    count = 0
    tmp = out.with_suffix(out.suffix + ".tmp")
    with session_scope(context.session_factory) as session, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for feedback, analysis, tenant in session.execute(query):
            result = analysis.result or {}
            model = analysis.model or {}
            fusion = model.get("fusion") or {}
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
                    "predicted_diagnosis": result.get("diagnosis"),
                    "probability": result.get("probability"),
                    "uncertainty": result.get("uncertainty"),
                    "risk_band": result.get("risk_band"),
                    "segmenter": model.get("segmenter"),
                    "weights": model.get("weights"),
                    "fusion_version": fusion.get("version"),
                    "fusion_sha256": fusion.get("sha256"),
                    "agrees": feedback.agrees,
                    "final_diagnosis": feedback.final_diagnosis,
                    "histopathology": feedback.histopathology,
                    "notes": feedback.notes,
                    "feedback_at": feedback.created_at.isoformat(),
                }
            )
            count += 1
    tmp.replace(out)
    context.close()
    return count
