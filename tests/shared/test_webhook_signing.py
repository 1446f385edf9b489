import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from shared.webhook_signing import generate_secret, new_message_id, sign

BODY = json.dumps(
    {"type": "analysis.succeeded", "timestamp": "2025-01-01T00:00:00Z", "data": {"id": "an_1", "note": "ß✓"}},
    ensure_ascii=False,
)


def test_generated_secrets_are_standard_webhooks_secrets_with_enough_entropy():
    first, second = generate_secret(), generate_secret()
    assert first != second
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"))) >= 24
    Webhook(first)


def test_message_ids_are_unique_and_header_safe():
    ids = {new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("msg_") and i.replace("_", "").isalnum() for i in ids)


def test_reference_library_accepts_our_signature_and_returns_the_payload():
    secret = generate_secret()
    headers = sign(secret, "msg_abc", int(time.time()), BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    assert Webhook(secret).verify(BODY.encode("utf-8"), headers) == json.loads(BODY)


def test_signature_is_hmac_sha256_of_id_timestamp_body_as_the_spec_says():
    secret = generate_secret()
    headers = sign(secret, "msg_spec", 1700000000, BODY)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"msg_spec.1700000000.{BODY}".encode(), hashlib.sha256).digest()
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


def test_tampered_body_wrong_secret_or_other_id_fail_verification():
    secret = generate_secret()
    headers = sign(secret, "msg_1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace("an_1", "an_2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg_2"})


def test_non_utc_datetime_is_signed_for_the_same_instant():
    secret = generate_secret()
    now = datetime.now(UTC).replace(microsecond=0)
    in_paris = now.astimezone(timezone(timedelta(hours=2)))
    utc_headers = sign(secret, "msg_tz", now, BODY)
    paris_headers = sign(secret, "msg_tz", in_paris, BODY)
    assert paris_headers == utc_headers
    assert utc_headers["webhook-timestamp"] == str(int(now.timestamp()))
    Webhook(secret).verify(BODY, paris_headers)


def test_naive_datetime_is_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        sign(generate_secret(), "msg_1", datetime.now(), BODY)


def test_rotation_signs_with_every_secret_and_either_verifies():
    old, new = generate_secret(), generate_secret()
    headers = sign([new, old], "msg_rot", int(time.time()), BODY)
    assert headers["webhook-signature"].count("v1,") == 2
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)


@pytest.mark.parametrize("bad_id", ["", "msg.1", "msg_1\r\nX-Evil: 1", "msg 1", "m" * 256])
def test_message_ids_that_could_confuse_the_signed_string_or_headers_are_rejected(bad_id):
    with pytest.raises(ValueError):
        sign(generate_secret(), bad_id, int(time.time()), BODY)
