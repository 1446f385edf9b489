"""Retries against a real HTTP server on loopback: 429 and 503 are retried after their
``Retry-After`` with the submission's one Idempotency-Key; a call still refused after the
retries is an ``ApiError``; a refused connection is retried, then httpx's error."""

from __future__ import annotations

import json

import httpx
import pytest
from dermasentinel_client import ApiError, Client, RetryPolicy

from devstack import Receiver, Reply, free_port

PROBLEM = {"type": "https://dermasentinel.dev/problems/invalid_input", "title": "Invalid input", "status": 422,
           "detail": "age: must be at most 120", "instance": "/v1/analyses"}
JSON = {"content-type": "application/problem+json"}


def busy(status: int, retry_after: str) -> Reply:
    body = {**PROBLEM, "status": status, "title": "busy", "detail": "try again later"}
    return Reply(status, json.dumps(body).encode(), {**JSON, "retry-after": retry_after})


def test_429_is_retried_after_its_retry_after_with_the_same_idempotency_key():
    script = (busy(429, "1"), busy(429, "1"), Reply(422, json.dumps(PROBLEM).encode(), JSON))
    with (Receiver(*script) as api, Client(base_url=api.url, api_key="dsk_test") as client,
          pytest.raises(ApiError) as refused):
        client.analyses.create(b"\xff\xd8 not really a jpeg", age=130)
    assert refused.value.status_code == 422 and refused.value.code == "invalid_input"
    assert str(refused.value) == "HTTP 422: age: must be at most 120"
    posts = [r for r in api.requests if r.method == "POST"]
    assert len(posts) == 3
    keys = {r.headers["idempotency-key"] for r in posts}
    assert len(keys) == 1 and next(iter(keys)).startswith("sdk-"), "one key, made once, on every attempt"
    gaps = [b.received_at - a.received_at for a, b in zip(posts, posts[1:], strict=False)]
    assert all(gap >= 0.95 for gap in gaps), f"Retry-After: 1 not honoured: {gaps}"


def test_503_still_busy_after_the_retries_is_the_api_s_error():
    with (Receiver(busy(503, "0")) as api,
          Client(base_url=api.url, api_key="dsk_test", retry=RetryPolicy(max_retries=2)) as client,
          pytest.raises(ApiError) as refused):
        client.batches.get("b1")
    assert refused.value.status_code == 503 and len(api.requests) == 3


def test_a_refused_connection_is_retried_then_raised():
    client = Client(base_url=f"http://127.0.0.1:{free_port()}", api_key="dsk_test",
                    retry=RetryPolicy(max_retries=1, backoff=0.01))
    with client, pytest.raises(httpx.ConnectError):
        client.batches.get("b1")
