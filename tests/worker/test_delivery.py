import ipaddress
import json
import random
import shutil
import socket
import ssl
import subprocess
import time

import httpx
import pytest
from standardwebhooks import Webhook

from devstack.receiver import Receiver, Reply
from shared import ssrf
from shared.ssrf import parse_allow_cidrs
from shared.webhook_signing import generate_secret, new_message_id
from worker.delivery import (
    DEFAULT_RETRY_SCHEDULE,
    RESPONSE_EXCERPT_BYTES,
    AttemptResult,
    DeliveryClient,
    deliver,
    next_attempt_delay,
    parse_retry_schedule,
)

LOOPBACK = parse_allow_cidrs("127.0.0.0/8")
BODY = json.dumps(
    {
        "type": "analysis.succeeded",
        "timestamp": "2025-01-01T00:00:00Z",
        "data": {"analysis_id": "an_1", "external_id": "ehr-42", "status": "succeeded"},
    }
)


@pytest.fixture
def receivers():
    started: list[Receiver] = []

    def start(*replies: Reply, **kwargs) -> Receiver:
        receiver = Receiver(*replies, path="/hooks/dermasentinel", keep_alive=True, **kwargs)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.close()


@pytest.fixture
def client():
    with DeliveryClient() as delivery_client:
        yield delivery_client


class _FixedRng:
    def uniform(self, a: float, b: float) -> float:
        return 1.0


def test_receiver_failing_twice_then_accepting_gets_one_message_signed_every_time(receivers, client):
    receiver = receivers(Reply(500, b"db down"), Reply(500, b"db down"), Reply(200, b"thanks"))
    secret, msg_id = generate_secret(), new_message_id()
    schedule = parse_retry_schedule("5,300,1800")

    results, waits = [], []
    for attempt in range(1, len(schedule) + 2):
        result = deliver(receiver.url, secret, msg_id, BODY, allow_cidrs=LOOPBACK, client=client)
        results.append(result)
        if result.ok:
            break
        waits.append(next_attempt_delay(attempt, schedule, rng=_FixedRng()))

    assert [r.status_code for r in results] == [500, 500, 200]
    assert [r.ok for r in results] == [False, False, True]
    assert results[0].error == "HTTP 500" and results[0].response_excerpt == "db down"
    assert results[-1].error is None and results[-1].response_excerpt == "thanks"
    assert waits == [5, 300]
    assert len(receiver.requests) == 3
    for request in receiver.requests:
        assert Webhook(secret).verify(request.body, request.headers) == json.loads(BODY)
        assert request.body == BODY
        assert request.method == "POST" and request.path == "/hooks/dermasentinel"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith("DermaSentinel-Webhooks/")
        assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert {r.headers["webhook-id"] for r in receiver.requests} == {msg_id}


def test_gone_asks_to_disable_the_endpoint(receivers, client):
    receiver = receivers(Reply(410, b"unsubscribed"))
    result = deliver(receiver.url, generate_secret(), new_message_id(), BODY, allow_cidrs=LOOPBACK, client=client)
    assert (result.ok, result.status_code, result.disable_endpoint) == (False, 410, True)
    other = receivers(Reply(404))
    result = deliver(other.url, generate_secret(), new_message_id(), BODY, allow_cidrs=LOOPBACK, client=client)
    assert (result.ok, result.status_code, result.disable_endpoint) == (False, 404, False)


def test_redirect_is_reported_and_not_followed(receivers, client):
    internal = receivers(Reply(200))
    redirecting = receivers(Reply(302, headers={"location": internal.url}))
    result = deliver(redirecting.url, generate_secret(), new_message_id(), BODY, allow_cidrs=LOOPBACK, client=client)
    assert (result.ok, result.status_code) == (False, 302)
    assert "redirect" in result.error and "not followed" in result.error
    assert internal.requests == []


