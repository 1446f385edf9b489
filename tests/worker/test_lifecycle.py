"""Postgres is the source of truth: fencing, the sweeper, no poison loops, no lost jobs."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from shared import lifecycle
from shared.clock import utcnow
from shared.db import session_scope
from shared.storage import IMAGES, image_key
from shared.tables import Analysis, AnalysisStatus, Event
from worker.maintenance import broker_queue_length, sweep
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def _queued_row(context, tenant_id, *, age: timedelta = timedelta(0)) -> uuid.UUID:
    """A committed, queued analysis whose wake-up message was never sent (as after a crash
    between commit and publish), enqueued ``age`` ago. The session's own beat sweeps every
    second: it re-sends the wake-up of a row older than RESEND_AFTER_SECONDS and releases a
    claim whose heartbeat is older than STUCK_AFTER_SECONDS, so only the tests about those
    rules age their rows."""
    analysis_id = uuid.uuid4()
    key = image_key(tenant_id, analysis_id, "jpg")
    data = encode_jpeg(make_lesion(seed=analysis_id.int % 1000, size=(120, 160), radius_frac=0.2).image)
    context.store.put(IMAGES, key, data, "image/jpeg")
    with session_scope(context.session_factory) as session:
        session.add(Analysis(
            id=analysis_id, tenant_id=tenant_id, status="queued", attempt=0, image_key=key,
            image_sha256="0" * 64, image_content_type="image/jpeg", image_width=160, image_height=120,
            enqueued_at=utcnow() - age, created_at=utcnow() - age,
        ))
    return analysis_id


def _row(context, analysis_id) -> Analysis:
    with context.session_factory() as session:
        return session.get(Analysis, analysis_id)


def _age_heartbeat(context, analysis_id, seconds=3600):
    with session_scope(context.session_factory) as session:
        session.execute(update(Analysis).where(Analysis.id == analysis_id)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def test_a_stale_worker_cannot_overwrite_a_newer_attempt(context, tenant_key):
    analysis_id = _queued_row(context, tenant_key[0])
    settings = context.settings
    with session_scope(context.session_factory) as session:
        (old,) = list(lifecycle.claim_batch(session, analysis_id, 1))
    assert old.attempt == 1
    with session_scope(context.session_factory) as session:
        assert lifecycle.release_claim(session, None, settings, old, reason="swept") == "queued"
    with session_scope(context.session_factory) as session:
        (new,) = lifecycle.claim_batch(session, analysis_id, 1)
    assert new.attempt == 2

    with session_scope(context.session_factory) as session:
        stale = lifecycle.finish(session, None, settings, old, status=AnalysisStatus.failed,
                                 error={"code": "x", "detail": "stale"})
    assert stale is False
    assert _row(context, analysis_id).status == "processing"

    with session_scope(context.session_factory) as session:
        assert lifecycle.finish(session, None, settings, new, status=AnalysisStatus.rejected,
                                rejection={"code": "blurry", "detail": "d"})
    row = _row(context, analysis_id)
    assert (row.status, row.attempt, row.rejection["code"]) == ("rejected", 2, "blurry")


def test_canceled_job_is_not_overwritten_by_its_worker(context, tenant_key):
    analysis_id = _queued_row(context, tenant_key[0])
    with session_scope(context.session_factory) as session:
        (claim,) = lifecycle.claim_batch(session, analysis_id, 1)
    with session_scope(context.session_factory) as session:
        assert lifecycle.cancel(session, None, context.settings, analysis_id) is not None
    with session_scope(context.session_factory) as session:
        assert not lifecycle.finish(session, None, context.settings, claim,
                                    status=AnalysisStatus.succeeded, result={"probability": 0.1})
    assert _row(context, analysis_id).status == "canceled"


def test_sweeper_fails_a_job_after_max_attempts_instead_of_looping(context, tenant_key, wait):
    # Fresh heartbeats until the last attempt: nothing the session's beat would touch.
    analysis_id = _queued_row(context, tenant_key[0])
    settings = context.settings
    for attempt in range(1, settings.max_attempts + 1):
        with session_scope(context.session_factory) as session:
            claims = lifecycle.claim_batch(session, analysis_id, 1)
        assert [c.attempt for c in claims] == [attempt]
        if attempt == settings.max_attempts:
            _age_heartbeat(context, analysis_id)
        else:
            # What the sweeper does to a vanished worker's job, minus the wake-up message
            # (a live worker in this session would otherwise race the test for the claim).
            with session_scope(context.session_factory) as session:
                stale_claims = lifecycle.stale_claims(session, utcnow())
                (stale,) = [c for c in stale_claims if c.analysis_id == analysis_id]
                assert lifecycle.release_claim(session, None, settings, stale, reason="gone") == "queued"
    # The session's own beat sweeps every second and may get to the row first; either way
    # it is the sweeper that ends it (nothing else would).
    sweep(context)
    row = wait(lambda: (r := _row(context, analysis_id)).status != "queued" and r, timeout=10,
               message="the sweeper to end the job")
    assert row.status == "failed"
    assert row.error["code"] == "attempts_exhausted"
    assert f"{settings.max_attempts} attempts" in row.error["detail"]
    with context.session_factory() as session:
        events = session.execute(select(Event.type).where(Event.dedupe_key.like(f"%{analysis_id}"))).scalars().all()
    # One state event; the failure's short report (and its report_ready) may follow at any
    # moment from a reports worker, so only the state changes are counted here.
    assert [e for e in events if e != "analysis.report_ready"] == ["analysis.failed"]


def _lanes_drained(context) -> bool:
    return all(broker_queue_length(context, lane) == 0 for lane in ("analyze.interactive", "analyze.bulk"))


def test_lost_wake_up_is_resent_and_the_job_completes(context, tenant_key, worker, wait):
    wait(lambda: _lanes_drained(context), timeout=60, message="the worker to drain earlier messages")
    analysis_id = _queued_row(context, tenant_key[0], age=timedelta(hours=1))
    sweep(context)  # (or the session's beat, a moment earlier: the same sweeper)
    row = wait(lambda: (r := _row(context, analysis_id)).status == "succeeded" and r, timeout=120,
               message="the swept job to finish")
    assert row.attempt == 1


def test_job_of_a_vanished_worker_is_recovered(context, tenant_key, worker, wait):
    analysis_id = _queued_row(context, tenant_key[0])
    with session_scope(context.session_factory) as session:
        lifecycle.claim_batch(session, analysis_id, 1)  # claimed by a worker that then died
    _age_heartbeat(context, analysis_id)
    sweep(context)  # (or the session's beat, a moment earlier: the same sweeper)
    row = wait(lambda: (r := _row(context, analysis_id)).status == "succeeded" and r, timeout=120,
               message="the recovered job to finish")
    assert row.attempt == 2


def test_claims_take_interactive_before_bulk(context, tenant_key):
    # Uncommitted rows: invisible to the live worker, so nothing else can claim them.
    now = utcnow()
    with context.session_factory() as session:
        def row(priority, age_minutes):
            analysis = Analysis(
                id=uuid.uuid4(), tenant_id=tenant_key[0], status="queued", priority=priority, attempt=0,
                image_key="k", image_sha256="0" * 64, image_content_type="image/jpeg", image_width=1,
                image_height=1, created_at=now - timedelta(days=3650, minutes=age_minutes),
            )
            session.add(analysis)
            return analysis.id

        bulk = [row("bulk", 30 - i) for i in range(3)]
        urgent = row("interactive", 0)
        session.flush()
        # The own job, then the interactive one; a pass with an interactive job is not filled up
        # with bulk ones (issue 26: its result would wait for the whole pass).
        claims = lifecycle.claim_batch(session, bulk[2], 3)
        assert {c.analysis_id for c in claims} == {bulk[2], urgent}
        # With no interactive job queued, a pass is filled from the bulk lane, oldest first.
        assert {c.analysis_id for c in lifecycle.claim_batch(session, bulk[1], 2)} == {bulk[1], bulk[0]}
        session.rollback()


def test_a_pass_stage_update_moves_only_the_jobs_it_still_holds(context, tenant_key):
    # Uncommitted rows, as above. One statement for the whole pass (issue 27), fenced per job:
    # a job re-claimed elsewhere (newer attempt) or canceled keeps what its new owner set.
    now = utcnow()
    with context.session_factory() as session:
        ids = []
        for minutes in range(3):
            analysis = Analysis(
                id=uuid.uuid4(), tenant_id=tenant_key[0], status="queued", priority="interactive", attempt=0,
                image_key="k", image_sha256="0" * 64, image_content_type="image/jpeg", image_width=1,
                image_height=1, created_at=now - timedelta(days=3650, minutes=minutes),
            )
            session.add(analysis)
            ids.append(analysis.id)
        session.flush()
        claims = lifecycle.claim_batch(session, ids[0], 3)
        assert {c.analysis_id for c in claims} == set(ids)
        session.execute(update(Analysis).where(Analysis.id == ids[1]).values(attempt=Analysis.attempt + 1))
        session.execute(update(Analysis).where(Analysis.id == ids[2]).values(status="canceled"))
        lifecycle.set_stage(session, claims, "classification")
        stages = dict(session.execute(select(Analysis.id, Analysis.stage).where(Analysis.id.in_(ids))).all())
        assert stages == {ids[0]: "classification", ids[1]: "segmentation", ids[2]: "segmentation"}
        lifecycle.set_stage(session, [], "reporting")  # nothing to move: no statement
        session.rollback()


@pytest.fixture(autouse=True)
def _no_leftover_queued(context):
    yield
    with session_scope(context.session_factory) as session:
        session.execute(update(Analysis).where(Analysis.status.in_(["queued", "processing"]),
                                               Analysis.created_at < utcnow() - timedelta(minutes=30))
                        .values(status="canceled"))
