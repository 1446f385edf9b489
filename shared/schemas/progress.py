"""The events of the live progress streams (issue 25): ``GET /v1/analyses/{id}/events`` and
``GET /v1/batches/{id}/events``, Server-Sent Events whose ``data`` is one of these as JSON."""

from __future__ import annotations

import uuid

from pydantic import Field

from shared.schemas.batches import BatchOut
from shared.schemas.common import AnalysisStatusName, ResponseModel, Stage, Timestamp


class AnalysisStateEvent(ResponseModel):
    """``event: state``: one state change of the analysis, in the order they happened; its SSE
    ``id`` is where a reconnecting client resumes (``Last-Event-ID``)."""

    analysis_id: uuid.UUID
    status: AnalysisStatusName
    stage: Stage | None = Field(
        description="While `processing`: `segmentation` (Gate 1), `classification` (Gate 2), `reporting` "
        "(findings, overlay and result being written)"
    )
    at: Timestamp = Field(description="When the change was committed")
    final: bool = Field(description="The last event: the stream ends after it; read the result with GET")


class BatchProgressEvent(BatchOut):
    """``event: progress``: the batch as ``GET /v1/batches/{id}`` shows it (counts, state, ETA),
    sent whenever its counts or state changed."""

    final: bool = Field(description="The batch ended (completed, canceled or expired): the stream ends after it")