def test_slow_receiver_is_reported_as_timeout(receivers, client):
    receiver = receivers(Reply(200, delay_s=3.0))
    started = time.monotonic()
    result = deliver(
        receiver.url, generate_secret(), new_message_id(), BODY, allow_cidrs=LOOPBACK, timeout=0.5, client=client
    )
    assert time.monotonic() - started < 2.0
    assert (result.ok, result.status_code) == (False, None)
    assert result.error.startswith("timed out after 0.5 s")


def test_receiver_dripping_bytes_cannot_outlast_the_overall_timeout(receivers, client):
    # Each byte arrives well within the per-read timeout; only a total deadline stops it.
    receiver = receivers(Reply(200, drip_headers_s=4.0))
    started = time.monotonic()
    result = deliver(
        receiver.url, generate_secret(), new_message_id(), BODY, allow_cidrs=LOOPBACK, timeout=0.6, client=client
    )
    assert time.monotonic() - started < 2.0
    assert not result.ok and result.error.startswith("timed out")


def test_response_excerpt_is_cut_to_one_kib(receivers, client):
    receiver = receivers(Reply(500, b"x" * 200_000))
    result = deliver(receiver.url, generate_secret(), new_message_id(), BODY, allow_cidrs=LOOPBACK, client=client)
    assert result.status_code == 500
    assert result.response_excerpt == "x" * RESPONSE_EXCERPT_BYTES


def test_connection_refused_is_returned_not_raised(client):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = deliver(
        f"http://127.0.0.1:{port}/", generate_secret(), new_message_id(), BODY, allow_cidrs=LOOPBACK, client=client
    )
    assert (result.ok, result.status_code) == (False, None)
    assert result.error.startswith("ConnectError")


def test_internal_url_is_refused_at_send_time_and_nothing_is_sent(receivers, client):
    receiver = receivers(Reply(200))
    for url in (receiver.url, f"http://2130706433:{receiver.port}/", f"http://[::ffff:127.0.0.1]:{receiver.port}/"):
        result = deliver(url, generate_secret(), new_message_id(), BODY, allow_cidrs=[], client=client)
        assert not result.ok and result.error.startswith("refused: ")
        assert "loopback" in result.error
    assert receiver.requests == []


def test_other_spellings_of_an_allowed_address_reach_the_same_receiver(receivers, client):
    receiver = receivers(Reply(204))
    for url in (f"http://2130706433:{receiver.port}/", f"http://127.1:{receiver.port}/", f"http://[::ffff:127.0.0.1]:{receiver.port}/"):
        result = deliver(url, generate_secret(), new_message_id(), BODY, allow_cidrs=LOOPBACK, client=client)
        assert result.ok, result.error
    assert len(receiver.requests) == 3


def _receivers_on_same_port(receivers) -> tuple[Receiver, Receiver]:
    for _ in range(20):
        legit = receivers(Reply(200, b"legit"), host="127.0.0.2")
        try:
            internal = receivers(Reply(200, b"internal secrets"), host="127.0.0.1", port=legit.port)
        except OSError:
            continue
        return legit, internal
    pytest.skip("could not bind 127.0.0.1 and 127.0.0.2 on one port")


def test_dns_rebinding_after_the_check_cannot_reach_an_internal_address(receivers, client, monkeypatch):
    """The name resolves to an allowed address at check time and to loopback afterwards.

    127.0.0.2 stands in for the receiver's public address (it is the only allowed
    network) and 127.0.0.1 for the internal service the attacker wants to reach.
    """
    legit, internal = _receivers_on_same_port(receivers)
    answers = iter([[ipaddress.ip_address("127.0.0.2")]])
    checks = []

    def rebinding_resolver(host: str, port: int) -> list:
        checks.append(host)
        return next(answers, [ipaddress.ip_address("127.0.0.1")])

    real_getaddrinfo = socket.getaddrinfo

    def rebound_getaddrinfo(host, port, *args, **kwargs):
        # Anything that resolves the name again (an unpinned client would) gets loopback.
        if host == "rebind.test":
            host = "127.0.0.1"
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(ssrf, "resolve_host", rebinding_resolver)
    monkeypatch.setattr(socket, "getaddrinfo", rebound_getaddrinfo)
    allow = parse_allow_cidrs("127.0.0.2/32")
    url = f"http://rebind.test:{legit.port}/hook"

    first = deliver(url, generate_secret(), new_message_id(), BODY, allow_cidrs=allow, client=client)
    assert first.ok and first.response_excerpt == "legit"
    assert legit.requests[0].headers["host"] == f"rebind.test:{legit.port}"

    second = deliver(url, generate_secret(), new_message_id(), BODY, allow_cidrs=allow, client=client)
    assert not second.ok and second.error.startswith("refused: ")

    assert checks == ["rebind.test", "rebind.test"]
    assert len(legit.requests) == 1
    assert internal.requests == []


