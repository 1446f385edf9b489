"""File-based batches (issue 25): a batch's archive in, its output and errors files out."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas.common import ResponseModel, Timestamp, Url

ArchiveFormat = Literal["zip", "tar", "ndjson"]

# What the client PUTs the archive as (the worker judges the content: zip, or tar plain or
# compressed, or lines of JSON).
ARCHIVE_CONTENT_TYPES: dict[str, str] = {
    "zip": "application/zip",
    "tar": "application/x-tar",
    "ndjson": "application/x-ndjson",
}


class BatchArchiveIn(BaseModel):
    """``POST /v1/batches/{id}/archive``: what will be PUT."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True,
                              json_schema_extra={"examples": [{"format": "zip"}]})

    format: ArchiveFormat = Field(
        description="`zip` or `tar` (plain, gzip, bzip2 or xz): images with a `manifest.csv` (column `filename`, "
        "and the analysis fields `age`, `sex`, `site`, `pixel_spacing_mm`, `external_id`, `patient_reference`, "
        "`encounter_reference`; ISIC's column names too); `ndjson`: one JSON object per line, `upload_id` (a "
        "direct upload, PUT already) and the analysis fields"
    )


class BatchArchiveOut(ResponseModel):
    archive_id: uuid.UUID
    url: Url = Field(description="PUT the archive here, with the `headers` given, before `expires_at`; then seal "
                     "the batch")
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]
    expires_at: Timestamp
    format: ArchiveFormat
    max_bytes: int = Field(description="The largest archive accepted (`ARCHIVE_MAX_MB`)")
    max_items: int = Field(description="The most rows one archive may have (`ARCHIVE_MAX_ITEMS`)")


class BatchFileOut(ResponseModel):
    url: Url = Field(description="GET the NDJSON file here before `expires_at` (presigned)")
    expires_at: Timestamp
    lines: int = Field(description="Lines in the file: one per item (output) or per refused row (errors)")
    partial: bool = Field(
        description="True unless the batch is `completed`: it is still open or sealed (more lines to come), or "
        "it was canceled or expired (some rows never became results)"
    )
