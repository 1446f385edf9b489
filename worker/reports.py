"""Reports for final analyses: PDF and FHIR Bundle, on the CPU queue, never on GPU workers."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from shared import lifecycle
from shared.context import AppContext
from shared.db import session_scope
from shared.events import record_event
from shared.logs import bind
from shared.metrics import REPORT_RENDER_SECONDS
from shared.storage import ARTIFACTS, IMAGES, artifact_key
from shared.tables import Analysis, AnalysisStatus, Report
from worker.reporting.fhir import BundleLinks, build_fhir_bundle
from worker.reporting.pdf import render_report

log = logging.getLogger(__name__)
REPORTABLE = {AnalysisStatus.succeeded.value, AnalysisStatus.rejected.value, AnalysisStatus.failed.value}


def build_report(context: AppContext, analysis_id: uuid.UUID) -> bool:
    """Render and store the report once; a second run finds the row and does nothing."""
    with session_scope(context.session_factory) as session:
        analysis = session.get(Analysis, analysis_id)
        if analysis is None:
            return False
        if analysis.status not in REPORTABLE or session.get(Report, analysis_id) is not None:
            lifecycle.report_settled(session, analysis_id)
            return False
        record = lifecycle.analysis_record(analysis)
        image_key, overlay_key, tenant_id = analysis.image_key, analysis.overlay_key, analysis.tenant_id
        bind(tenant_id=tenant_id, batch_id=analysis.batch_id)

    started = time.perf_counter()
    image = context.store.get(IMAGES, image_key)
    overlay = context.store.get(ARTIFACTS, overlay_key) if overlay_key else None
    pdf = render_report(record, image, overlay)
    links = lifecycle.links(context.settings, analysis_id)
    fhir = build_fhir_bundle(
        record,
        BundleLinks(
            report=links.report,
            image=f"{links.self}/artifacts/image",
            overlay=f"{links.self}/artifacts/overlay" if overlay_key else None,
        ),
    )
    render_ms = (time.perf_counter() - started) * 1000
    REPORT_RENDER_SECONDS.observe(render_ms / 1000)
    pdf_key = artifact_key(tenant_id, analysis_id, "report.pdf")
    context.store.put(ARTIFACTS, pdf_key, pdf, "application/pdf")

    with session_scope(context.session_factory) as session:
        inserted = session.execute(
            insert(Report)
            .values(
                analysis_id=analysis_id,
                tenant_id=tenant_id,
                pdf_key=pdf_key,
                pdf_sha256=hashlib.sha256(pdf).hexdigest(),
                fhir=fhir,
                render_ms=render_ms,
            )
            .on_conflict_do_nothing(index_elements=[Report.analysis_id])
            .returning(Report.analysis_id)
        ).scalar_one_or_none()
        lifecycle.report_settled(session, analysis_id)
        if inserted is None:
            return False
        analysis = session.execute(select(Analysis).where(Analysis.id == analysis_id)).scalar_one()
        data = lifecycle.event_data(context.settings, analysis)
        record_event(
            session,
            context.celery,
            tenant_id=tenant_id,
            type="analysis.report_ready",
            data=data,
            dedupe_key=f"analysis.report_ready:{analysis_id}",
        )
    log.info("report for %s rendered in %.0f ms", analysis_id, render_ms)
    return True
