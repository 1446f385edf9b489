"""/v1/analyses/{id}/dicom/seg|sr|pdf: an analysis as DICOM objects for a PACS (issue 23;
docs/DICOM.md). HTTP only: ``api.services.dicom`` builds them (``shared.dicom``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response

from api.auth import AuthenticatedTenant
from api.deps import ContextDep, SessionDep, authorized, parse_id
from api.problems import problems
from api.services import dicom as service
from shared.dicom.reading import CONTENT_TYPE
from shared.scopes import Scope

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
ReadSegmentation = Annotated[
    AuthenticatedTenant, authorized(Scope.analyses_read, "dicom_seg.read", "analysis", "analysis_id")
]
ReadMeasurementReport = Annotated[
    AuthenticatedTenant, authorized(Scope.analyses_read, "dicom_sr.read", "analysis", "analysis_id")
]
ReadEncapsulatedPdf = Annotated[
    AuthenticatedTenant, authorized(Scope.analyses_read, "dicom_pdf.read", "analysis", "analysis_id")
]

DICOM_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A DICOM Part 10 file",
        "content": {CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}
FINDINGS_ERRORS = problems(
    404,
    (409, "`type` …/not_ready: no report yet (`Retry-After`), or none will come (canceled, refused upload), or the "
     "analysis did not succeed (a rejected or failed analysis has no mask and no measurements)"),
)
REPORT_ERRORS = problems(
    404, (409, "`type` …/not_ready: no report yet (`Retry-After`), or none will come (canceled, refused upload)")
)
RESEARCH_ONLY = "Research use only, not a certified medical device."


def _answer(found: service.DicomObject) -> Response:
    return Response(
        found.data,
        media_type=CONTENT_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="dermasentinel-{found.analysis_id}-{found.kind}.dcm"',
            "Cache-Control": "private, no-store",
        },
    )


@router.get(
    "/{analysis_id}/dicom/seg",
    response_class=Response,
    summary="The lesion mask as a DICOM Segmentation",
    description="A binary DICOM Segmentation (one segment, `lesion`) on the analysed image's grid, referencing "
    "the source SOP instance when the image was sent as DICOM (in its study); otherwise in a study of the "
    "analysis, referencing the stored image. The patient is anonymous (`DS-<analysis id>`). The same analysis "
    "always gives the same instance. 409 until the report is ready, and for analyses that did not succeed. "
    + RESEARCH_ONLY,
    responses={**DICOM_ANSWER, **FINDINGS_ERRORS},
)
def get_segmentation(
    analysis_id: str, tenant: ReadSegmentation, context: ContextDep, session: SessionDep
) -> Response:
    return _answer(service.segmentation(context, session, tenant, parse_id(analysis_id)))


@router.get(
    "/{analysis_id}/dicom/sr",
    response_class=Response,
    summary="The findings as a DICOM Structured Report (TID 1500)",
    description="A Comprehensive 3D SR with a TID 1500 Measurement Report, DermaSentinel as the device observer: "
    "the lesion's diameter (mm when `pixel_spacing_mm` is known, else pixels), coverage, ABCD scores, probability, "
    "uncertainty, diagnosis and risk band (referencing the Segmentation's segment); ITA and skin group; the "
    "disposition and its reasons; the model's name, version and weights status. PRELIMINARY unless the weights are "
    "`trained`; never VERIFIED. 409 until the report is ready, and for analyses that did not succeed. "
    + RESEARCH_ONLY,
    responses={**DICOM_ANSWER, **FINDINGS_ERRORS},
)
def get_measurement_report(analysis_id: str, tenant: ReadMeasurementReport, session: SessionDep) -> Response:
    return _answer(service.measurement_report(session, tenant, parse_id(analysis_id)))


@router.get(
    "/{analysis_id}/dicom/pdf",
    response_class=Response,
    summary="The PDF report as DICOM Encapsulated PDF",
    description="The report of `/report.pdf`, unchanged, as a DICOM Encapsulated PDF in the same study as the "
    f"Segmentation and the SR. 409 until the report is ready. {RESEARCH_ONLY}",
    responses={**DICOM_ANSWER, **REPORT_ERRORS},
)
def get_encapsulated_pdf(
    analysis_id: str, tenant: ReadEncapsulatedPdf, context: ContextDep, session: SessionDep
) -> Response:
    return _answer(service.encapsulated_pdf(context, session, tenant, parse_id(analysis_id)))
