"""/v1/batches/{id}/archive, /output, /errors: file-based batches (issue 25). Parse input, call
the service, shape the answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from api.auth import AuthenticatedTenant
from api.deps import ContextDep, SessionDep, authorized, parse_id
from api.problems import problems
from api.services import batch_files as service
from shared.clock import iso
from shared.schemas.batch_files import BatchArchiveIn, BatchArchiveOut, BatchFileOut
from shared.scopes import Scope

router = APIRouter(prefix="/v1/batches", tags=["batches"])

# Who may call each operation, and what its audit row says (api.deps.authorized; issue 22).
CreateArchive = Annotated[AuthenticatedTenant, authorized(Scope.batches_write, "batch.archive", "batch", "batch_id")]
ReadOutput = Annotated[AuthenticatedTenant, authorized(Scope.analyses_read, "batch.output", "batch", "batch_id")]
ReadErrors = Annotated[AuthenticatedTenant, authorized(Scope.analyses_read, "batch.errors", "batch", "batch_id")]

ARCHIVE_DESCRIPTION = """A short-lived URL to PUT the batch's one archive to, then seal the batch
(`POST …/seal`): the ingest workers unpack it and make an item of each row, checked exactly as
`POST /v1/analyses` checks a submission (the same fields, the same image checks; only an image's
pixels are stored). A row that route would refuse is listed in the errors file (`GET …/errors`)
with that problem, and the others go on.

- `zip` or `tar` (plain or compressed): the images and a `manifest.csv` (in the archive's top
  folder, or the one folder it holds) with a header row: `filename` (or `file`, `image`,
  `image_name`, `isic_id`; relative to the manifest, ISIC names without extension are found),
  `age` (or `age_approx`), `sex`, `site` (or ISIC's `anatom_site_general_challenge`),
  `pixel_spacing_mm`, `external_id` (else the file's name), `patient_reference`,
  `encounter_reference`. Row *n* is the manifest's *n*-th record after the header.
- `ndjson`: one JSON object per line, `upload_id` (a direct upload, `POST /v1/uploads`, PUT
  already) and the same fields; row *n* is line *n*.

The batch must be `open` (409 …/batch_sealed otherwise). Asked again before sealing, the same
archive gets a fresh URL. Sealing refuses (409) an archive not PUT yet and (413) one larger than
`max_bytes`; an archive with more than `max_items` rows, or that is not a readable zip, tar or
manifest, is refused whole (one line in the errors file, `row` null). Each item's `row` is in
the output file."""

FILE_DESCRIPTION = """A presigned link to the batch's {what} as NDJSON (one JSON object per line), and
how many lines it has. `partial` is true unless the batch is `completed`: while it is `open` or
`sealed` the file holds what is known so far (written afresh at each request), and a `canceled`
or `expired` batch has rows that never became results. A final batch's file is written once and
reused.

{lines}"""

OUTPUT_LINES = """One line per item, archive rows first in row order, then items submitted one by one:
`row` (its archive row; null for items submitted one by one), `analysis_id`, `external_id`,
`status`, `disposition`, `disposition_reasons`, `probability`, `risk_band`, `diagnosis`,
`weights`, `model_version`, `needs_review`, `review_reason`, `rejection_code` /
`rejection_detail` / `retake_advice` (rejected), `error_code` / `error_detail` (failed),
`cancel_reason` (canceled), `age`, `sex`, `site`, `skin_group`, `ita_degrees`, `bias_warning`,
`uncertainty`, `completed_at`. Rejected and failed items are results: they are here, not in the
errors file."""

ERRORS_LINES = """One line per archive row that was refused (no item was made for it), in row order: `row`,
`file` (the file name, or the upload id of an NDJSON row, as given), and the problem `POST
/v1/analyses` would have answered: `type`, `title`, `status`, `detail`, and `errors` (one per
field) for refused fields. Types beside that route's: …/missing_file (not in the archive),
…/invalid_file_name (an absolute path, `..`, a backslash, a link), and with `row` null
…/invalid_archive (the archive itself could not be read) or …/batch_expired (the batch's
deadline passed before the remaining rows were read). Every archive row that was read is in
exactly one of the two files."""


@router.post(
    "/{batch_id}/archive",
    status_code=201,
    summary="A short-lived URL to PUT the batch's archive to (zip or tar of images, or NDJSON of upload ids)",
    description=ARCHIVE_DESCRIPTION,
    response_model=BatchArchiveOut,
    response_model_exclude_unset=True,
    responses=problems(404, (409, "`type` …/batch_sealed: the batch is sealed or canceled; create a new batch"), 422),
)
def create_archive(
    batch_id: str, body: BatchArchiveIn, context: ContextDep, tenant: CreateArchive, session: SessionDep
) -> BatchArchiveOut:
    archive, url = service.create_archive(context, session, tenant, parse_id(batch_id, "batch"), body)
    settings = context.settings
    return BatchArchiveOut(
        archive_id=archive.id,
        url=url,
        method="PUT",
        headers=service.archive_headers(archive),
        expires_at=iso(archive.url_expires_at) or "",
        format=body.format,
        max_bytes=settings.archive_max_bytes,
        max_items=settings.archive_max_items,
    )


def _file_out(batch_file: service.BatchFile) -> BatchFileOut:
    return BatchFileOut(url=batch_file.url, expires_at=iso(batch_file.expires_at) or "", lines=batch_file.lines,
                        partial=batch_file.partial)


@router.get(
    "/{batch_id}/output",
    summary="The batch's output file: one NDJSON line per item (presigned link)",
    description=FILE_DESCRIPTION.format(what="output file", lines=OUTPUT_LINES),
    response_model=BatchFileOut,
    responses=problems(404),
)
def batch_output(batch_id: str, context: ContextDep, tenant: ReadOutput, session: SessionDep) -> BatchFileOut:
    return _file_out(service.output_file(context, session, tenant, parse_id(batch_id, "batch")))


@router.get(
    "/{batch_id}/errors",
    summary="The batch's errors file: one NDJSON line per refused archive row (presigned link)",
    description=FILE_DESCRIPTION.format(what="errors file", lines=ERRORS_LINES),
    response_model=BatchFileOut,
    responses=problems(404),
)
def batch_errors(batch_id: str, context: ContextDep, tenant: ReadErrors, session: SessionDep) -> BatchFileOut:
    return _file_out(service.errors_file(context, session, tenant, parse_id(batch_id, "batch")))
