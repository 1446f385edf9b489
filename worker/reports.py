"""Reports for final analyses: PDF and FHIR Bundle, on the CPU queue, never on GPU workers."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from typing import Any

from minio.error import S3Error
from psycopg.errors import ForeignKeyViolation
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from shared import lifecycle, model_registry, tenant_data, tracing
from shared.context import AppContext
from shared.db import session_scope
from shared.events import record_event
from shared.logs import bind
from shared.metrics import REPORT_RENDER_SECONDS
from shared.schemas.analyses import AnalysisRecord
from shared.storage import ARTIFACTS, IMAGES, artifact_key
from shared.tables import Analysis, AnalysisStatus, Report
from worker.reporting.fhir import BundleContext, BundleLinks, build_fhir_bundle
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
        checkpoints = (record.model.scalpel, record.model.fusion) if record.model is not None else ()
        cards = model_registry.cards_by_id(session, [c.registry_id for c in checkpoints if c is not None])
        image_key, overlay_key, tenant_id = analysis.image_key, analysis.overlay_key, analysis.tenant_id
        bind(tenant_id=tenant_id, batch_id=analysis.batch_id)
        traceparent = analysis.traceparent
    # Issue 25: rendering and storing is a span of the analysis' trace (its report.ready event too).
    with tracing.span("report render", parent=traceparent):
        return _render_and_store(context, analysis_id, record, cards, image_key, overlay_key, tenant_id)


def _render_and_store(
    context: AppContext, analysis_id: uuid.UUID, record: AnalysisRecord, cards: dict[str, dict[str, Any]],
    image_key: str, overlay_key: str | None, tenant_id: uuid.UUID,
) -> bool:
    started = time.perf_counter()
    try:
        image = context.store.get(IMAGES, image_key)
        overlay = context.store.get(ARTIFACTS, overlay_key) if overlay_key else None
    except S3Error as exc:
        if exc.code in tenant_data.MISSING_OBJECT_CODES and tenant_data.discard_if_erased(context, analysis_id, []):
            return False  # erased since it was read: nothing to report on
        raise
    pdf = render_report(record, image, overlay)
    links = lifecycle.links(context.settings, analysis_id)
    fhir = build_fhir_bundle(
        record,
        BundleLinks(
            report=links.report,
            image=f"{links.self}/artifacts/image",
            overlay=f"{links.self}/artifacts/overlay" if overlay_key else None,
            api=lifecycle.api_base(context.settings),
        ),
        BundleContext(organization=context.settings.organization_name or None, model_cards=cards),
    )
    render_ms = (time.perf_counter() - started) * 1000
    REPORT_RENDER_SECONDS.observe(render_ms / 1000)
    pdf_key = artifact_key(tenant_id, analysis_id, "report.pdf")
    context.store.put(ARTIFACTS, pdf_key, pdf, "application/pdf")

    try:
        return _store_report(context, analysis_id, tenant_id, pdf_key, pdf, fhir, render_ms)
    except IntegrityError as exc:
        # The analysis was erased (or its tenant deleted) while its report was rendered: no
        # report row can point at it, and the PDF just stored goes too (issue 22).
        if isinstance(exc.orig, ForeignKeyViolation) and tenant_data.discard_if_erased(
            context, analysis_id, [(ARTIFACTS, pdf_key)]
        ):
            return False
        raise


def _store_report(
    context: AppContext,
    analysis_id: uuid.UUID,
    tenant_id: uuid.UUID,
    pdf_key: str,
    pdf: bytes,
    fhir: dict,
    render_ms: float,
) -> bool:
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
