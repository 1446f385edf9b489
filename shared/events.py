"""The outbox: events are rows written in the same transaction as the change they report.

A ``webhooks``-queue task fans each event out to the tenant's endpoints once the
transaction commits; the periodic dispatcher picks up any whose wake-up was lost.
"""

from __future__ import annotations

import contextvars
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar, get_args

from celery import Celery
from sqlalchemy import String, Table, Text, cast, select
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert
from sqlalchemy.orm import Session

from shared.db import RowsParameter, after_commit
from shared.jobs import enqueue_event_dispatch
from shared.schemas import AnalysisEventData, BatchCompletedData, EventType, ModelDriftData, WebhookTestData
from shared.tables import Event
from shared.tracing import current_traceparent

# The event types as the OpenAPI document declares them (one list, in shared/schemas/webhooks.py).
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
TEST_EVENT = "webhook.test"
# The ``data`` of each event the API sends, as the OpenAPI document's webhooks declare it.
EventData = AnalysisEventData | BatchCompletedData | WebhookTestData | ModelDriftData
_T = TypeVar("_T")


def new_event_id() -> str:
    return "msg_" + uuid.uuid4().hex


def record_event(
    session: Session,
    celery: Celery | None,
    *,
    tenant_id: uuid.UUID,
    type: str,
    data: EventData,
    dedupe_key: str | None = None,
    only_endpoint_id: uuid.UUID | None = None,
    traceparent: str | None = None,
) -> str | None:
    """Add an event to the outbox; returns its id, or None if ``dedupe_key`` was already used.
    ``data`` is typed so that what is sent is what the document declares; its unset optional
    parts (an analysis' ``result`` before there is one) are left out of the payload."""
    (event_id,) = record_events(session, celery, [NewEvent(
        tenant_id=tenant_id, type=type, data=data, dedupe_key=dedupe_key, only_endpoint_id=only_endpoint_id,
        traceparent=traceparent,
    )])
    return event_id


@dataclass(frozen=True)
class NewEvent:
    """An event to add (``record_event``'s arguments). ``context``: the one its dispatch is
    handed off from (its log ids, its trace), when not the caller's own: a pass that records
    several jobs' events in one statement sends each job's wake-up under that job's ids."""

    tenant_id: uuid.UUID
    type: str
    data: EventData
    dedupe_key: str | None = None
    only_endpoint_id: uuid.UUID | None = None
    traceparent: str | None = None
    context: contextvars.Context | None = None


# The events of ``record_events``, one row each; the payload as JSON text.
_NEW = RowsParameter(
    "new", id=String(), tenant_id=UUID(as_uuid=True), type=String(), dedupe_key=String(), payload=Text(),
    only_endpoint_id=UUID(as_uuid=True), traceparent=String(),
)
_EVENTS: Table = Event.__table__  # type: ignore[assignment]  # a mapped class's table is a Table
# On the table, not the mapped class: with its parameters given at execution, the ORM would take
# an INSERT of the class for a bulk insert of objects.
_INSERT = (
    insert(_EVENTS)
    .from_select(
        list(_NEW.columns),
        select(*(cast(_NEW[name], JSONB) if name == "payload" else _NEW[name] for name in _NEW.columns)),
    )
    .on_conflict_do_nothing(index_elements=[_EVENTS.c.dedupe_key])
    .returning(_EVENTS.c.id)
)


def record_events(session: Session, celery: Celery | None, events: Sequence[NewEvent]) -> list[str | None]:
    """Add events to the outbox in one statement (issue 27: a pass's outcomes, one INSERT
    instead of one per job); per event its id, or None where its ``dedupe_key`` was already
    used. Each event's trace is its ``traceparent``, else the span current where it is recorded
    (in its ``context``)."""
    if not events:
        return []
    timestamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    rows: list[dict[str, Any]] = [
        {
            "id": new_event_id(),
            "tenant_id": event.tenant_id,
            "type": event.type,
            "dedupe_key": event.dedupe_key,
            "payload": json.dumps({"type": event.type, "timestamp": timestamp,
                                   "data": event.data.model_dump(mode="json", exclude_unset=True)}),
            "only_endpoint_id": event.only_endpoint_id,
            # The trace its deliveries continue: the given one, else the current span's (issue 25).
            "traceparent": event.traceparent or in_context(event.context, current_traceparent),
        }
        for event in events
    ]
    inserted = set(session.execute(_INSERT, _NEW.parameters(rows)).scalars())
    ids: list[str | None] = []
    for event, row in zip(events, rows, strict=True):
        event_id = row["id"] if row["id"] in inserted else None
        ids.append(event_id)
        if event_id is not None and celery is not None:
            in_context(event.context, partial(after_commit, session, partial(enqueue_event_dispatch, celery, event_id)))
    return ids


def in_context(context: contextvars.Context | None, call: Callable[[], _T]) -> _T:
    """``call()`` in ``context`` (a copy of it: the same values, and what it sets stays there), or here."""
    return context.copy().run(call) if context is not None else call()


def undispatched_event_ids(session: Session, older_than: datetime, limit: int = 500) -> list[str]:
    rows = session.execute(
        select(Event.id)
        .where(Event.dispatched_at.is_(None), Event.created_at < older_than)
        .order_by(Event.created_at)
        .limit(limit)
    )
    return list(rows.scalars())
