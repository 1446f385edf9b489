"""Traces (issue 25, shared/tracing.py): an incoming W3C traceparent is honoured, kept with the
job, continued by the worker's spans and handed to every receiver, on or off. Spans are read
from OpenTelemetry's in-memory exporter; the receiver is a real loopback HTTP server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from api.middleware import Edge
from devstack.receiver import Receiver
from shared import tracing
from shared.config import Settings
from shared.lifecycle import Claim
from shared.ssrf import parse_allow_cidrs
from worker.delivery import DeliveryClient, send

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
LOOPBACK = parse_allow_cidrs("127.0.0.0/8")


def _hex(number: int, width: int) -> str:
    return format(number, f"0{width}x")


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize(("environ", "named"), [
    ({}, []),
    ({"OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": " OTLP, console "}, ["otlp", "console"]),
])
def test_only_a_named_exporter_turns_traces_on(environ, named):
    assert tracing.exporters_named(environ) == named


def test_without_an_exporter_nothing_is_installed():
    from opentelemetry import trace

    assert tracing.configure_tracing("dermasentinel-test", environ={}) is False
    assert not tracing.enabled()
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)  # still the API's no-op proxy


@pytest.mark.parametrize("value", [
    None, "", "garbage", f"00-{'0' * 32}-{CALLER_SPAN}-01", f"00-{TRACE_ID}-{'0' * 16}-01",
    TRACEPARENT.upper(), TRACEPARENT + "-extra",
])
def test_malformed_traceparents_are_ignored(value):
    assert not tracing.valid(value)
    assert tracing.context_of(value) is None
    with tracing.span("x", parent=value):
        assert tracing.current_traceparent() is None


# ---------------------------------------------------------------- off: honoured all the same

def test_off_an_incoming_traceparent_is_what_the_job_stores_and_sends():
    assert not tracing.enabled()
    with tracing.span("request", parent=tracing.extract({"traceparent": TRACEPARENT})):
        assert tracing.current_traceparent() == TRACEPARENT
        assert tracing.inject({})["traceparent"] == TRACEPARENT
    assert tracing.current_traceparent() is None  # detached after the block


# ---------------------------------------------------------------- on: spans in the caller's trace

def test_the_request_span_is_a_child_of_the_callers_span(spans):
    settings = Settings(_env_file=None)

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"stored": tracing.current_traceparent()})

    app = Edge(Starlette(routes=[Route("/v1/things/{id}", endpoint, methods=["POST"])]), settings)
    with TestClient(app) as client:
        stored = client.post("/v1/things/7", headers={"traceparent": TRACEPARENT}).json()["stored"]
        untraced = client.post("/v1/things/8").json()["stored"]

    (request,) = spans.get_finished_spans()[:1]
    assert request.kind == SpanKind.SERVER and request.name == "POST /v1/things/{id}"
    assert _hex(request.context.trace_id, 32) == TRACE_ID
    assert _hex(request.parent.span_id, 16) == CALLER_SPAN and request.parent.is_remote
    assert request.attributes["http.response.status_code"] == 200
    # What a submit stores: the same trace, the request's own span as the parent.
    assert stored == f"00-{TRACE_ID}-{_hex(request.context.span_id, 16)}-01"
    # Without a traceparent the request starts a trace of its own.
    assert tracing.trace_id_of(untraced) not in (None, TRACE_ID)


def test_a_jobs_spans_continue_its_stored_trace(spans):
    from worker.analysis import _job_trace

    submitted = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    claimed = submitted + timedelta(seconds=3)
    claim = Claim(uuid.uuid4(), 1, uuid.uuid4(), "k", None, "unknown", "unknown", None, None,
                  priority="interactive", created_at=submitted, started_at=claimed, traceparent=TRACEPARENT)
    base = int(claimed.timestamp() * 1e9)
    marks = [("fetch", base, base + 10), ("gate1", base + 10, base + 30), ("gate2", base + 30, base + 40)]
    with _job_trace(claim, marks):
        # What the outcome's event is stored with: this trace, the recording span as parent.
        stored_with = tracing.within(claim.traceparent)
    by_name = {span.name: span for span in spans.get_finished_spans()}
    assert set(by_name) == {"queue wait", "analysis", "fetch", "gate1", "gate2", "record outcome"}
    assert {_hex(span.context.trace_id, 32) for span in by_name.values()} == {TRACE_ID}
    wait = by_name["queue wait"]
    assert _hex(wait.parent.span_id, 16) == CALLER_SPAN
    assert (wait.end_time - wait.start_time) / 1e9 == pytest.approx(3.0)
    assert wait.attributes["dermasentinel.lane"] == "interactive"
    job = by_name["analysis"]
    assert _hex(job.parent.span_id, 16) == CALLER_SPAN and job.start_time == base
    for stage in ("fetch", "gate1", "gate2", "record outcome"):
        assert by_name[stage].parent.span_id == job.context.span_id, stage
    assert by_name["gate1"].end_time - by_name["gate1"].start_time == 20
    assert stored_with == f"00-{TRACE_ID}-{_hex(by_name['record outcome'].context.span_id, 16)}-01"


def test_within_keeps_the_jobs_trace_whoever_ends_it(spans):
    # A sweeper or a cancel request in another trace: the event still belongs to the job's.
    with tracing.span("sweep"):
        assert tracing.within(TRACEPARENT) == TRACEPARENT
    assert tracing.within(None) is None


def test_every_delivery_hands_the_receiver_its_trace(spans):
    receiver = Receiver(200, path="/hooks")
    try:
        with DeliveryClient() as client, tracing.span("deliver webhook", parent=TRACEPARENT) as delivery:
            outcome, _ = send("POST", receiver.url, content=b"{}", headers={"content-type": "application/json"},
                              allow_cidrs=LOOPBACK, client=client)
        assert outcome.ok
        (request,) = receiver.requests
    finally:
        receiver.close()
    exchange = next(span for span in spans.get_finished_spans() if span.kind == SpanKind.CLIENT)
    assert exchange.parent.span_id == delivery.get_span_context().span_id
    assert exchange.attributes["http.response.status_code"] == 200
    # The receiver's parent is the exchange's span, in the caller's trace.
    assert request.headers["traceparent"] == f"00-{TRACE_ID}-{_hex(exchange.context.span_id, 16)}-01"


def test_off_the_receiver_still_gets_the_callers_trace():
    receiver = Receiver(200, path="/hooks")
    try:
        with DeliveryClient() as client, tracing.span("deliver webhook", parent=TRACEPARENT):
            send("POST", receiver.url, content=b"{}", allow_cidrs=LOOPBACK, client=client)
        with DeliveryClient() as client:
            send("POST", receiver.url, content=b"{}", allow_cidrs=LOOPBACK, client=client)
        traced, untraced = receiver.requests
    finally:
        receiver.close()
    assert traced.headers["traceparent"] == TRACEPARENT
    assert "traceparent" not in untraced.headers  # no trace, no header (and never baggage)
    assert "baggage" not in traced.headers


def test_the_standard_variables_configure_a_process():
    """OTEL_TRACES_EXPORTER=console and OTEL_SERVICE_NAME, as an operator sets them, in a fresh
    process (OpenTelemetry lets a process install its provider once)."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "from opentelemetry import trace\nfrom shared import tracing\n"
        "assert tracing.configure_tracing('dermasentinel-api')\n"
        f"with tracing.span('POST', parent={TRACEPARENT!r}):\n    pass\n"
        "trace.get_tracer_provider().shutdown()\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "ds-operator-name"}
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    exported = json.loads(result.stdout)
    assert exported["name"] == "POST" and exported["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert exported["parent_id"] == f"0x{CALLER_SPAN}"
    assert exported["resource"]["attributes"]["service.name"] == "ds-operator-name"
