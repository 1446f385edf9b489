"""Verifying the API's webhooks: Standard Webhooks signatures (https://www.standardwebhooks.com/).

The API signs with the reference ``standardwebhooks`` library; this is the same scheme in the
standard library alone: ``webhook-signature`` holds one or more ``v1,<base64 HMAC-SHA256>``
(two while a secret is being rotated) of ``"{webhook-id}.{webhook-timestamp}.{body}"``, keyed
with the base64 bytes after the secret's ``whsec_`` prefix; the timestamp must be within
``tolerance`` seconds of now, so a captured delivery cannot be replayed later."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from dermasentinel_client.errors import DermaSentinelError

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 5 * 60


class WebhookVerificationError(DermaSentinelError):
    """The delivery is not from the API with this secret (or is too old, or too new)."""


def verify(
    headers: Mapping[str, str], body: bytes | str, secret: str, *, tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """The event (the body's JSON) if ``headers`` carry a valid signature of ``body`` by
    ``secret`` (the endpoint's ``whsec_…``); ``WebhookVerificationError`` if not. ``body`` must
    be the raw bytes received, before any JSON parsing."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, timestamp, signatures = (lower.get(name) for name in ("webhook-id", "webhook-timestamp",
                                                                  "webhook-signature"))
    if not (msg_id and timestamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not Unix seconds") from None
    current = time.time() if now is None else now
    if sent_at < current - tolerance:
        raise WebhookVerificationError("the message is too old (webhook-timestamp)")
    if sent_at > current + tolerance:
        raise WebhookVerificationError("the message is too new (webhook-timestamp)")
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    expected = _signature(secret, msg_id, sent_at, text)
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):
            return dict(json.loads(text))
    raise WebhookVerificationError("no matching signature: is this the endpoint's current secret?")


def _signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise WebhookVerificationError("the secret is not a whsec_ secret (base64 after the prefix)") from None
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")
