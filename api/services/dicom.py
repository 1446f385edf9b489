"""DICOM out (issue 23; docs/DICOM.md): an analysis' Segmentation, TID 1500 Structured Report
and Encapsulated PDF, built on request from what is stored (the record, the mask and the PDF
in the artifacts bucket) by ``shared.dicom``. Nothing new is stored: the objects' UIDs and
dates come from the analysis, so every request answers the same instance.

All three wait for the report (the one readiness the PDF, FHIR and these share: 409 with
``Retry-After`` until it exists); the Segmentation and the SR are only for succeeded analyses
(a rejected or failed one has a report but no mask and no findings)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.auth import TenantRef
from api.problems import NotReady
from api.services import analyses
from shared import lifecycle
from shared.context import AppContext
from shared.dicom.common import part10
from shared.dicom.documents import build_encapsulated_pdf
from shared.dicom.measurements import build_measurement_report
from shared.dicom.segmentation import build_segmentation
from shared.schemas.analyses import AnalysisRecord
from shared.storage import ARTIFACTS
from shared.tables import Analysis, AnalysisStatus


@dataclass(frozen=True)
class DicomObject:
    analysis_id: uuid.UUID
    kind: str
    """``seg``, ``sr`` or ``pdf``: the file name's suffix."""
    data: bytes


def _with_findings(session: Session, tenant: TenantRef, analysis_id: uuid.UUID, what: str) -> Analysis:
    analysis, _ = analyses.ready_report(session, tenant, analysis_id)
    if analysis.status != AnalysisStatus.succeeded.value or not analysis.mask_key:
        raise NotReady(
            f"a {analysis.status} analysis has no {what}: only succeeded analyses do; its report is at /dicom/pdf"
        )
    return analysis


def _record(analysis: Analysis) -> AnalysisRecord:
    return lifecycle.analysis_record(analysis)


def segmentation(context: AppContext, session: Session, tenant: TenantRef, analysis_id: uuid.UUID) -> DicomObject:
    analysis = _with_findings(session, tenant, analysis_id, "lesion mask")
    assert analysis.mask_key is not None
    mask = context.store.get(ARTIFACTS, analysis.mask_key)
    return DicomObject(analysis.id, "seg", part10(build_segmentation(_record(analysis), mask)))


def measurement_report(session: Session, tenant: TenantRef, analysis_id: uuid.UUID) -> DicomObject:
    analysis = _with_findings(session, tenant, analysis_id, "measurements")
    return DicomObject(analysis.id, "sr", part10(build_measurement_report(_record(analysis))))


def encapsulated_pdf(context: AppContext, session: Session, tenant: TenantRef, analysis_id: uuid.UUID) -> DicomObject:
    analysis, report = analyses.ready_report(session, tenant, analysis_id)
    pdf = context.store.get(ARTIFACTS, report.pdf_key)
    created = report.created_at.isoformat() if report.created_at else None
    return DicomObject(analysis.id, "pdf", part10(build_encapsulated_pdf(_record(analysis), pdf, created)))
