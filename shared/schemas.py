"""Request schemas shared by the API and the client commands."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

Sex = Literal["male", "female", "unknown"]
Site = Literal[
    "head/neck",
    "upper extremity",
    "lower extremity",
    "torso",
    "palms/soles",
    "oral/genital",
    "unknown",
]
SEXES: tuple[str, ...] = Sex.__args__
SITES: tuple[str, ...] = Site.__args__
# Not starting with "-": a spreadsheet would read "-2+3" as a formula (CSV injection).
EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9._:/][A-Za-z0-9._:/\-]{0,199}$"


class AnalysisInputs(BaseModel):
    """The form fields of ``POST /v1/analyses`` (the image travels beside them)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    age: int | None = Field(default=None, ge=0, le=120)
    sex: Sex = "unknown"
    site: Site = "unknown"
    pixel_spacing_mm: float | None = Field(default=None, gt=0, le=10)
    external_id: str | None = Field(default=None, pattern=EXTERNAL_ID_PATTERN)
    batch_id: uuid.UUID | None = None
    priority: Literal["interactive", "bulk"] = "interactive"


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    agrees: bool
    final_diagnosis: str | None = Field(default=None, max_length=200)
    histopathology: str | None = Field(default=None, max_length=500)
    notes: str | None = Field(default=None, max_length=4000)


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    external_id: str | None = Field(default=None, pattern=EXTERNAL_ID_PATTERN)


class WebhookEndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: HttpUrl
    events: list[str] | None = None
    description: str | None = Field(default=None, max_length=500)


class WebhookEndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    events: list[str] | None = None
    description: str | None = Field(default=None, max_length=500)
