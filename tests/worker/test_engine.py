"""The overlapped engine: one call drains the queue batch after batch, writes every outcome
with its claim's attempt, stores the cheaper artifacts, and gives claims back on failure."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from datetime import timedelta

import pytest
from PIL import Image
from sqlalchemy import event, func, select
from sqlalchemy.exc import DataError

from shared import lifecycle
from shared.clock import utcnow
from shared.context import AppContext
from shared.db import session_scope
from shared.lifecycle.views import model_of, result_of
from shared.queues import Queue
from shared.storage import ARTIFACTS, IMAGES, image_key
from shared.tables import Analysis, AnalysisStatus, Event
from tests.conftest import unread_broker, wait_for
from worker import after_passes
from worker import analysis as engine_module
from worker.analysis import run_analysis
from worker.pipeline.model_set import ModelSet
from worker.pipeline.pipeline import Pipeline, PipelineOptions
from worker.pipeline.synthetic import encode_jpeg, make_lesion


@pytest.fixture(scope="module")
def engine_context(settings):
    """Small batches, so a dozen jobs are several batches in flight."""
    context = AppContext(settings.model_copy(update={"gpu_batch_size": 3, "host_threads": 2}))
    yield context
    context.close()


@pytest.fixture(scope="module")
def pipeline(settings, tmp_path_factory):
    registry = ModelSet.load(None, device="cpu", backend="auto")
    # The lesions here are 240 x 180: under the 256 px default minimum resolution.
    options = PipelineOptions.from_settings(settings, "cpu", ir_cache_dir=tmp_path_factory.mktemp("engine"),
                                            min_image_side=32)
    return Pipeline(registry, options)


def _queue(context, tenant_id, image: bytes | None, *, blur: float = 0.0, priority: str = "interactive") -> uuid.UUID:
    analysis_id = uuid.uuid4()
    key = image_key(tenant_id, analysis_id, "jpg")
    if image is None:
        lesion = make_lesion(seed=analysis_id.int % 1000, size=(180, 240), radius_frac=0.22, blur=blur)
        image = encode_jpeg(lesion.image)
    if image:
        context.store.put(IMAGES, key, image, "image/jpeg")
    with session_scope(context.session_factory) as session:
        session.add(Analysis(
            id=analysis_id, tenant_id=tenant_id, status="queued", attempt=0, image_key=key, age=50, sex="female",
            site="torso", image_sha256="0" * 64, image_content_type="image/jpeg", image_width=240, image_height=180,
            enqueued_at=utcnow(), created_at=utcnow(), priority=priority,
        ))
    return analysis_id


def _rows(context, ids) -> dict[uuid.UUID, Analysis]:
    with context.session_factory() as session:
        return {row.id: row for row in session.scalars(select(Analysis).where(Analysis.id.in_(ids)))}


def test_one_call_drains_several_batches_with_outcomes_per_image(engine_context, pipeline, tenant_key):
    context = engine_context
    tenant_id = tenant_key[0]
    sharp = [_queue(context, tenant_id, None) for _ in range(7)]
    blurry = _queue(context, tenant_id, None, blur=8.0)
    tiny = _queue(context, tenant_id, encode_jpeg(make_lesion(seed=3, size=(24, 24)).image))
    ids = [*sharp, blurry, tiny]

    finished = run_analysis(context, pipeline, sharp[0])

    rows = _rows(context, ids)
    assert finished >= len(ids) > context.settings.gpu_batch_size  # batches k, k+1, ... in one call
    assert {rows[i].status for i in sharp} == {"succeeded"}
    assert rows[blurry].status == "rejected" and rows[blurry].rejection["code"] == "blurry"
    assert rows[tiny].status == "rejected" and rows[tiny].rejection["code"] == "low_resolution"
    assert rows[tiny].result is None and rows[tiny].mask_key is None
    for analysis_id in sharp:  # every finding is stored with its disposition (untrained: a clinician's review)
        result = result_of(rows[analysis_id])
        assert result is not None and result.disposition == "clinician_review"
        assert result.disposition_reasons[0] == "weights_not_trained"
    stored = pipeline.registry.provenance().model_dump(mode="json", exclude_unset=True)
    for row in rows.values():
        assert row.attempt == 1 and model_of(row).backend == "openvino-cpu"
        assert row.model == stored  # every outcome records the pipeline's provenance as it is

    row = rows[sharp[0]]
    assert row.mask_key.endswith("/mask.png") and row.overlay_key.endswith("/overlay.jpg")
    mask = context.store.client.stat_object(context.settings.bucket(ARTIFACTS), row.mask_key)
    overlay = context.store.client.stat_object(context.settings.bucket(ARTIFACTS), row.overlay_key)
    assert (mask.content_type, overlay.content_type) == ("image/png", "image/jpeg")
    with Image.open(io.BytesIO(context.store.get(ARTIFACTS, row.mask_key))) as picture:
        assert picture.format == "PNG" and picture.mode == "1" and picture.size == (240, 180)
    with Image.open(io.BytesIO(context.store.get(ARTIFACTS, row.overlay_key))) as picture:
        assert picture.format == "JPEG" and picture.size == (240, 180)


def test_same_image_same_result_whichever_batch_it_lands_in(engine_context, pipeline, tenant_key):
    context = engine_context
    image = encode_jpeg(make_lesion(seed=77, size=(180, 240), radius_frac=0.25, irregularity=0.4).image)
    first = [_queue(context, tenant_key[0], image) for _ in range(5)]
    run_analysis(context, pipeline, first[0])
    results = [result_of(row) for row in _rows(context, first).values()]
    assert all(result is not None for result in results)
    network = {"scribe_note", "probability", "uncertainty", "tta_probabilities"}  # the note names the id
    for result in results:
        assert result.model_dump(exclude=network) == results[0].model_dump(exclude=network)
        assert result.tta_probabilities == pytest.approx(results[0].tta_probabilities, abs=1e-6)


def test_a_missing_image_fails_only_its_own_job(engine_context, pipeline, tenant_key):
    """A row whose stored image is gone ends `failed` (image_missing) at once; the job that
    shares its pass still succeeds, and neither is handed back to burn attempts."""
    context = engine_context
    missing = _queue(context, tenant_key[0], b"")  # the row exists, its image object does not
    healthy = _queue(context, tenant_key[0], None)
    finished = run_analysis(context, pipeline, missing)
    rows = _rows(context, [missing, healthy])
    assert rows[missing].status == "failed" and rows[missing].error["code"] == "image_missing"
    assert rows[missing].attempt == 1
    assert rows[healthy].status == "succeeded" and rows[healthy].attempt == 1
    assert finished == 2


class _InteractiveArrives(Pipeline):
    """The real pipeline, with the moment an interactive job arrives pinned down: it is queued
    while the first (bulk) pass is being prepared, so the engine claims it ahead while that pass
    runs, and the bulk pass's first image waits until the interactive pass is prepared (loaded
    ahead, as it would be a few images into a longer pass)."""

    def __init__(self, pipeline: Pipeline, arrive) -> None:
        super().__init__(pipeline.registry, pipeline.options, backend=pipeline.backend)
        self.arrive = arrive
        self.prepared = 0
        self.ahead_prepared = threading.Event()

    def prepare(self, items, map=map):
        if self.prepared == 0:
            self.arrive()
        batch = super().prepare(items, map=map)
        self.prepared += 1
        if self.prepared == 2:
            self.ahead_prepared.set()
        return batch

    def _segment(self, batch):
        self.ahead_prepared.wait(30)
        return super()._segment(batch)


def test_an_interactive_job_claimed_ahead_is_answered_before_the_bulk_pass_ends(
    engine_context, pipeline, tenant_key
):
    """Issue 26: an interactive job claimed during a bulk pass does not wait for the whole pass:
    it runs between that pass's images, and its result is written before the bulk pass's
    last one. Every job is run once, under its first attempt."""
    context = engine_context
    tenant_id = tenant_key[0]
    bulk = [_queue(context, tenant_id, None, priority="bulk") for _ in range(context.settings.gpu_batch_size)]
    interactive: list[uuid.UUID] = []
    arrives = _InteractiveArrives(pipeline, lambda: interactive.append(_queue(context, tenant_id, None)))

    finished = run_analysis(context, arrives, bulk[0])

    rows = _rows(context, [*bulk, *interactive])
    assert finished == len(rows) == len(bulk) + 1
    assert {(row.status, row.attempt) for row in rows.values()} == {("succeeded", 1)}
    answered = rows[interactive[0]]
    bulk_rows = [rows[i] for i in bulk]
    assert answered.started_at > max(row.started_at for row in bulk_rows)  # claimed while the bulk pass ran
    assert answered.completed_at < max(row.completed_at for row in bulk_rows)


def test_a_message_for_a_job_this_process_finished_needs_no_database(engine_context, pipeline, tenant_key):
    """Issue 27: a pass claims several jobs, each with a message of its own still queued; those
    messages find their job in the process's own record of the jobs it finished and return
    without a statement. A job finished by another process is not in that record: its message
    takes the database path as before and still serves the queue."""
    context = engine_context
    tenant_id = tenant_key[0]
    batch = [_queue(context, tenant_id, None) for _ in range(context.settings.gpu_batch_size)]
    assert run_analysis(context, pipeline, batch[0]) >= len(batch)
    assert {row.status for row in _rows(context, batch).values()} == {"succeeded"}

    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(context.engine, "before_cursor_execute", count)
    try:
        assert [run_analysis(context, pipeline, job) for job in batch[1:]] == [0] * (len(batch) - 1)
        assert statements == []

        elsewhere = _queue(context, tenant_id, None)  # finished by another worker: no record here
        with session_scope(context.session_factory) as session:
            session.get(Analysis, elsewhere).status = "failed"
        waiting = _queue(context, tenant_id, None)
        assert run_analysis(context, pipeline, elsewhere) >= 1
        assert statements  # the claim ran, and claimed the queued job
    finally:
        event.remove(context.engine, "before_cursor_execute", count)
    rows = _rows(context, [elsewhere, waiting])
    assert (rows[elsewhere].status, rows[elsewhere].attempt) == ("failed", 0)
    assert rows[waiting].status == "succeeded"


def test_a_job_past_its_deadline_ends_expired_at_its_claim_and_a_due_one_runs(engine_context, pipeline, tenant_key):
    """The claim reads the job's own row first and runs the expiry statement only when it is not
    claimable (issue 27): a job past its deadline still ends ``canceled`` (``expired``), never runs."""
    context = engine_context
    late = _queue(context, tenant_key[0], None)
    with session_scope(context.session_factory) as session:
        session.get(Analysis, late).deadline_at = utcnow() - timedelta(seconds=1)
    assert run_analysis(context, pipeline, late) == 0

    due = _queue(context, tenant_key[0], None)
    with session_scope(context.session_factory) as session:
        session.get(Analysis, due).deadline_at = utcnow() + timedelta(hours=1)
    assert run_analysis(context, pipeline, due) == 1

    rows = _rows(context, [late, due])
    assert (rows[late].status, rows[late].cancel_reason, rows[late].attempt) == ("canceled", "expired", 0)
    assert rows[due].status == "succeeded" and rows[due].attempt == 1


def test_freed_memory_goes_back_once_the_passes_pause_not_after_each():
    """Issue 27: one trim after a burst of passes (and at least every ``most`` seconds while they
    last), not one per pass, nor one in the middle of a long pass."""
    trims: list[float] = []
    after = after_passes.AfterPasses()

    def trim_soon() -> None:
        after.request("trim", lambda _: trims.append(time.monotonic()), 0.5, 2.0)

    with after.passes():  # a drain: a pass finished every 50 ms, then one that takes 1 s
        for _ in range(5):
            trim_soon()
            time.sleep(0.05)
        time.sleep(1.0)
        assert trims == []
        last_pass_end = time.monotonic()  # the drain ends after this (its end is the pause's start)
    time.sleep(1.0)
    assert len(trims) == 1 and trims[0] - last_pass_end >= 0.5
    phase = time.monotonic()
    with after.passes():  # passes that never pause: still trimmed within ``most``
        while time.monotonic() - phase < 3.0:
            trim_soon()
            time.sleep(0.05)
        ended = time.monotonic()
    assert any(phase < moment < ended for moment in trims[1:])


@pytest.fixture
def quiet_broker(engine_context):
    """The engine's context on a Redis database no worker reads, emptied after the test."""
    with unread_broker(engine_context.settings, 13, report_hold_seconds=2.0) as (settings, client):
        quiet = AppContext(settings)
        yield quiet, client
        quiet.close()


