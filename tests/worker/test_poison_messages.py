"""Malformed broker messages never stop a worker (issue 26).

Each malformed variant is pushed straight into every queue of the session's real Redis broker,
where the session's real worker (every role's queues: analysis, ingest, reports, maintenance,
webhooks) reads it. Afterwards the worker is the same processes, every message is gone from the
broker, the log says what was dropped without its content, and a normal job still completes.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import psutil
import redis

from shared.queues import Queue, TaskName
from worker.pipeline.synthetic import encode_jpeg, make_lesion

MARKER = "PHI-MARKER-Jane-Roe-1961"


def _envelope(queue: str, body: bytes | str, *, headers=None, encoding: str = "base64",
              content_type: str = "application/json", properties: dict | None = None) -> dict:
    tag = str(uuid.uuid4())
    if isinstance(body, bytes):
        body = base64.b64encode(body).decode()
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": headers,
        "properties": properties if properties is not None else {
            "correlation_id": tag, "delivery_mode": 2, "priority": 0, "body_encoding": encoding,
            "delivery_tag": tag, "delivery_info": {"exchange": "", "routing_key": queue},
        },
    }


def _headers(task: str, **extra) -> dict:
    return {"lang": "py", "task": task, "id": str(uuid.uuid4()), "retries": 0, "argsrepr": "", **extra}


def _body(args) -> bytes:
    return json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()


def variants(queue: str, task: str) -> dict[str, bytes]:
    """The malformed messages of issue 26, as raw list items of kombu's Redis transport."""

    def item(envelope: dict) -> bytes:
        return json.dumps(envelope).encode()

    return {
        "not JSON": f"{{not json {MARKER}".encode(),
        "not UTF-8": b"\xff\xfe" + MARKER.encode(),
        "JSON, not an envelope": json.dumps([MARKER, 1, 2]).encode(),
        "no properties": item({"body": MARKER, "headers": _headers(task)}),
        "no delivery tag": item(_envelope(queue, _body([MARKER]), headers=_headers(task),
                                          properties={"body_encoding": "base64"})),
        "invalid base64": item(_envelope(queue, f"!!{MARKER}!!", headers=_headers(task))),
        "body not JSON": item(_envelope(queue, f"{{{MARKER}".encode(), headers=_headers(task))),
        "body does not unpack": item(_envelope(queue, json.dumps([[MARKER]]).encode(), headers=_headers(task))),
        "headers not a mapping": item(_envelope(queue, _body([MARKER]), headers=MARKER)),
        "headers without id": item(_envelope(queue, _body([MARKER]), headers={"task": task, "lang": "py"})),
        "unknown task": item(_envelope(queue, _body([MARKER]), headers=_headers(f"evil.{MARKER}"))),
        "content type not allowed": item(_envelope(queue, _body([MARKER]), headers=_headers(task),
                                                   content_type="application/x-python-serialize")),
        "argument of the wrong type": item(_envelope(queue, _body([{"name": MARKER}]), headers=_headers(task))),
        "argument not an id": item(_envelope(queue, _body([MARKER]), headers=_headers(task))),
        "wrong number of arguments": item(_envelope(queue, _body([str(uuid.uuid4()), MARKER]),
                                                    headers=_headers(task))),
    }


QUEUES = {
    Queue.analyze_interactive: TaskName.analyze,
    Queue.analyze_bulk: TaskName.analyze,
    Queue.ingest: TaskName.ingest_upload,
    Queue.reports: TaskName.build_report,
    Queue.maintenance: TaskName.sweep,
    Queue.webhooks: TaskName.deliver_webhook,
}


def _processes(pid: int) -> set[int]:
    main = psutil.Process(pid)
    return {pid, *(child.pid for child in main.children(recursive=True))}


def test_malformed_messages_are_dropped_and_the_worker_lives_on(worker, services, api, wait, wait_final):
    # The session's worker has its pool (two processes) up before we look.
    before = wait(lambda: (found := _processes(worker.pid)) and len(found) >= 3 and found, timeout=120,
                  message="the worker's pool processes")
    log_start = worker.log_path.stat().st_size
    broker = redis.Redis.from_url(services["broker_url"])
    pushed = 0
    try:
        for queue, task in QUEUES.items():
            for raw in variants(queue.value, task.value).values():
                broker.lpush(queue.value, raw)
                pushed += 1
        wait(lambda: sum(broker.llen(q.value) for q in QUEUES) == 0, timeout=60,
             message="the worker to take every malformed message")
    finally:
        broker.close()

    def dropped() -> int:
        return worker.log_path.read_bytes()[log_start:].decode(errors="replace").count(
            "malformed broker message dropped")

    wait(lambda: dropped() >= pushed, timeout=60, message="a log line for each malformed message")
    time.sleep(1)
    assert worker.poll() is None, "the worker exited"
    assert _processes(worker.pid) == before, "a worker process was replaced"

    image = encode_jpeg(make_lesion(seed=26, size=(120, 160), radius_frac=0.2).image)
    response = api.post("/v1/analyses", files={"image": ("lesion.jpg", image, "image/jpeg")})
    assert response.status_code == 202, response.text
    assert wait_final(response.json()["id"], timeout=120)["status"] == "succeeded"
    assert _processes(worker.pid) == before
    log = worker.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert MARKER not in log, "a malformed message's content reached the log"
