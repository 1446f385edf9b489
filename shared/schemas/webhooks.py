"""Webhook endpoints, per-request webhooks and their delivery log."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    UrlConstraints,
    WithJsonSchema,
)

from shared import json_limits
from shared.schemas.common import DeliveryStatusName, ResponseModel, Timestamp, Url

EventType = Literal[
    "analysis.succeeded",
    "analysis.rejected",
    "analysis.failed",
    "analysis.canceled",
    "analysis.report_ready",
    "batch.completed",
    "model.drift_detected",
]
# Documented as the event names (tests/api/test_openapi.py holds them equal to
# shared.events.EVENT_TYPES); checked by the service, whose 422 lists the choices.
EventFilter = Annotated[
    list[str],
    WithJsonSchema({"type": "array", "items": {"type": "string", "enum": list(get_args(EventType))}}),
]


AnalysisEventType = Literal[
    "analysis.succeeded",
    "analysis.rejected",
    "analysis.failed",
    "analysis.canceled",
    "analysis.report_ready",
]


def _event_list(value: object) -> object:
    """``webhook_events_filter`` as a list: a JSON array, or in a form a comma-separated
    string (``analysis.succeeded,analysis.rejected``) or a JSON array written as text."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json_limits.loads(text)
            except json_limits.JsonTooDeep as exc:
                raise ValueError(f"{exc}; send a flat JSON array of event names") from None
            except ValueError:
                raise ValueError("is not a JSON array of event names") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class RequestWebhookIn(BaseModel):
    """The per-request webhook fields of ``POST /v1/analyses`` (docs/API_CONTRACT.md)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    webhook_url: Annotated[HttpUrl, UrlConstraints(max_length=2048)] | None = Field(
        default=None,
        description="Where to POST this analysis' events, signed like a registered endpoint's with the answer's "
        "`webhook.secret`; the same address rules as registered endpoints (422)",
    )
    webhook_events_filter: Annotated[list[AnalysisEventType], BeforeValidator(_event_list)] | None = Field(
        default=None,
        description="Which of this analysis' events to send (all when omitted); in a form, comma-separated",
    )


class WebhookEndpointIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {"url": "https://ehr.example.org/hooks/dermasentinel",
                 "events": ["analysis.succeeded", "analysis.rejected"], "description": "EHR inbox"}
            ]
        },
    )

    url: HttpUrl
    events: EventFilter | None = Field(default=None, description="Event types to deliver; all when omitted")
    description: str | None = Field(default=None, max_length=500)


class WebhookEndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(default=None, strict=True)
    events: EventFilter | None = Field(default=None, description="Event types to deliver; all when omitted")
    description: str | None = Field(default=None, max_length=500)


# ======================================================================== responses
# What the API answers, typed once: the routes declare these as ``response_model``, the
# OpenAPI document is generated from them, and clients (the CLI, integrators) can parse with
# them. Response models allow keys they do not declare (``extra="allow"``): a field a service
# adds reaches clients instead of being silently dropped, and tests/api/test_openapi.py fails
# until it is declared here (docs/API_CONTRACT.md, Decisions).


# ---------------------------------------------------------------- webhooks


class WebhookEndpointOut(ResponseModel):
    id: uuid.UUID
    url: Url
    events: list[str] = Field(
        description="Every event type delivered to it: the filter chosen, or all types when none was chosen "
        "(such an endpoint also receives types added later)"
    )
    description: str | None
    enabled: bool
    disabled_reason: str | None
    failing_since: Timestamp | None
    created_at: Timestamp
    previous_secret_expires_at: Timestamp | None
    analysis_id: uuid.UUID | None = Field(
        default=None, description="Only on a per-request webhook (`webhook_url`): the one analysis it serves"
    )


class AnalysisWebhook(ResponseModel):
    """The per-request webhook of ``POST /v1/analyses`` (``webhook_url``)."""

    id: uuid.UUID = Field(description="A webhook endpoint of this analysis only: its deliveries are at "
                          "`/v1/webhook-endpoints/{id}/deliveries`")
    url: Url
    events: list[str] = Field(description="Every event type delivered: the filter chosen, or all of this "
                              "analysis' event types when none was chosen")
    secret: str = Field(description="The signing secret (`whsec_…`, Standard Webhooks); only in the answers to "
                        "the submission (and its idempotent replays)")


class WebhookEndpointWithSecret(WebhookEndpointOut):
    secret: str = Field(description="The signing secret (`whsec_…`), shown only in this answer")


class WebhookEndpointList(ResponseModel):
    data: list[WebhookEndpointOut]


class WebhookTestSent(ResponseModel):
    event_id: str


class DeliveryAttempt(ResponseModel):
    attempted_at: Timestamp
    status_code: int | None
    latency_ms: float | None
    error: str | None
    response_excerpt: str | None


class DeliveryOut(ResponseModel):
    id: uuid.UUID
    event_id: str
    status: DeliveryStatusName
    attempt_count: int
    next_attempt_at: Timestamp | None
    last_status_code: int | None
    last_error: str | None
    created_at: Timestamp
    delivered_at: Timestamp | None
    attempts: list[DeliveryAttempt]


class DeliveryList(ResponseModel):
    data: list[DeliveryOut]


class ResendAccepted(ResponseModel):
    id: uuid.UUID
    status: DeliveryStatusName
