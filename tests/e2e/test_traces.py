"""Issue 25's target: a ``traceparent`` sent with a submit arrives, same trace id, at the webhook
receiver. Through the real API, broker, GPU worker, report worker and io worker (separate
processes), to a real loopback receiver: what the receiver records is the proof."""

from __future__ import annotations

import json
import secrets

from devstack import Receiver
from shared import tracing
from tests.e2e.test_request_webhooks import submit


def test_a_submits_traceparent_reaches_the_webhook_receiver(api, worker, beat, wait):
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    hook = Receiver(200, per_message=True)
    try:
        answer = submit(api, 11, headers={"traceparent": traceparent}, external_id="traced", webhook_url=hook.url)
        assert answer.status_code == 202, answer.text
        analysis_id = answer.json()["id"]
        # The outcome's event (the GPU worker) and report_ready (the report worker).
        wait(lambda: {json.loads(r.body)["type"] for r in hook.requests} >= {"analysis.report_ready"}
             and len(hook.requests) >= 2, timeout=480, message="both events at the receiver")
        requests = list(hook.requests)
    finally:
        hook.close()
    assert {json.loads(r.body)["data"]["id"] for r in requests} == {analysis_id}
    for request in requests:
        received = request.headers.get("traceparent")
        assert tracing.valid(received), (json.loads(request.body)["type"], received)
        assert tracing.trace_id_of(received) == trace_id, json.loads(request.body)["type"]

    # A submit without one is not joined to anybody's trace.
    other = submit(api, 12, external_id="untraced")
    assert other.status_code == 202 and other.json()["id"] != analysis_id
