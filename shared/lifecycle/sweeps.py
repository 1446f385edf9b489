"""Queries the sweeper runs: stale and orphaned claims, due retries, missing reports.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.lifecycle.claims import CLAIM_COLUMNS, Claim, claimable
from shared.tables import Analysis, AnalysisStatus


def ask_again(session: Session, column: str, requested_before: datetime, limit: int) -> list[uuid.UUID]:
    """Ids of up to ``limit`` rows whose ``column`` (a time something was asked for) is set and
    before ``requested_before``, oldest first, locked (skipping locked rows); sets it to now."""
    requested_at = getattr(Analysis, column)
    ids = list(
        session.execute(
            select(Analysis.id)
            .where(requested_at.is_not(None), requested_at < requested_before)
            .order_by(requested_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if ids:
        session.execute(
            update(Analysis)
            .where(Analysis.id.in_(ids))
            .values({column: utcnow()})
            .execution_options(synchronize_session=False)
        )
    return ids


def stale_claims(session: Session, heartbeat_before: datetime, limit: int = 500) -> list[Claim]:
    rows = session.execute(
        select(*CLAIM_COLUMNS)
        .where(Analysis.status == AnalysisStatus.processing.value, Analysis.heartbeat_at < heartbeat_before)
        .limit(limit)
    ).all()
    return [Claim(*row) for row in rows]


def orphaned_claims(
    session: Session, live_workers: list[str], heartbeat_before: datetime, limit: int = 500
) -> list[Claim]:
    """Jobs held by a worker process that no longer reports in (killed, OOM, host gone):
    found in seconds instead of after ``STUCK_AFTER_SECONDS``."""
    rows = session.execute(
        select(*CLAIM_COLUMNS)
        .where(
            Analysis.status == AnalysisStatus.processing.value,
            Analysis.claimed_by.is_not(None),
            Analysis.claimed_by.notin_(live_workers) if live_workers else Analysis.claimed_by.is_not(None),
            Analysis.heartbeat_at < heartbeat_before,
        )
        .limit(limit)
    ).all()
    return [Claim(*row) for row in rows]


def due_retries(session: Session, now: datetime, limit: int) -> list[Analysis]:
    """Jobs whose backoff after an infrastructure error has ended and that nobody woke yet."""
    return list(
        session.execute(
            select(Analysis)
            .where(
                Analysis.status == AnalysisStatus.queued.value,
                Analysis.not_before.is_not(None),
                Analysis.not_before <= now,
                Analysis.enqueued_at < Analysis.not_before,
            )
            .order_by(Analysis.not_before)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )


def missing_reports(session: Session, requested_before: datetime, limit: int) -> list[uuid.UUID]:
    """Final analyses whose report was asked for before ``requested_before`` and has not
    appeared (its wake-up was lost, or its worker died); marks them asked for again now."""
    return ask_again(session, "report_requested_at", requested_before, limit)


def report_settled(session: Session, analysis_id: uuid.UUID) -> None:
    """The report exists (or is not needed): the sweeper stops asking for it."""
    session.execute(
        update(Analysis)
        .where(Analysis.id == analysis_id, Analysis.report_requested_at.is_not(None))
        .values(report_requested_at=None)
        .execution_options(synchronize_session=False)
    )


def waiting_since(session: Session, priority: str, enqueued_before: datetime, limit: int) -> list[Analysis]:
    now = utcnow()
    return list(
        session.execute(
            select(Analysis)
            .where(
                claimable(now),
                Analysis.priority == priority,
                Analysis.enqueued_at < enqueued_before,
            )
            .order_by(Analysis.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )


def end_transactions_of(session: Session, workers: set[str], idle_seconds: float = 5.0) -> int:
    """Issue 26: end the transactions left open by these worker processes (pool processes the
    kernel shows as stopped), idle for at least ``idle_seconds``. A stopped process's open
    transaction keeps its row locks until the server's idle-in-transaction timeout (10 min
    for workers): the job it held could not be released, and the sweeper's release waited on
    the lock, every other sweep duty with it. Their connections are named for the worker
    (``shared.db``); the server rolls the transaction back. Returns how many were ended."""
    if not workers:
        return 0
    rows = session.execute(
        text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name = ANY(:names) "
            "AND state IN ('idle in transaction', 'idle in transaction (aborted)') "
            "AND state_change < now() - make_interval(secs => :idle)"
        ),
        {"names": sorted(w[:63] for w in workers), "idle": idle_seconds},
    ).all()
    return sum(1 for (ended,) in rows if ended)
