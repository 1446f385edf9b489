"""Live progress as Server-Sent Events (issue 25): ``GET /v1/analyses/{id}/events`` and
``GET /v1/batches/{id}/events`` against the real API, Postgres and worker.

The analyses whose changes the tests make themselves are written to Postgres with a
``not_before`` an hour away, so no worker of the session claims them; every change then goes
through the database as a worker's or the sweeper's would (the trigger records it, whoever
writes), and each event must reach the open stream before the next change is made.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
from sqlalchemy import update

from api.live import batch_fingerprint
from shared.clock import utcnow
from shared.db import session_scope
from shared.schemas.batches import BatchLinks, DispositionCounts, StatusCounts
from shared.schemas.progress import BatchProgressEvent
from shared.tables import Analysis, Batch
from shared.tenants import issue_key
from tests.conftest import wait_for
from tests.e2e.seeding import seed_queued
from tests.e2e.test_analysis_flow import lesion_jpeg, submit

FINAL = {"succeeded", "rejected", "failed", "canceled"}


@dataclass
class Stream:
    """One event stream read on a thread of its own: its events as they arrive, its comments
    (heartbeats), and whether the server ended it."""

    status: int = 0
    events: queue.Queue = field(default_factory=queue.Queue)
    comments: list[str] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    def next(self, timeout: float = 10.0) -> dict:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s") from None

    def rest(self, timeout: float = 10.0) -> list[dict]:
        """Every event until the server ends the stream."""
        assert self.ended.wait(timeout), f"the stream did not end within {timeout} s"
        found = []
        while not self.events.empty():
            found.append(self.events.get_nowait())
        return found


def follow(api_url: str, key: str, path: str, last_event_id: str | None = None) -> Stream:
    stream = Stream()
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    started = threading.Event()

    def read() -> None:
        try:
            with httpx.stream("GET", api_url + path, headers=headers, timeout=httpx.Timeout(10, read=60)) as answer:
                stream.status = answer.status_code
                started.set()
                if answer.status_code != 200:
                    return
                assert answer.headers["content-type"].startswith("text/event-stream")
                event: dict = {}
                for line in answer.iter_lines():
                    if line.startswith(":"):
                        stream.comments.append(line[1:].strip())
                    elif line == "":
                        if "data" in event:
                            stream.events.put({**event, "data": json.loads(event["data"])})
                        event = {}
                    else:
                        name, _, value = line.partition(":")
                        event[name] = value[1:] if value.startswith(" ") else value
        finally:
            started.set()
            stream.ended.set()

    threading.Thread(target=read, daemon=True).start()
    assert started.wait(15), "the stream did not answer"
    return stream


def change(context, analysis_id: uuid.UUID, **values) -> None:
    now = utcnow()
    with session_scope(context.session_factory) as session:
        session.execute(update(Analysis).where(Analysis.id == analysis_id).values(updated_at=now, **values))


STEPS = [
    {"status": "processing", "stage": "segmentation"},
    {"status": "processing", "stage": "classification"},
    {"status": "processing", "stage": "reporting"},
    {"status": "failed", "stage": None},
]


def test_an_analysis_stream_sends_each_state_change_live_in_order_and_ends_at_the_final_one(
    api, api_url, context, tenant_key
):
    tenant_id, key = tenant_key
    analysis_id = seed_queued(context, tenant_id)
    path = f"/v1/analyses/{analysis_id}/events"
    stream = follow(api_url, key, path)
    assert stream.status == 200
    first = stream.next()
    assert first["event"] == "state"
    assert first["data"] == {**first["data"], "analysis_id": str(analysis_id), "status": "queued", "stage": None,
                             "final": False}
    # Heartbeats keep a quiet stream open (SSE_HEARTBEAT_SECONDS, 1 s in the tests' stack).
    deadline = time.monotonic() + 10
    while "heartbeat" not in stream.comments and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "heartbeat" in stream.comments
    events = [first]
    for step in STEPS:
        now = utcnow()
        change(context, analysis_id, heartbeat_at=now, completed_at=now if step["status"] in FINAL else None, **step)
        event = stream.next()  # each change arrives while the stream is open, before the next is made
        assert {k: event["data"][k] for k in ("status", "stage")} == step
        events.append(event)
    assert stream.rest() == [], "nothing after the final state, and the stream ended"
    assert [e["data"]["final"] for e in events] == [False] * 4 + [True]
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids)), f"event ids must grow: {ids}"

    # A client that lost the stream resumes after the last event it saw: no duplicate, no gap.
    resumed = follow(api_url, key, path, last_event_id=events[1]["id"])
    assert [e["id"] for e in resumed.rest()] == [e["id"] for e in events[2:]]
    # Opened after the end, a stream replays the whole history and ends.
    replayed = follow(api_url, key, path)
    assert [(e["id"], e["data"]) for e in replayed.rest()] == [(e["id"], e["data"]) for e in events]
    # Resuming after the final state: 204, which makes a browser's EventSource stop reconnecting.
    assert follow(api_url, key, path, last_event_id=events[-1]["id"]).status == 204

    def audited():
        rows = api.get("/v1/audit-events", params={"action": "analysis.events"}).json()["data"]
        return rows if len(rows) >= 4 else None

    rows = wait_for(audited, timeout=15, message="audit rows of the streams")
    assert {r["resource_id"] for r in rows} == {str(analysis_id)}


def test_a_real_analysis_streams_its_stages_to_its_result(api, api_url, tenant_key, worker):
    _, key = tenant_key
    created = submit(api, lesion_jpeg(seed=251), age=50, sex="female", site="torso")
    assert created.status_code == 202, created.text
    analysis_id = created.json()["id"]
    events = follow(api_url, key, f"/v1/analyses/{analysis_id}/events").rest(timeout=180)
    states = [(e["data"]["status"], e["data"]["stage"]) for e in events]
    final = api.get(f"/v1/analyses/{analysis_id}").json()
    assert final["status"] == "succeeded", final
    # The worker reports each stage as it starts it; the stream ends with the result's status.
    assert states == [("queued", None), ("processing", "segmentation"), ("processing", "classification"),
                      ("processing", "reporting"), ("succeeded", None)], states
    assert [e["data"]["final"] for e in events] == [False] * 4 + [True]


def test_a_batch_stream_follows_counts_and_state_and_ends_when_the_batch_ends(api, api_url, context, tenant_key):
    tenant_id, key = tenant_key
    batch_id = api.post("/v1/batches", json={"name": "live backlog"}).json()["id"]
    items = [seed_queued(context, tenant_id, uuid.UUID(batch_id)) for _ in range(3)]
    path = f"/v1/batches/{batch_id}/events"
    stream = follow(api_url, key, path)
    first = stream.next()
    assert first["event"] == "progress"
    assert first["data"]["state"] == "open" and first["data"]["counts"]["queued"] == 3
    assert first["data"]["total"] == 3 and first["data"]["final"] is False
    shown = api.get(f"/v1/batches/{batch_id}").json()  # the same progress as GET shows
    assert {k: first["data"][k] for k in shown} == shown

    now = utcnow()
    change(context, items[0], status="processing", stage="segmentation", heartbeat_at=now)
    moved = stream.next()
    assert (moved["data"]["counts"]["queued"], moved["data"]["counts"]["processing"]) == (2, 1)
    assert api.post(f"/v1/batches/{batch_id}/seal").status_code == 200
    assert stream.next()["data"]["state"] == "sealed"
    assert api.post(f"/v1/batches/{batch_id}/cancel").json()["canceled_now"] == 3
    last = stream.next()
    assert last["data"]["state"] == "canceled" and last["data"]["counts"]["canceled"] == 3
    assert last["data"]["final"] is True and last["data"]["done"] == 3
    assert stream.rest() == []
    assert len({first["id"], moved["id"], last["id"]}) == 3

    # Resuming: the current progress if it differs from the last one seen, else nothing (204 once it ended).
    assert [e["id"] for e in follow(api_url, key, path, last_event_id=first["id"]).rest()] == [last["id"]]
    assert follow(api_url, key, path, last_event_id=last["id"]).status == 204


def test_streams_answer_404_for_anyone_elses_ids_and_403_without_the_scope(api, api_url, context, tenant_key):
    tenant_id, key = tenant_key
    analysis_id = seed_queued(context, tenant_id)
    with session_scope(context.session_factory) as session:
        batch = Batch(tenant_id=tenant_id, name="mine", created_at=utcnow())
        session.add(batch)
        session.flush()
        batch_id = batch.id
    other = api.post("/v1/api-keys", json={"name": "writer", "scopes": ["analyses:write"]}).json()["key"]
    with session_scope(context.session_factory) as session:
        _, stranger = issue_key(session, f"test-{uuid.uuid4().hex[:10]}")
    for path in (f"/v1/analyses/{analysis_id}/events", f"/v1/batches/{batch_id}/events"):
        refused = httpx.get(api_url + path, headers={"Authorization": f"Bearer {other}"})
        assert refused.status_code == 403 and "analyses:read" in refused.json()["detail"]
        hidden = httpx.get(api_url + path, headers={"Authorization": f"Bearer {stranger}"})
        assert hidden.status_code == 404 and hidden.headers["content-type"] == "application/problem+json"
        assert httpx.get(api_url + path).status_code == 401
    unknown = (f"/v1/analyses/{uuid.uuid4()}/events", "/v1/analyses/nope/events", f"/v1/batches/{uuid.uuid4()}/events")
    for path in unknown:
        assert api.get(path).status_code == 404
    assert api.get(f"/v1/analyses/{analysis_id}/events", headers={"Last-Event-ID": "x1"}).status_code == 422


def _progress(state: str = "sealed", queued: int = 2, succeeded: int = 1, eta: float = 30.0) -> BatchProgressEvent:
    link = "http://127.0.0.1:8000/v1/batches/b"
    return BatchProgressEvent(
        id=uuid.UUID(int=7), name="backlog", external_id=None, state=state, created_at="2026-12-06T08:00:00Z",
        sealed_at=None, completed_at=None, deadline_at=None, canceled_at=None,
        counts=StatusCounts(queued=queued, succeeded=succeeded), total=queued + succeeded,
        links=BatchLinks(self=link, seal=link, cancel=link, results=link),
        dispositions=DispositionCounts(urgent_referral=0, clinician_review=succeeded, routine=0),
        done=succeeded, percent_done=0.0, throughput_per_minute=None, eta_seconds=eta, eta_at=None, final=False,
    )


def test_a_batch_event_id_names_its_counts_and_state_and_nothing_that_moves_on_its_own():
    """A resuming client is sent nothing while the progress it saw is still the progress; an ETA
    recomputed as time passes is no new progress, a count or state that changed is."""
    seen = batch_fingerprint(_progress())
    assert batch_fingerprint(_progress(eta=12.5)) == seen
    assert batch_fingerprint(_progress(queued=1, succeeded=2)) != seen
    assert batch_fingerprint(_progress(state="canceled")) != seen
