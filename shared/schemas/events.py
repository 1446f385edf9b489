"""The event payloads DermaSentinel POSTs to webhook endpoints."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import (
    Field,
)

from shared.clinical.disposition import Disposition
from shared.schemas.analyses import AnalysisLinks
from shared.schemas.batches import DispositionCounts, FinalBatchState, StatusCounts
from shared.schemas.common import (
    AnalysisStatusName,
    CancelReason,
    Diagnosis,
    ResponseModel,
    RiskBand,
    Timestamp,
    Url,
    WeightsStatus,
)
from shared.schemas.monitoring import ModelDriftData

# ---------------------------------------------------------------- webhook events
# Bodies the API POSTs to registered endpoints (Standard Webhooks): ``{type, timestamp, data}``.


class EventResultSummary(ResponseModel):
    diagnosis: Diagnosis
    probability: float
    uncertainty: float
    risk_band: RiskBand
    disposition: Disposition | None = Field(
        description="What should happen next (`result.disposition`): never `routine` or `urgent_referral` from "
        "weights that are not `trained`. Null only for results stored before dispositions existed"
    )
    disposition_reasons: list[str] = Field(description="Why: stable codes (`result.disposition_reasons`)")


class CodeOnly(ResponseModel):
    code: str


class EventRejection(CodeOnly):
    advice: str = Field(description="What to do about it (retake advice), in the report's wording")


class AnalysisEventData(ResponseModel):
    id: uuid.UUID
    status: AnalysisStatusName
    external_id: str | None
    batch_id: uuid.UUID | None
    links: AnalysisLinks
    patient_reference: str | None = Field(
        default=None, description="The submission's `patient_reference`, when it gave one (issue 23)"
    )
    result: EventResultSummary | None = Field(default=None, description="analysis.succeeded and its report_ready")
    weights: WeightsStatus | None = Field(default=None, description="Present with a result: read it before the result")
    rejection: EventRejection | None = None
    error: CodeOnly | None = None
    reason: CancelReason | None = Field(default=None, description="analysis.canceled: why")


class BatchEventLinks(ResponseModel):
    self: Url
    results: Url


class BatchCompletedData(ResponseModel):
    id: uuid.UUID
    name: str
    external_id: str | None
    state: FinalBatchState = Field(
        description="How the batch ended: `completed`, `canceled` (by `POST …/cancel`) or `expired` (its "
        "deadline canceled unfinished items)"
    )
    counts: StatusCounts
    weights: dict[str, int] = Field(description="Results per weights status")
    weights_warning: str | None = Field(description="Set when any result came from weights that are not `trained`")
    dispositions: DispositionCounts = Field(description="Succeeded results per disposition")
    links: BatchEventLinks


class AnalysisEvent(ResponseModel):
    type: Literal[
        "analysis.succeeded", "analysis.rejected", "analysis.failed", "analysis.canceled", "analysis.report_ready"
    ]
    timestamp: Timestamp
    data: AnalysisEventData


class BatchCompletedEvent(ResponseModel):
    type: Literal["batch.completed"]
    timestamp: Timestamp
    data: BatchCompletedData


class WebhookTestData(ResponseModel):
    endpoint_id: uuid.UUID
    message: str


class WebhookTestEvent(ResponseModel):
    type: Literal["webhook.test"]
    timestamp: Timestamp
    data: WebhookTestData


class ModelDriftEvent(ResponseModel):
    """``model.drift_detected`` (issue 24; docs/MONITORING.md)."""

    type: Literal["model.drift_detected"]
    timestamp: Timestamp
    data: ModelDriftData