def test_reports_are_requested_once_the_passes_pause(quiet_broker, pipeline, tenant_key):
    """Issue 27: while the analysis lane is busy (a drain running), a finished job's report
    request waits, so the report worker renders after the burst instead of on the cores the next
    results need; its outcome event's wake-up does not wait. Once the drains stop the held
    requests go out together; passes that never pause send them within REPORT_HOLD_SECONDS."""
    context, client = quiet_broker
    reports = Queue.reports.value
    jobs = [_queue(context, tenant_key[0], None, priority="bulk") for _ in range(2)]
    with after_passes.AFTER_PASSES.passes():  # another drain of the burst still running
        assert run_analysis(context, pipeline, jobs[0]) == 2
        jobs.append(_queue(context, tenant_key[0], None, priority="interactive"))
        assert run_analysis(context, pipeline, jobs[2]) == 1
        assert client.llen(Queue.webhooks.value) >= 3  # the outcomes' events: at once
        time.sleep(0.8)
        assert client.llen(reports) == 0
    wait_for(lambda: client.llen(reports) == 3, timeout=3.0, interval=0.02, message="the held report requests")
    assert {json.loads(m)["headers"]["argsrepr"] for m in client.lrange(reports, 0, -1)} == {
        repr([str(i)]) for i in jobs}

    client.delete(reports)
    late = _queue(context, tenant_key[0], None, priority="bulk")
    with after_passes.AFTER_PASSES.passes():  # a drain that lasts: held at most REPORT_HOLD_SECONDS
        started = time.monotonic()
        assert run_analysis(context, pipeline, late) == 1
        wait_for(lambda: client.llen(reports) == 1, timeout=5.0, interval=0.02, message="the report request")
        assert 1.0 < time.monotonic() - started < 3.5