def test_delivery_client_cannot_connect_outside_deliver(receivers):
    receiver = receivers(Reply(200))
    with DeliveryClient() as unpinned, pytest.raises(httpx.ConnectError, match="not the address checked"):
        unpinned.post(receiver.url, content=b"{}")
    assert receiver.requests == []


def test_a_plain_httpx_client_is_refused_because_it_would_resolve_names_itself():
    with httpx.Client() as plain, pytest.raises(TypeError, match="DeliveryClient"):
        deliver("https://example.com/", generate_secret(), new_message_id(), BODY, allow_cidrs=[], client=plain)


@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=webhook.test", "-addext", "subjectAltName=DNS:webhook.test",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_to_a_pinned_address_still_verifies_the_certificate_for_the_host_name(
    receivers, certificate, monkeypatch
):
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    receiver = receivers(Reply(200, b"ok"), tls=server_tls)
    monkeypatch.setattr(ssrf, "resolve_host", lambda host, port: [ipaddress.ip_address("127.0.0.1")])
    trusting = ssl.create_default_context(cafile=str(cert))

    with DeliveryClient(ssl_context=trusting) as tls_client:
        good = deliver(
            f"https://webhook.test:{receiver.port}/hook", generate_secret(), new_message_id(), BODY,
            allow_cidrs=LOOPBACK, client=tls_client,
        )
        wrong_name = deliver(
            f"https://other.test:{receiver.port}/hook", generate_secret(), new_message_id(), BODY,
            allow_cidrs=LOOPBACK, client=tls_client,
        )
    with DeliveryClient() as default_trust:
        untrusted = deliver(
            f"https://webhook.test:{receiver.port}/hook", generate_secret(), new_message_id(), BODY,
            allow_cidrs=LOOPBACK, client=default_trust,
        )

    assert good.ok, good.error
    assert receiver.requests[0].headers["host"] == f"webhook.test:{receiver.port}"
    assert not wrong_name.ok and "certificate verify failed" in wrong_name.error.lower()
    assert not untrusted.ok and "certificate verify failed" in untrusted.error.lower()
    assert len(receiver.requests) == 1


def test_deliveries_per_second_to_a_fast_receiver_over_one_reused_client(receivers, client):
    receiver = receivers(Reply(204))
    secret, count = generate_secret(), 500
    deliver(receiver.url, secret, new_message_id(), BODY, allow_cidrs=LOOPBACK, client=client)
    started = time.perf_counter()
    for _ in range(count):
        result = deliver(receiver.url, secret, new_message_id(), BODY, allow_cidrs=LOOPBACK, client=client)
        assert result.ok
    rate = count / (time.perf_counter() - started)
    print(f"\nwebhook deliveries/s (sequential, one DeliveryClient, loopback): {rate:.0f}")
    assert receiver.connections == 1, "keep-alive connection should be reused"
    assert rate > 50


def test_parse_retry_schedule():
    assert parse_retry_schedule("5, 300,1800 ") == [5, 300, 1800]
    assert parse_retry_schedule("") == []
    for bad in ("5,,300", "5,-1", "1.5", "5m", "abc", "٣"):
        with pytest.raises(ValueError, match="WEBHOOK_RETRY_SCHEDULE entry"):
            parse_retry_schedule(bad)


def test_default_schedule_spans_about_three_days():
    assert DEFAULT_RETRY_SCHEDULE[:2] == (5, 300)
    assert 2.5 * 86400 <= sum(DEFAULT_RETRY_SCHEDULE) <= 4 * 86400


