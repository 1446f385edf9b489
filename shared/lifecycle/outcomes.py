"""What follows a final status: the event, the report request, batch completion.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from functools import partial

from celery import Celery
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import after_commit
from shared.events import NewEvent, in_context, record_events
from shared.jobs import enqueue_report
from shared.lifecycle.batches import complete_batch_if_done
from shared.lifecycle.views import event_data
from shared.tables import Analysis, AnalysisStatus
from shared.tracing import within


def on_final(session: Session, celery: Celery | None, settings: Settings, analysis: Analysis) -> None:
    on_final_many(session, celery, settings, [(analysis, None)])


def on_final_many(
    session: Session, celery: Celery | None, settings: Settings,
    finals: Sequence[tuple[Analysis, contextvars.Context | None]],
) -> None:
    """``on_final`` for several jobs: their events in one statement, each batch they belong to
    checked once. Each job's event continues its trace, and its wake-ups carry its log ids, from
    its ``context`` (None: the caller's)."""
    record_events(session, celery, [
        NewEvent(
            tenant_id=analysis.tenant_id,
            type=f"analysis.{analysis.status}",
            data=event_data(settings, analysis),
            dedupe_key=f"analysis.{analysis.status}:{analysis.id}",
            # The job's trace, whoever ends it (issue 25): its current span where that is the job's.
            traceparent=in_context(context, partial(within, analysis.traceparent)),
            context=context,
        )
        for analysis, context in finals
    ])
    if celery is not None:
        for analysis, context in finals:
            if analysis.status != AnalysisStatus.canceled.value:
                in_context(context, partial(after_commit, session, partial(enqueue_report, celery, analysis.id)))
    # Sorted: two passes finishing jobs of the same batches lock the batch rows in one order.
    for batch_id in sorted({analysis.batch_id for analysis, _ in finals if analysis.batch_id is not None}):
        complete_batch_if_done(session, celery, settings, batch_id)
