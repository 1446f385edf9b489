"""The tenant's PACS destination (issue 23; docs/DICOM.md "PACS (DICOMweb)"): a DICOMweb
server that every analysis' DICOM objects (Segmentation, TID 1500 SR, Encapsulated PDF) are
stored to by STOW-RS."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, UrlConstraints

from shared.schemas.common import ResponseModel, Timestamp, Url
from shared.schemas.webhooks import DeliveryOut

DicomwebUrl = Annotated[HttpUrl, UrlConstraints(max_length=2048)]
AuthType = Literal["none", "basic", "bearer"]


class DicomwebAuthNone(BaseModel):
    """No credentials (a PACS reached over a network that authenticates by other means)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["none"]


class DicomwebAuthBasic(BaseModel):
    """HTTP Basic authentication (RFC 7617)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["basic"]
    # RFC 7617: the user-id holds no colon; neither holds control characters.
    username: str = Field(min_length=1, max_length=200, pattern=r"^[^:\x00-\x1f\x7f]+$",
                          description="The PACS account (shown back)")
    password: str = Field(min_length=1, max_length=1000, pattern=r"^[^\x00-\x1f\x7f]+$",
                          description="Stored encrypted, never shown back")


class DicomwebAuthBearer(BaseModel):
    """A bearer token (RFC 6750), sent as it is on every request."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["bearer"]
    token: str = Field(min_length=1, max_length=4096, pattern=r"^[\x21-\x7e]+$",
                       description="Stored encrypted, never shown back")


DicomwebAuth = Annotated[
    DicomwebAuthNone | DicomwebAuthBasic | DicomwebAuthBearer, Field(discriminator="type")
]


class DicomwebDestinationIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://pacs.example.org/dicom-web",
                    "auth": {"type": "basic", "username": "dermasentinel", "password": "…"},
                    "enabled": True,
                }
            ]
        },
    )

    url: DicomwebUrl = Field(description="The DICOMweb service's base URL (its STOW-RS endpoint is `{url}/studies`); "
                             "no credentials, query or fragment in it")
    auth: DicomwebAuth | None = Field(
        default=None,
        description="How DermaSentinel authenticates to the PACS: `none`, `basic` {username, password} or `bearer` "
        "{token}. Stored encrypted; the password and token are never shown again. Left out on the first PUT: "
        "`none`; left out on a later PUT, the stored credentials stay",
    )
    enabled: bool = Field(default=True, strict=True, description="Whether analyses are stored to the PACS")


class DicomwebAuthOut(ResponseModel):
    type: AuthType
    username: str | None = Field(default=None, description="The account of `basic` authentication (never the "
                                 "password; a bearer token is never shown)")


class DicomwebDestinationOut(ResponseModel):
    id: uuid.UUID
    url: Url
    auth: DicomwebAuthOut
    events: list[str] = Field(description="The events that store objects: `analysis.report_ready`")
    enabled: bool
    disabled_reason: str | None
    failing_since: Timestamp | None
    created_at: Timestamp
    last_delivery: DeliveryOut | None = Field(description="The most recent store, with every attempt")
