"""Request schemas shared by the API and the client commands."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, HttpUrl

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


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
MIN_CANCEL_AFTER_SECONDS = 5.0


def parse_duration(value: object) -> float:
    """Seconds from ``Cancel-After`` syntax, as Replicate takes it: ``90s``, ``5m``,
    ``1h30m``; a bare number is seconds. At least 5 seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like 90s, 5m or 1h30m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.match(text)
            if not text or match is None:
                raise ValueError(f"{value!r} is not a duration like 90s, 5m or 1h30m") from None
            hours, minutes, secs = match.groups()
            seconds = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
    if not seconds >= MIN_CANCEL_AFTER_SECONDS:
        raise ValueError(f"must be at least {MIN_CANCEL_AFTER_SECONDS:g} seconds")
    return seconds


CancelAfter = Annotated[float, BeforeValidator(parse_duration)]


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
    # Items still unfinished this long after the batch was created end canceled (expired).
    cancel_after: CancelAfter | None = None


class UploadIn(BaseModel):
    """``POST /v1/uploads``: the type of the image that will be PUT."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    content_type: Literal["image/jpeg", "image/png"] = "image/jpeg"


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
