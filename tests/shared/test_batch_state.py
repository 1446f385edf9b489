"""Issue 25: a batch's state says how it ended: `canceled` and `expired` apart from `completed`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.lifecycle import batch_state
from shared.schemas.batches import BatchState, FinalBatchState
from shared.schemas.events import BatchCompletedData
from shared.tables import Batch

T0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def batch(**moments: datetime | None) -> Batch:
    values = {"sealed_at": None, "completed_at": None, "canceled_at": None, "deadline_at": None, **moments}
    return Batch(name="b", created_at=T0, **values)


def test_open_and_sealed_batches():
    assert batch_state(batch(), 0) == "open"
    assert batch_state(batch(sealed_at=T0), 0) == "sealed"
    assert batch_state(batch(sealed_at=T0, canceled_at=T0), 2) == "sealed", "until every item is final"


def test_how_a_batch_ended():
    done = T0 + timedelta(minutes=5)
    assert batch_state(batch(sealed_at=T0, completed_at=done), 0) == "completed"
    assert batch_state(batch(sealed_at=T0, completed_at=done, canceled_at=T0 + timedelta(minutes=4)), 3) == "canceled"
    deadline = T0 + timedelta(minutes=2)
    assert batch_state(batch(sealed_at=T0, completed_at=done, deadline_at=deadline), 1) == "expired"
    assert batch_state(batch(sealed_at=T0, completed_at=done, deadline_at=deadline), 0) == "completed", (
        "nothing was left for the deadline to cancel"
    )
    assert batch_state(batch(sealed_at=T0, completed_at=T0 + timedelta(minutes=1), deadline_at=deadline), 1) == (
        "completed"), "finished before its deadline: a canceled item was canceled on request"
    assert batch_state(batch(sealed_at=T0, completed_at=done, canceled_at=done + timedelta(hours=1)), 0) == (
        "completed"), "a cancel after the end changed nothing"


def test_the_schemas_name_every_state():
    from typing import get_args

    assert set(get_args(BatchState)) == {"open", "sealed", "completed", "canceled", "expired"}
    assert set(get_args(FinalBatchState)) == {"completed", "canceled", "expired"}
    assert set(BatchCompletedData.model_json_schema()["properties"]["state"]["enum"]) == set(get_args(FinalBatchState))
