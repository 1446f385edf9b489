"""Faults the system must survive by itself: infrastructure errors that are not the job's
fault, wake-ups lost between commit and publish, GPU pool processes that die or cannot
load their models. Real Postgres, Redis, S3 and Celery workers throughout."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import func, select, update

from devstack import child_env, free_port, start_worker
from shared import lifecycle
from shared.clock import utcnow
from shared.context import AppContext
from shared.db import session_scope
from shared.jobs import (
    GPU_WORKERS_READY,
    JobNotRun,
    broker_redis,
    enqueue_analysis,
    enqueue_report,
    forget_gpu_worker,
    gpu_worker_census,
    heartbeat_window,
    is_infrastructure_error,
    report_gpu_worker,
)
from shared.storage import IMAGES, image_key
from shared.tables import Analysis, AnalysisStatus, Event, Report
from tests.conftest import wait_for
from worker.analysis import release
from worker.maintenance import broker_queue_length, sweep
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def _queued_row(context, tenant_id) -> uuid.UUID:
    """A committed, queued analysis with a real image and no wake-up message. It sorts
    after everything else, so other tests' workers filling a batch take it last."""
    analysis_id = uuid.uuid4()
    key = image_key(tenant_id, analysis_id, "jpg")
    data = encode_jpeg(make_lesion(seed=analysis_id.int % 1000, size=(120, 160), radius_frac=0.2).image)
    context.store.put(IMAGES, key, data, "image/jpeg")
    with session_scope(context.session_factory) as session:
        session.add(Analysis(
            id=analysis_id, tenant_id=tenant_id, status="queued", attempt=0, image_key=key,
            image_sha256="0" * 64, image_content_type="image/jpeg", image_width=160, image_height=120,
            enqueued_at=utcnow(), created_at=utcnow() + timedelta(days=3650),
        ))
    return analysis_id


def _row(context, analysis_id) -> Analysis:
    with context.session_factory() as session:
        return session.get(Analysis, analysis_id)


def _claim_now(context, analysis_id) -> lifecycle.Claim:
    """Make the job due and claim it in one transaction, so no live worker can race us."""
    with session_scope(context.session_factory) as session:
        session.execute(update(Analysis).where(Analysis.id == analysis_id).values(not_before=None))
        (claim,) = lifecycle.claim_batch(session, analysis_id, 1)
    return claim


@pytest.fixture(scope="module")
def quiet(settings):
    """A database of its own (built by the migrations), its wake-ups on a Redis database no
    worker reads, and a tenant in it: the session's live workers claim queued rows of the
    shared database (a job these tests give back can be taken between two of their calls)."""
    from shared.migrate import scratch_database
    from shared.tenants import issue_key

    base = settings.broker_url.rsplit("/", 1)[0]
    with scratch_database(settings.database_url, "dsfaults") as url:
        ctx = AppContext(settings.model_copy(update={"broker_url": f"{base}/14", "database_url": url}))
        with session_scope(ctx.session_factory) as session:
            tenant, _ = issue_key(session, f"faults-{uuid.uuid4().hex[:8]}")
            tenant_id = tenant.id
        yield ctx, tenant_id
        ctx.close()


def _error_from(call) -> Exception:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("the call was expected to fail")


def _closed_port() -> int:
    return free_port()


