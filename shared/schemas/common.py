"""Names and types every domain's schemas use: the input vocabularies, durations, timestamps
and the problem document."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
)

# The input vocabularies are shared.clinical.vocabulary's (one list for API, CLI, training, model).
from shared.clinical.vocabulary import SEXES as SEXES
from shared.clinical.vocabulary import SITES as SITES
from shared.clinical.vocabulary import Sex as Sex
from shared.clinical.vocabulary import Site as Site

# Not starting with "-": a spreadsheet would read "-2+3" as a formula (CSV injection). An
# analysis' external id holds no path separator (issue 25: "../../etc/passwd" was accepted and
# exports name files after it); only printable ASCII letters, digits and . _ : - are allowed.
EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9._:][A-Za-z0-9._:\-]{0,199}$"
EXTERNAL_ID_DESCRIPTION = (
    "Your reference for the analysis: letters, digits and . _ : - (no / or \\, no spaces or control characters), "
    "at most 200, not starting with -"
)
# A batch's reference may keep its slash ("ward-7/2026-11"): it never names a file.
BATCH_EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9._:/][A-Za-z0-9._:/\-]{0,199}$"
# A plausible pixel spacing of a skin photo (dermoscopy to a wide clinical shot), mm per pixel.
PIXEL_SPACING_MIN_MM = 0.001
PIXEL_SPACING_MAX_MM = 10.0


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


# The default MAX_CANCEL_AFTER_SECONDS (shared.config); an operator may lower it.
DOCUMENTED_MAX_CANCEL_AFTER = 30 * 24 * 3600
CANCEL_AFTER_SCHEMA = {
    "type": "number",
    "minimum": MIN_CANCEL_AFTER_SECONDS,
    "maximum": DOCUMENTED_MAX_CANCEL_AFTER,
    "description": "Deadline in seconds (at least 5, at most MAX_CANCEL_AFTER_SECONDS, 30 days by default); "
    "a duration string like 90s, 5m or 1h30m is accepted too",
}
# Documented as seconds; ``Cancel-After`` syntax is accepted as well (parse_duration).
def _within_documented_max(seconds: float) -> float:
    # The schema's bound; a lower MAX_CANCEL_AFTER_SECONDS is the route's to enforce.
    if seconds > DOCUMENTED_MAX_CANCEL_AFTER:
        raise ValueError(f"must be at most {DOCUMENTED_MAX_CANCEL_AFTER} seconds")
    return seconds


CancelAfter = Annotated[
    float, BeforeValidator(parse_duration), AfterValidator(_within_documented_max), WithJsonSchema(CANCEL_AFTER_SCHEMA)
]


AnalysisStatusName = Literal["queued", "processing", "succeeded", "rejected", "failed", "canceled"]
Stage = Literal["segmentation", "classification", "reporting"]
Priority = Literal["interactive", "bulk"]
Diagnosis = Literal["melanoma", "benign"]
RiskBand = Literal["low", "medium", "high"]
WeightsStatus = Literal["trained", "synthetic", "untrained"]
CancelReason = Literal["requested", "batch_canceled", "expired"]
# The values of shared.models.DeliveryStatus (tests/shared/test_schemas.py checks they agree).
DeliveryStatusName = Literal["pending", "delivered", "failed", "skipped"]

# ISO 8601 in UTC with a ``Z``, exactly as the API has always written it (kept a string so the
# text on the wire never changes).
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"}, examples=["2026-11-28T03:12:00.123456Z"])]
Url = Annotated[str, Field(json_schema_extra={"format": "uri"})]


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class FieldError(ResponseModel):
    field: str
    message: str


class ProblemDetails(ResponseModel):
    """RFC 7807 ``application/problem+json``: every error the API answers."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "https://dermasentinel.dev/problems/not_found",
                    "title": "Not found",
                    "status": 404,
                    "detail": "no analysis with id '0b6f…'",
                    "instance": "/v1/analyses/0b6f…",
                }
            ]
        },
    )

    type: Url = Field(description="`https://dermasentinel.dev/problems/<code>`: the stable, machine-readable code")
    title: str
    status: int = Field(ge=100, le=599)
    detail: str = Field(description="What was wrong and what to do, for people")
    instance: str = Field(description="The request path")
    errors: list[FieldError] | None = Field(default=None, description="One entry per invalid field (422)")
