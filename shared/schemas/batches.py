"""Batches, their triage results and counts."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from shared.clinical.disposition import Disposition
from shared.schemas.common import (
    BATCH_EXTERNAL_ID_PATTERN,
    AnalysisStatusName,
    CancelAfter,
    Diagnosis,
    ResponseModel,
    RiskBand,
    Timestamp,
    Url,
    WeightsStatus,
)


class BatchIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"name": "clinic backlog 2026-11", "external_id": "ward-7/2026-11",
                                         "cancel_after": 86400}]},
    )

    name: str = Field(min_length=1, max_length=200)
    external_id: str | None = Field(default=None, pattern=BATCH_EXTERNAL_ID_PATTERN)
    # Items still unfinished this long after the batch was created end canceled (expired).
    cancel_after: CancelAfter | None = None


# ---------------------------------------------------------------- batches

BatchState = Literal["open", "sealed", "completed", "canceled", "expired"]
# Issue 25: a batch that ended by its cancel, or by its deadline, is not "completed".
FinalBatchState = Literal["completed", "canceled", "expired"]
BATCH_STATE_DESCRIPTION = (
    "`open` (takes items), `sealed` (closed, items still running), or, once sealed and every item is "
    "final (`batch.completed` was emitted): `completed`, `canceled` (ended by `POST …/cancel`: its unfinished "
    "items were canceled) or `expired` (its `cancel_after` deadline canceled unfinished items)"
)


class StatusCounts(ResponseModel):
    queued: int = 0
    processing: int = 0
    succeeded: int = 0
    rejected: int = 0
    failed: int = 0
    canceled: int = 0


class DispositionCounts(ResponseModel):
    """Succeeded results per disposition, as each result shows it (`result.disposition`): results
    from weights that are not `trained` count as `clinician_review`. Results stored before
    dispositions existed (trained weights) have none and are in no count."""

    urgent_referral: int
    clinician_review: int
    routine: int


class BatchLinks(ResponseModel):
    self: Url
    seal: Url
    cancel: Url
    results: Url


class BatchSummary(ResponseModel):
    id: uuid.UUID
    name: str
    external_id: str | None
    state: BatchState = Field(description=BATCH_STATE_DESCRIPTION)
    created_at: Timestamp
    sealed_at: Timestamp | None
    completed_at: Timestamp | None
    deadline_at: Timestamp | None
    canceled_at: Timestamp | None
    counts: StatusCounts
    total: int
    links: BatchLinks


class BatchOut(BatchSummary):
    """A batch with its progress."""

    dispositions: DispositionCounts = Field(description="Succeeded results per disposition")
    done: int
    percent_done: float
    throughput_per_minute: float | None
    eta_seconds: float | None
    eta_at: Timestamp | None


class BatchCanceled(BatchOut):
    canceled_now: int = Field(description="Items this call canceled (0 on a repeat)")


class BatchPage(ResponseModel):
    data: list[BatchSummary]
    next_cursor: str | None


class TriageItem(ResponseModel):
    rank: int
    analysis_id: uuid.UUID
    external_id: str | None
    status: AnalysisStatusName
    weights: WeightsStatus | None = Field(description="Anything but `trained`: the risk and diagnosis mean nothing")
    risk_band: RiskBand | None
    probability: float | None
    uncertainty: float | None
    needs_review: bool
    review_reason: str | None = Field(description="`;`-separated codes")
    diagnosis: Diagnosis | None
    skin_group: str | None
    ita_degrees: float | None
    bias_warning: bool | None
    rejection_code: str | None
    rejection_detail: str | None
    retake_advice: str | None
    error_code: str | None
    error_detail: str | None
    age: int | None
    sex: str | None
    site: str | None
    completed_at: Timestamp | None
    disposition: Disposition | None = Field(
        description="What should happen next (`result.disposition`); the list is grouped by it: `urgent_referral`, "
        "`clinician_review`, `routine`, then items without one. Weights that are not `trained` always give "
        "`clinician_review`. Null without a result, and for results stored before dispositions existed"
    )
    disposition_reasons: str | None = Field(description="Why (`result.disposition_reasons`), `;`-separated codes")


class EquityRow(ResponseModel):
    skin_group: str
    items: int
    high_risk: int
    high_risk_share: float
    suspicious: int
    suspicious_share: float
    needs_review: int
    bias_warning: bool


class TriageSummaryOut(ResponseModel):
    counts: StatusCounts
    total: int
    needs_review: int
    retake: dict[str, int] = Field(description="Rejections per code")
    review_rule: str
    equity: list[EquityRow]
    weights: dict[str, int] = Field(description="Results per weights status")
    weights_warning: str | None = Field(description="Set when any result came from weights that are not `trained`")
    dispositions: DispositionCounts = Field(description="Succeeded results per disposition")


class BatchResults(ResponseModel):
    batch: BatchOut
    items: list[TriageItem]
    summary: TriageSummaryOut