def test_an_object_store_outage_spends_no_attempts_and_backs_off(quiet):
    context, tenant_id = quiet
    analysis_id = _queued_row(context, tenant_id)
    outage = AppContext(context.settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{_closed_port()}"}))
    settings = context.settings
    delays = []
    try:
        # Twice as many failed passes as the job has attempts: none of them may count.
        for n in range(1, 2 * settings.max_attempts + 1):
            claim = _claim_now(context, analysis_id)
            exc = _error_from(lambda claim=claim: outage.store.get(IMAGES, claim.image_key))
            release(context, [claim], exc)
            row = _row(context, analysis_id)
            assert (row.status, row.attempt, row.transient_retries) == ("queued", n, n)
            assert row.error is None
            delays.append((row.not_before - row.updated_at).total_seconds())
    finally:
        outage.close()
    # Doubling backoff (2, 4, 8 s ... with +-20% jitter), capped.
    assert delays[0] < delays[1] < delays[2]
    assert max(delays) <= settings.transient_backoff_max_seconds * 1.2
    # Not claimable before its backoff ends, even by its own message.
    with session_scope(context.session_factory) as session:
        assert lifecycle.claim_batch(session, analysis_id, 1) == []


def test_an_error_the_job_causes_still_counts(quiet):
    context, tenant_id = quiet
    analysis_id = _queued_row(context, tenant_id)
    settings = context.settings
    outcomes = []
    # One infrastructure error among them changes nothing about the count.
    errors = [ConnectionResetError("store hung up")] + [ValueError("cannot handle this image")] * settings.max_attempts
    for exc in errors:
        claim = _claim_now(context, analysis_id)
        release(context, [claim], exc)
        outcomes.append(_row(context, analysis_id).status)
    assert outcomes == ["queued"] * settings.max_attempts + ["failed"]
    row = _row(context, analysis_id)
    assert row.error["code"] == "attempts_exhausted"
    assert f"gave up after {settings.max_attempts} attempts" in row.error["detail"]
    assert "ValueError" in row.error["detail"]
    assert (row.attempt, row.transient_retries) == (settings.max_attempts + 1, 1)


def test_jobs_given_back_before_they_ran_spend_no_attempt(quiet):
    context, tenant_id = quiet
    analysis_id = _queued_row(context, tenant_id)
    for _ in range(context.settings.max_attempts + 1):
        claim = _claim_now(context, analysis_id)
        try:
            raise JobNotRun("the batch before this one failed") from ValueError("bad image in that batch")
        except JobNotRun as exc:
            release(context, [claim], exc)
    row = _row(context, analysis_id)
    assert (row.status, row.error) == ("queued", None)


def test_a_job_that_outlived_an_outage_finishes_after_it(context, tenant_key, worker, wait):
    analysis_id = _queued_row(context, tenant_key[0])
    outage = AppContext(context.settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{_closed_port()}"}))
    try:
        for _ in range(context.settings.max_attempts + 1):
            claim = _claim_now(context, analysis_id)
            release(context, [claim], _error_from(lambda claim=claim: outage.store.get(IMAGES, claim.image_key)))
    finally:
        outage.close()
    # The outage is over and the backoff has run out: the sweeper wakes the job.
    with session_scope(context.session_factory) as session:
        session.execute(update(Analysis).where(Analysis.id == analysis_id)
                        .values(enqueued_at=utcnow() - timedelta(seconds=10),
                                not_before=utcnow() - timedelta(seconds=1)))
    sweep(context)  # (or the session's beat, a moment earlier: the same sweeper)
    row = wait(lambda: (r := _row(context, analysis_id)).status not in ("queued", "processing") and r,
               timeout=120, message="the job to finish after the outage")
    assert row.status == "succeeded", row.error


def _dead_broker_context(context) -> AppContext:
    return AppContext(context.settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{_closed_port()}/0"}))


def test_a_report_lost_between_commit_and_enqueue_is_resent_once_with_its_event(context, tenant_key, worker, wait):
    analysis_id = _queued_row(context, tenant_key[0])
    claim = _claim_now(context, analysis_id)
    dead = _dead_broker_context(context)
    started = time.monotonic()
    try:
        # The outcome commits; the report's wake-up (and the event's) go to a broker that is not there.
        with session_scope(context.session_factory) as session:
            assert lifecycle.finish(
                session, dead.celery, context.settings, claim, status=AnalysisStatus.rejected,
                rejection={"code": "blurry", "detail": "blur score 3.1 below 100"},
                model={"weights": "untrained", "segmenter": "classical"},
            )
    finally:
        dead.close()
    assert time.monotonic() - started < 30, "a publish to a dead broker must fail fast, not hang"
    assert _row(context, analysis_id).status == "rejected"

    # Nothing will ever render it unless the sweeper notices.
    with session_scope(context.session_factory) as session:
        session.execute(update(Analysis).where(Analysis.id == analysis_id).values(
            report_requested_at=utcnow() - timedelta(seconds=context.settings.resend_after_seconds + 1)))
    wait(lambda: broker_queue_length(context, "reports") == 0, timeout=60, message="the reports lane to drain")
    sweep(context)  # (or the session's beat, a moment earlier: the same sweeper)
    wait(lambda: _count(context, Report, Report.analysis_id == analysis_id) == 1, timeout=120,
         message="the swept report")
    wait(lambda: _row(context, analysis_id).report_requested_at is None, timeout=10, message="the report to settle")

    # A second sweep finds nothing to re-send, and there is one report and one event.
    sweep(context)
    time.sleep(2)
    assert _count(context, Report, Report.analysis_id == analysis_id) == 1
    assert _count(context, Event, Event.dedupe_key == f"analysis.report_ready:{analysis_id}") == 1
    assert _count(context, Event, Event.dedupe_key == f"analysis.rejected:{analysis_id}") == 1


def _count(context, model, *where) -> int:
    with context.session_factory() as session:
        return session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def test_jobs_of_a_worker_that_stopped_reporting_are_released_without_waiting_for_the_stuck_threshold(
    settings, tenant_key
):
    # A short heartbeat (window 6 s, silent workers' jobs released after 12 s) so that both
    # rows' heartbeats can be older than that and still younger than what the session's own
    # sweeper (beat: stuck after 20 s, window 15 s) would release them for.
    context = AppContext(settings.model_copy(update={"stuck_after_seconds": 3600, "gpu_heartbeat_seconds": 2.0}))
    assert 2 * heartbeat_window(context.settings) + 1 < settings.stuck_after_seconds - 5
    dead_id, live_id = f"gpu@gone:{os.getpid()}0", f"gpu@here:{os.getpid()}1"
    long_ago = utcnow() - timedelta(seconds=2 * heartbeat_window(context.settings) + 1)
    ids = {}
    try:
        for owner in (dead_id, live_id):
            analysis_id = _queued_row(context, tenant_key[0])
            _claim_now(context, analysis_id)
            with session_scope(context.session_factory) as session:
                session.execute(update(Analysis).where(Analysis.id == analysis_id)
                                .values(claimed_by=owner, heartbeat_at=long_ago))
            ids[owner] = analysis_id

        client = broker_redis(settings)
        report_gpu_worker(client, live_id, ready=True)
        client.close()
        sweep(context)
        released = _row(context, ids[dead_id])
        # Re-queued (a live worker of this session may already have claimed it again).
        assert released.status != "processing" or released.claimed_by != dead_id
        assert (_row(context, ids[live_id]).status, _row(context, ids[live_id]).claimed_by) == ("processing", live_id)
    finally:
        with session_scope(context.session_factory) as session:
            session.execute(update(Analysis).where(Analysis.id.in_(list(ids.values()))).values(status="canceled"))
        client = broker_redis(settings)
        forget_gpu_worker(client, live_id)
        client.close()
        context.close()


def test_a_stalled_broker_or_store_fails_a_call_in_seconds_not_minutes(settings):
    """A broker or store that accepts connections and never answers (the worst outage:
    nothing is refused) must not hold a publish or a read; the caller's recovery path
    (the sweeper, the transient-error backoff) takes it from there."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        stalled = AppContext(settings.model_copy(update={
            "broker_url": f"redis://127.0.0.1:{port}/0", "s3_endpoint": f"127.0.0.1:{port}"}))
        try:
            started = time.monotonic()
            publish = _error_from(lambda: enqueue_report(stalled.celery, uuid.uuid4()))
            publish_s = time.monotonic() - started
            started = time.monotonic()
            read = _error_from(lambda: stalled.store.get(IMAGES, "tenants/x/analyses/y/image.jpg"))
            read_s = time.monotonic() - started
        finally:
            stalled.close()
    print(f"\nstalled broker: publish failed after {publish_s:.1f} s; stalled S3: read failed after {read_s:.1f} s")
    assert is_infrastructure_error(publish) and is_infrastructure_error(read)
    budget = settings.broker_connect_timeout_seconds + 2 * settings.broker_socket_timeout_seconds + 5
    assert publish_s < budget
    per_try = settings.s3_connect_timeout_seconds + settings.s3_read_timeout_seconds
    assert read_s < (settings.s3_retries + 1) * per_try + 5


# ---------------------------------------------------------------- a real GPU worker


def _redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture
def isolated(services, settings, context, tmp_path):
    """Settings for a GPU worker of its own: its own database and Redis database (so no
    other worker of the session can take its jobs) and the session's buckets."""
    from shared.migrate import scratch_database

    with scratch_database(services["database_url"], "dsfault") as url:
        isolated_settings = settings.model_copy(update={
            "database_url": url, "broker_url": _redis_db(services["broker_url"], 7), "gpu_heartbeat_seconds": 1.0,
        })
        ctx = AppContext(isolated_settings)
        client = broker_redis(isolated_settings)
        client.flushdb()
        client.close()
        from shared.tenants import issue_key

        with session_scope(ctx.session_factory) as session:
            tenant, _ = issue_key(session, "faults")
        yield ctx, tenant.id
        ctx.close()


def _start_gpu_worker(settings, log_path, **env_overrides):
    """The GPU worker exactly as `dermasentinel up` starts it."""
    return start_worker({**child_env(settings), **env_overrides}, log_path, role="gpu")


def _census(settings):
    client = broker_redis(settings)
    try:
        return gpu_worker_census(client, heartbeat_window(settings))
    finally:
        client.close()


def _pid(worker_id: str) -> int:
    return int(worker_id.rsplit(":", 1)[1])


def test_a_gpu_worker_whose_pool_process_is_killed_runs_jobs_again(isolated, tmp_path):
    ctx, tenant_id = isolated
    log_path = tmp_path / "gpu.log"
    process = _start_gpu_worker(ctx.settings, log_path)
    try:
        ready, _ = wait_for(lambda: _census(ctx.settings)[0] and _census(ctx.settings), timeout=180,
                            message="the GPU worker to load its models")
        (first,) = ready
        # A job the process holds when it dies (claimed a while ago, mid-pass).
        held = _queued_row(ctx, tenant_id)
        _claim_now(ctx, held)
        with session_scope(ctx.session_factory) as session:
            long_ago = utcnow() - timedelta(seconds=2 * heartbeat_window(ctx.settings))
            session.execute(update(Analysis).where(Analysis.id == held).values(claimed_by=first, heartbeat_at=long_ago))

        os.kill(_pid(first), signal.SIGKILL)
        killed_at = time.monotonic()
        (second,) = wait_for(lambda: [w for w in _census(ctx.settings)[0] if w != first], timeout=120,
                             message=f"a new pool process to report in (log: {log_path})")
        restarted_s = time.monotonic() - killed_at
        assert _pid(second) != _pid(first)

        fresh = _queued_row(ctx, tenant_id)
        enqueue_analysis(ctx.celery, fresh, "interactive")
        # The dead process's job is found by the sweeper without waiting for the stuck threshold.
        wait_for(lambda: first not in _census(ctx.settings)[0], timeout=30, message="the dead process to age out")
        assert sweep(ctx)["requeued"] == 1
        for analysis_id in (fresh, held):
            row = wait_for(lambda a=analysis_id: (r := _row(ctx, a)).status not in ("queued", "processing") and r,
                           timeout=120, message="the job to finish on the restarted pool process")
            assert row.status == "succeeded", row.error
            assert row.claimed_by == second
        print(f"\nnew pool process ready {restarted_s:.1f} s after kill -9; "
              f"both jobs done {time.monotonic() - killed_at:.1f} s after it")
        assert _row(ctx, held).attempt == 2
        assert process.poll() is None

        # Issue 26: the main process stops (SIGSTOP: a hang). Its pool process still reports in,
        # but the census drops it at once, and the job it holds goes back without an attempt.
        from shared import liveness

        assert (liveness.file_age(liveness.heartbeat_file(ctx.settings.data_dir, process.pid)) or 99) < 5
        stuck = _queued_row(ctx, tenant_id)
        _claim_now(ctx, stuck)
        with session_scope(ctx.session_factory) as session:
            long_ago = utcnow() - timedelta(seconds=2 * heartbeat_window(ctx.settings) + 1)
            session.execute(update(Analysis).where(Analysis.id == stuck).values(claimed_by=second,
                                                                                heartbeat_at=long_ago))
        os.kill(process.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: second not in _census(ctx.settings)[0], timeout=30,
                     message="the pool process of a stopped main to leave the census")
            from api.routes.health import readiness

            assert readiness(ctx)["checks"]["gpu_workers"]["ok"] is False  # /readyz: 503
            assert sweep(ctx)["requeued"] == 1
            row = _row(ctx, stuck)
            assert (row.status, row.attempt - row.transient_retries) == ("queued", 0), "a hang cost an attempt"
        finally:
            os.kill(process.pid, signal.SIGCONT)
    finally:
        process.stop(grace=15)


def test_a_gpu_worker_whose_models_cannot_load_says_so_and_does_not_loop(isolated, tmp_path):
    ctx, tenant_id = isolated
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "fusion.pth").write_bytes(b"this is not a checkpoint")
    log_path = tmp_path / "gpu.log"
    process = _start_gpu_worker(ctx.settings, log_path, DERMASENTINEL_MODEL_DIR=str(model_dir))
    try:
        (broken,) = wait_for(lambda: _census(ctx.settings)[1], timeout=180,
                             message=f"the worker to report that its models cannot load (log: {log_path})")
        analysis_id = _queued_row(ctx, tenant_id)
        enqueue_analysis(ctx.celery, analysis_id, "interactive")
        # It stopped consuming: the wake-up stays in the queue for a worker with models.
        wait_for(lambda: broker_queue_length(ctx, "analyze.interactive") == 1, timeout=30,
                 message="the message to stay queued")
        time.sleep(8)
        assert broker_queue_length(ctx, "analyze.interactive") == 1
        ready, still_broken = _census(ctx.settings)
        assert ready == []
        assert still_broken == [broken], "the same pool process lives on (no restart loop)"
        assert process.poll() is None
        row = _row(ctx, analysis_id)
        assert (row.status, row.attempt) == ("queued", 0), "the job waits for a worker that has its models"
        assert "could not be loaded" in log_path.read_text()
    finally:
        process.stop(grace=15)


def test_a_stopped_pool_process_holding_its_jobs_row_lock_does_not_hold_the_sweeper(quiet):
    """Issue 26, measured in the cluster: a pool process stopped between a write to its job's
    row and the commit keeps the row locked (for the server's 10-minute idle-in-transaction
    timeout); the sweeper's release waited on that lock, and every other sweep duty with it,
    until the process ran again. Now the sweeper ends the open transaction of a pool process
    its main saw stopped (its connections carry its worker id) and releases the job at once."""
    import psycopg

    from shared import liveness

    context, tenant_id = quiet
    settings = context.settings
    window = heartbeat_window(settings)
    node = f"gpu@issue26-{uuid.uuid4().hex[:6]}"
    main, stopped_pool = liveness.main_id(node, 1), f"{node}:12"
    client = broker_redis(settings)
    analysis_id = _queued_row(context, tenant_id)
    dsn = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    holder = psycopg.connect(dsn, application_name=stopped_pool)
    try:
        now = time.time()
        client.zadd(liveness.WORKER_MAINS, {main: now})
        liveness.record_parent(client, stopped_pool, main)
        client.zadd(GPU_WORKERS_READY, {stopped_pool: now - 10 * window})
        client.zadd(liveness.STOPPED_POOLS, {stopped_pool: now})
        _claim_now(context, analysis_id)
        with session_scope(context.session_factory) as session:
            session.execute(update(Analysis).where(Analysis.id == analysis_id).values(
                claimed_by=stopped_pool, heartbeat_at=utcnow() - timedelta(seconds=2 * window + 1)))
        # The stopped process's last write, never committed: the row stays locked.
        holder.execute("UPDATE analyses SET stage = 'classification' WHERE id = %s", (analysis_id,))
        time.sleep(5.5)  # idle in transaction past the sweeper's 5 s
        started = time.monotonic()
        sweep(context)
        assert time.monotonic() - started < 10, "the sweep waited on the stopped process's lock"
        row = _row(context, analysis_id)
        assert (row.status, row.transient_retries, row.not_before) == ("queued", 1, None)
        with pytest.raises(psycopg.OperationalError):  # its transaction was ended, rolled back
            holder.execute("SELECT 1")
    finally:
        holder.close()
        with session_scope(context.session_factory) as session:
            session.execute(update(Analysis).where(Analysis.id == analysis_id).values(status="canceled"))
        client.zrem(liveness.WORKER_MAINS, main)
        client.hdel(liveness.POOL_PARENTS, stopped_pool)
        client.zrem(GPU_WORKERS_READY, stopped_pool)
        client.zrem(liveness.STOPPED_POOLS, stopped_pool)
        client.close()


def test_a_hung_workers_jobs_are_released_without_spending_an_attempt(quiet):
    """Issue 26: a job held by a pool process whose main process stopped reporting in (SIGSTOP,
    a hang), or by a pool process its main saw stopped, goes back to the queue without spending
    an attempt and is woken at once (no backoff: the hang was the worker's); one whose own pool
    process went silent while its main lives on still spends one (it may have died of the job)."""
    from shared import liveness

    context, tenant_id = quiet
    settings = context.settings
    window = heartbeat_window(settings)
    node = f"gpu@issue26-{uuid.uuid4().hex[:6]}"
    hung_main, live_main = liveness.main_id(node, 1), liveness.main_id(node, 2)
    hung_pool, dead_pool, stopped_pool = f"{node}:11", f"{node}:21", f"{node}:22"
    long_ago = utcnow() - timedelta(seconds=2 * window + 1)
    client = broker_redis(settings)
    ids = {}
    try:
        now = time.time()
        client.zadd(liveness.WORKER_MAINS, {hung_main: now - 10 * window, live_main: now})
        liveness.record_parent(client, hung_pool, hung_main)
        liveness.record_parent(client, dead_pool, live_main)
        liveness.record_parent(client, stopped_pool, live_main)
        report_gpu_worker(client, hung_pool, ready=True)  # its pool process still reports in
        client.zadd(GPU_WORKERS_READY, {dead_pool: now - 10 * window})  # this one went silent
        client.zadd(GPU_WORKERS_READY, {stopped_pool: now - 10 * window})  # and this one, stopped:
        client.zadd(liveness.STOPPED_POOLS, {stopped_pool: now})  # its main saw it in state T
        for owner in (hung_pool, dead_pool, stopped_pool):
            analysis_id = _queued_row(context, tenant_id)
            _claim_now(context, analysis_id)
            with session_scope(context.session_factory) as session:
                session.execute(update(Analysis).where(Analysis.id == analysis_id)
                                .values(claimed_by=owner, heartbeat_at=long_ago))
            ids[owner] = analysis_id
        sweep(context)
        hung, dead = _row(context, ids[hung_pool]), _row(context, ids[dead_pool])
        stopped = _row(context, ids[stopped_pool])
        assert hung.status == "queued" and hung.transient_retries == 1  # the attempt was given back
        assert stopped.status == "queued" and stopped.transient_retries == 1
        assert hung.not_before is None and stopped.not_before is None  # claimable now, not after a backoff
        assert dead.status == "queued" and dead.transient_retries == 0  # the attempt counts
    finally:
        with session_scope(context.session_factory) as session:
            session.execute(update(Analysis).where(Analysis.id.in_(list(ids.values()))).values(status="canceled"))
        client.zrem(liveness.WORKER_MAINS, hung_main, live_main)
        client.hdel(liveness.POOL_PARENTS, hung_pool, dead_pool, stopped_pool)
        client.zrem(GPU_WORKERS_READY, hung_pool, dead_pool, stopped_pool)
        client.zrem(liveness.STOPPED_POOLS, stopped_pool)
        client.close()
