"""The outbox: events are rows written in the same transaction as the change they report.

A ``webhooks``-queue task fans each event out to the tenant's endpoints once the
transaction commits; the periodic dispatcher picks up any whose wake-up was lost.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import get_args

from celery import Celery
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.db import after_commit
from shared.jobs import enqueue_event_dispatch
from shared.schemas import AnalysisEventData, BatchCompletedData, EventType, ModelDriftData, WebhookTestData
from shared.tables import Event
from shared.tracing import current_traceparent

# The event types as the OpenAPI document declares them (one list, in shared/schemas/webhooks.py).
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
TEST_EVENT = "webhook.test"
# The ``data`` of each event the API sends, as the OpenAPI document's webhooks declare it.
EventData = AnalysisEventData | BatchCompletedData | WebhookTestData | ModelDriftData


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
    event_id = new_event_id()
    payload = {
        "type": type,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": data.model_dump(mode="json", exclude_unset=True),
    }
    statement = (
        insert(Event)
        .values(
            id=event_id,
            tenant_id=tenant_id,
            type=type,
            dedupe_key=dedupe_key,
            payload=payload,
            only_endpoint_id=only_endpoint_id,
            # The trace its deliveries continue: the given one, else the current span's (issue 25).
            traceparent=traceparent or current_traceparent(),
        )
        .on_conflict_do_nothing(index_elements=[Event.dedupe_key])
        .returning(Event.id)
    )
    inserted = session.execute(statement).scalar_one_or_none()
    if inserted is None:
        return None
    if celery is not None:
        after_commit(session, lambda: enqueue_event_dispatch(celery, event_id))
    return event_id


def undispatched_event_ids(session: Session, older_than: datetime, limit: int = 500) -> list[str]:
    rows = session.execute(
        select(Event.id)
        .where(Event.dispatched_at.is_(None), Event.created_at < older_than)
        .order_by(Event.created_at)
        .limit(limit)
    )
    return list(rows.scalars())