def test_a_pass_outcomes_are_written_in_one_update_each_event_in_its_own_jobs_trace(
    engine_context, tenant_key, spans,
):
    """Issue 27: a pass's outcomes are one UPDATE and one INSERT of their events, however many
    jobs it holds; each job is still fenced by its own claim (one re-claimed meanwhile is left
    alone, and has no event), and each event continues its own job's trace from its own
    "record outcome" span."""
    context = engine_context
    ids = [_queue(context, tenant_key[0], None) for _ in range(4)]
    traces = {analysis_id: f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01" for analysis_id in ids}
    with session_scope(context.session_factory) as session:
        for analysis_id in ids:
            session.get(Analysis, analysis_id).traceparent = traces[analysis_id]
    with session_scope(context.session_factory) as session:
        claims = [claim for analysis_id in ids for claim in lifecycle.claim_batch(session, analysis_id, 1)]
    with session_scope(context.session_factory) as session:  # the sweeper gave it to another worker
        session.get(Analysis, ids[2]).attempt += 1
    model = {"weights": "untrained", "segmenter": "classical"}
    writes = [
        engine_module._Write(claim, AnalysisStatus.rejected, {
            "model": model, "rejection": {"code": "blurry", "detail": f"blur {n}", "scores": {"blur": float(n)}}})
        for n, claim in enumerate(claims)
    ]
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement.lstrip().split(None, 3)[:3])

    event.listen(context.engine, "before_cursor_execute", count)
    try:
        assert engine_module.record_outcomes(context, writes) == [1, 1, 0, 1]
    finally:
        event.remove(context.engine, "before_cursor_execute", count)

    assert statements.count(["UPDATE", "analyses", "SET"]) == 1
    assert statements.count(["INSERT", "INTO", "events"]) == 1
    rows = _rows(context, ids)
    assert [rows[i].status for i in ids] == ["rejected", "rejected", "processing", "rejected"]
    assert [rows[i].rejection["detail"] for i in ids if i != ids[2]] == ["blur 0", "blur 1", "blur 3"]
    with context.session_factory() as session:
        events = dict(session.execute(select(Event.dedupe_key, Event.traceparent).where(
            Event.dedupe_key.in_([f"analysis.rejected:{i}" for i in ids]))).all())
    assert set(events) == {f"analysis.rejected:{i}" for i in ids if i != ids[2]}
    recording = {format(span.context.trace_id, "032x"): format(span.context.span_id, "016x")
                 for span in spans.get_finished_spans() if span.name == "record outcome"}
    for analysis_id in ids:
        if analysis_id != ids[2]:
            trace_id = traces[analysis_id].split("-")[1]
            assert events[f"analysis.rejected:{analysis_id}"] == f"00-{trace_id}-{recording[trace_id]}-01"


