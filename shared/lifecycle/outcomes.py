"""What follows a final status: the event, the report request, batch completion.
"""

from __future__ import annotations

from celery import Celery
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import after_commit
from shared.events import record_event
from shared.jobs import enqueue_report
from shared.lifecycle.batches import complete_batch_if_done
from shared.lifecycle.views import event_data
from shared.tables import Analysis, AnalysisStatus
from shared.tracing import within


def on_final(session: Session, celery: Celery | None, settings: Settings, analysis: Analysis) -> None:
    record_event(
        session,
        celery,
        tenant_id=analysis.tenant_id,
        type=f"analysis.{analysis.status}",
        data=event_data(settings, analysis),
        dedupe_key=f"analysis.{analysis.status}:{analysis.id}",
        traceparent=within(analysis.traceparent),  # the job's trace, whoever ends it (issue 25)
    )
    if analysis.status != AnalysisStatus.canceled.value and celery is not None:
        after_commit(session, lambda: enqueue_report(celery, analysis.id))
    if analysis.batch_id is not None:
        complete_batch_if_done(session, celery, settings, analysis.batch_id)
