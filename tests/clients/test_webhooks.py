"""``webhooks.verify`` accepts what the API signs (shared.webhook_signing, the reference
``standardwebhooks`` library) and nothing else."""

from __future__ import annotations

import json
import time

import pytest
from dermasentinel_client import WebhookVerificationError, verify

from shared.webhook_signing import generate_secret, new_message_id, sign

BODY = json.dumps({"type": "analysis.succeeded", "data": {"id": "a1", "status": "succeeded"}})


def test_a_signed_delivery_verifies_and_gives_the_event():
    secret = generate_secret()
    headers = sign(secret, new_message_id(), int(time.time()), BODY)
    assert verify(headers, BODY.encode(), secret) == json.loads(BODY)
    # Header names as a web framework may spell them.
    assert verify({k.title(): v for k, v in headers.items()}, BODY, secret)["type"] == "analysis.succeeded"


def test_during_a_rotation_either_secret_verifies():
    old, new = generate_secret(), generate_secret()
    headers = sign([new, old], new_message_id(), int(time.time()), BODY)
    assert verify(headers, BODY, old) == verify(headers, BODY, new)


@pytest.mark.parametrize("tamper", ["body", "secret", "id", "stale", "future", "missing"])
def test_anything_else_is_refused(tamper):
    secret = generate_secret()
    now = int(time.time())
    sent_at = {"stale": now - 600, "future": now + 600}.get(tamper, now)
    headers = sign(secret, new_message_id(), sent_at, BODY)
    body = BODY
    if tamper == "body":
        body = BODY.replace("a1", "a2")
    elif tamper == "secret":
        secret = generate_secret()
    elif tamper == "id":
        headers["webhook-id"] = new_message_id()
    elif tamper == "missing":
        del headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError):
        verify(headers, body, secret)