def test_retry_delays_follow_the_schedule_with_twenty_percent_jitter_then_stop():
    schedule = [5, 300, 1800]
    rng = random.Random(7)
    for attempt, base in enumerate(schedule, start=1):
        delays = [next_attempt_delay(attempt, schedule, rng=rng) for _ in range(500)]
        assert all(0.8 * base <= d <= 1.2 * base for d in delays)
        assert max(delays) - min(delays) > 0.3 * base, "jitter should spread retries"
    assert next_attempt_delay(len(schedule) + 1, schedule) is None
    assert next_attempt_delay(1, []) is None
    with pytest.raises(ValueError):
        next_attempt_delay(0, schedule)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_internal_targets_are_logged_blind_status_and_class_only(receivers, client):
    leaky = receivers(Reply(500, b"redis_version:7.2 role:master"), Reply(302, headers={"location": "http://10.0.0.9/x"}))
    first = deliver(leaky.url, generate_secret(), new_message_id(), BODY, allow_cidrs=LOOPBACK, client=client)
    assert first.internal and first.response_excerpt, "the transport saw the body"
    logged = first.as_logged()
    shown = (logged.status_code, logged.error, logged.error_class, logged.response_excerpt)
    assert shown == (500, "http_5xx", "http_5xx", None)
    redirect = deliver(
        leaky.url, generate_secret(), new_message_id(), BODY, allow_cidrs=LOOPBACK, client=client
    ).as_logged()
    assert redirect.error == "http_3xx" and "10.0.0.9" not in str(redirect)


def test_closed_and_silent_internal_ports_look_the_same_in_the_log(client):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nothing ever answers
    try:
        closed = deliver(f"http://127.0.0.1:{_closed_port()}/", generate_secret(), new_message_id(), BODY,
                         allow_cidrs=LOOPBACK, client=client)
        quiet = deliver(f"http://127.0.0.1:{silent.getsockname()[1]}/", generate_secret(), new_message_id(), BODY,
                        allow_cidrs=LOOPBACK, timeout=0.5, client=client)
    finally:
        silent.close()
    assert (closed.error_class, quiet.error_class) == ("connect_error", "timeout")
    logged = [(r.status_code, r.error, r.error_class, r.latency_ms, r.response_excerpt)
              for r in (closed.as_logged(), quiet.as_logged())]
    assert logged == [(None, "no_response", "no_response", None, None)] * 2


def test_the_worker_log_says_what_the_delivery_record_says(client):
    """Issue 25: the record said `no_response` where the worker's log said `connect_error`."""
    from worker.webhooks import attempt_line

    closed = deliver(f"http://127.0.0.1:{_closed_port()}/", generate_secret(), new_message_id(), BODY,
                     allow_cidrs=LOOPBACK, client=client)
    line = attempt_line(1, "retry", closed, closed.as_logged())
    assert line.startswith("webhook attempt 1: retry (status None, no_response, cause connect_error")
    assert line.split(", ")[1] == closed.as_logged().error_class == "no_response"
    public = AttemptResult(ok=False, status_code=503, latency_ms=12.0, error="HTTP 503", response_excerpt="",
                           disable_endpoint=False, error_class="http_5xx")
    assert attempt_line(2, "retry", public, public.as_logged()) == (
        "webhook attempt 2: retry (status 503, http_5xx, 12 ms)"
    )


def test_public_targets_keep_their_detail_in_the_log():
    public = deliver("http://93.184.215.14:1/", generate_secret(), new_message_id(), BODY, allow_cidrs=[],
                     timeout=0.3, connect_timeout=0.2)
    assert not public.internal
    assert public.as_logged() == public


def test_during_a_secret_rotation_both_secrets_sign(receivers, client):
    receiver = receivers(Reply(204))
    old, new = generate_secret(), generate_secret()
    result = deliver(receiver.url, [new, old], new_message_id(), BODY, allow_cidrs=LOOPBACK, client=client)
    assert result.ok
    (request,) = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(request.body, request.headers) == json.loads(BODY)
