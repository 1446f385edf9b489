"""Direct uploads and API keys."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from shared.schemas.common import ResponseModel, Timestamp, Url
from shared.scopes import Scope

# The types an image may be PUT as; the ingest worker judges the content, as the API does.
UploadType = Literal["image/jpeg", "image/png", "application/dicom"]


class UploadIn(BaseModel):
    """``POST /v1/uploads``: the type of the image that will be PUT."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    content_type: UploadType = Field(
        default="image/jpeg",
        description="`application/dicom` for a DICOM image (issue 23; docs/DICOM.md): only its pixels are kept",
    )


# ---------------------------------------------------------------- keys, uploads


class ApiKeyOut(ResponseModel):
    id: uuid.UUID
    prefix: str
    label: str | None
    created_at: Timestamp
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None
    active: bool
    scopes: list[Scope] = Field(description="What the key may do (issue 22); a 403 names a missing one")


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The API key itself (`dsk_…`), shown only in this answer")


class ApiKeyList(ResponseModel):
    data: list[ApiKeyOut]


class UploadNext(ResponseModel):
    method: Literal["POST"]
    path: str
    body: dict[str, str]


class UploadOut(ResponseModel):
    id: uuid.UUID
    url: Url = Field(description="PUT the image here, with the `headers` given")
    method: Literal["PUT"]
    headers: dict[str, str]
    expires_at: Timestamp
    submit_before: Timestamp
    max_bytes: int
    content_type: UploadType
    next: UploadNext