def test_a_job_whose_write_fails_leaves_the_others_of_its_pass_written(engine_context, tenant_key):
    """Issue 27: a pass's outcomes are one transaction, a savepoint per job. A job whose write
    the database refuses (a NUL character in a JSON text) is rolled back alone and its error
    raised (its claim is then the pass's to give back); the others, and their events, commit."""
    context = engine_context
    ids = [_queue(context, tenant_key[0], None) for _ in range(3)]
    with session_scope(context.session_factory) as session:
        claims = [claim for analysis_id in ids for claim in lifecycle.claim_batch(session, analysis_id, 1)]
    assert [c.analysis_id for c in claims] == ids
    model = {"weights": "untrained", "segmenter": "classical"}
    writes = [
        engine_module._Write(claim, AnalysisStatus.rejected, {
            "model": model, "rejection": {"code": "blurry", "detail": detail, "scores": {"blur": 3.1}}})
        for claim, detail in zip(claims, ["blur score 3.1", "blur \x00 score", "blur score 2.7"], strict=True)
    ]

    with pytest.raises(DataError):
        engine_module.record_outcomes(context, writes)

    rows = _rows(context, ids)
    assert [rows[i].status for i in ids] == ["rejected", "processing", "rejected"]
    assert rows[ids[1]].attempt == 1  # still held by its claim: the caller gives it back, fenced
    with context.session_factory() as session:
        events = dict(session.execute(select(Event.dedupe_key, func.count()).where(
            Event.dedupe_key.in_([f"analysis.rejected:{i}" for i in ids])).group_by(Event.dedupe_key)).all())
    assert events == {f"analysis.rejected:{ids[0]}": 1, f"analysis.rejected:{ids[2]}": 1}

    engine_module.release(context, [claims[1]], DataError("statement", {}, Exception("refused")))
    assert _rows(context, [ids[1]])[ids[1]].status == "queued"
