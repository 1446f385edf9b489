"""devstack.Receiver: the one loopback webhook receiver of the tests and benchmarks (no services)."""

import json
import socket
import threading
import time

import httpx
import pytest

from devstack import Receiver, Reply
from devstack.receiver import blackhole


def post(url: str, body: dict, webhook_id: str = "msg_1") -> httpx.Response:
    return httpx.post(url, content=json.dumps(body), headers={"webhook-id": webhook_id}, timeout=5)


def test_it_answers_in_order_the_last_reply_repeating_and_records_every_request():
    with Receiver(Reply(500, b"db down"), Reply(200, b"thanks")) as hook:
        answers = [post(hook.url, {"type": "analysis.succeeded", "n": n}) for n in range(3)]
        assert [(a.status_code, a.text) for a in answers] == [(500, "db down"), (200, "thanks"), (200, "thanks")]
        assert [r.status for r in hook.requests] == [500, 200, 200]
        first = hook.requests[0]
        assert (first.method, first.path, first.webhook_id) == ("POST", "/hooks", "msg_1")
        assert first.json() == {"type": "analysis.succeeded", "n": 0}
        assert first.headers["webhook-id"] == "msg_1", "header names are lower-case"
        assert hook.count == 3 and hook.webhook_ids == ["msg_1"] * 3
        assert set(hook.arrivals) == {"msg_1"} and hook.arrivals["msg_1"] == first.received_at


def test_per_message_scripts_each_webhook_id_on_its_own():
    with Receiver(500, 500, 204, per_message=True) as hook:
        statuses = [post(hook.url, {"type": "t"}, webhook_id=i).status_code for i in ("a", "b", "a", "a", "a", "b")]
        assert statuses == [500, 500, 500, 204, 204, 500]


def test_of_type_picks_webhook_events_and_skips_other_bodies():
    with Receiver() as hook:
        post(hook.url, {"type": "analysis.succeeded"})
        post(hook.url, {"type": "batch.completed"})
        httpx.post(hook.url, content=b"not json", timeout=5)
        assert [r.json()["type"] for r in hook.of_type("batch.completed")] == ["batch.completed"]
        assert len(hook.requests) == 3


def test_a_sender_that_hangs_up_mid_body_is_recorded_and_never_answered():
    """A worker killed mid-send (the chaos stack's up-kill) left a request whose body never
    came whole: it must not count as an acknowledged event."""
    with Receiver() as hook:
        with socket.create_connection((hook.host, hook.port), timeout=5) as sender:
            sender.sendall(b"POST /hooks HTTP/1.1\r\nHost: x\r\nwebhook-id: msg_cut\r\n"
                           b"content-length: 100\r\n\r\n{\"type\": \"analysis.succ")
            sender.shutdown(socket.SHUT_WR)
            assert sender.recv(1024) == b"", "no answer: the connection is closed"
        post(hook.url, {"type": "analysis.succeeded"}, webhook_id="msg_whole")
        cut, whole = hook.requests
        assert (cut.webhook_id, cut.status, cut.type) == ("msg_cut", None, None)
        assert (whole.webhook_id, whole.status, whole.type) == ("msg_whole", 200, "analysis.succeeded")
        assert [r.webhook_id for r in hook.of_type("analysis.succeeded")] == ["msg_whole"]


def test_a_stopped_receiver_refuses_connections_and_comes_back_on_its_port():
    hook = Receiver(204)
    try:
        url, port = hook.url, hook.port
        assert post(url, {"type": "t"}).status_code == 204
        hook.stop()
        with pytest.raises(httpx.ConnectError):
            post(url, {"type": "t"})
        hook.start()
        assert hook.port == port
        assert post(url, {"type": "t"}).status_code == 204
    finally:
        hook.stop()


def test_while_holding_a_request_is_read_and_never_answered():
    with Receiver() as hook:
        hook.holding.set()
        outcome: list[object] = []

        def send() -> None:
            try:
                outcome.append(post(hook.url, {"type": "t"}).status_code)
            except httpx.HTTPError as error:
                outcome.append(type(error).__name__)

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 5
        while hook.held == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        hook.holding.clear()
        hook.release.set()
        sender.join(10)
        assert outcome and outcome[0] != 200, "the sender got no answer"
        assert hook.requests[0].status is None


def test_keep_alive_serves_several_requests_on_one_connection():
    with Receiver(204, keep_alive=True) as hook, httpx.Client() as client:
        for _ in range(3):
            assert client.post(hook.url, content=b"{}").status_code == 204
        assert hook.connections == 1


def test_a_blackhole_accepts_and_never_answers():
    hole = blackhole()
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"http://127.0.0.1:{hole.getsockname()[1]}/", content=b"{}", timeout=0.3)
    finally:
        hole.close()


def test_a_slow_reply_is_slow():
    with Receiver(Reply(200, delay_s=2.0)) as hook, pytest.raises(httpx.ReadTimeout):
        httpx.post(hook.url, content=b"{}", timeout=0.3)


def test_the_port_is_bound_to_the_host_given():
    with Receiver(host="127.0.0.2") as hook:
        assert hook.url.startswith("http://127.0.0.2:")
        with socket.create_connection(("127.0.0.2", hook.port), timeout=2):
            pass
