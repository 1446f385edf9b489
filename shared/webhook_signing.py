"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

Signing goes through the reference `standardwebhooks` library so that what we send is, by
construction, what receivers using that library accept.
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MESSAGE_ID_PREFIX = "msg_"
_MESSAGE_ID = re.compile(r"[A-Za-z0-9_\-]{1,255}")


def generate_secret() -> str:
    """A new endpoint signing secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def new_message_id() -> str:
    """A new `webhook-id`; one per event, reused on every retry of that event."""
    return MESSAGE_ID_PREFIX + uuid.uuid4().hex


def sign(
    secret: str | Sequence[str], msg_id: str, timestamp: datetime | int, body: str
) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`.

    `secret` may be several secrets while one is being rotated: the signature header then
    carries one `v1,` signature per secret and receivers accept any of them.
    `timestamp` is Unix seconds or a timezone-aware datetime.
    """
    if not _MESSAGE_ID.fullmatch(msg_id):
        raise ValueError(
            f"webhook message id {msg_id!r} must be 1-255 letters, digits, '_' or '-'"
        )
    moment = _as_utc(timestamp)
    keys = [secret] if isinstance(secret, str) else list(secret)
    if not keys:
        raise ValueError("at least one webhook secret is needed to sign a message")
    signatures = [Webhook(key).sign(msg_id=msg_id, timestamp=moment, data=body) for key in keys]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


def _as_utc(timestamp: datetime | int) -> datetime:
    # Webhook.sign replaces tzinfo with UTC instead of converting, so an aware non-UTC
    # datetime would be signed for the wrong instant; naive ones are ambiguous.
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, datetime)):
        raise TypeError("webhook timestamp must be Unix seconds (int) or an aware datetime")
    if isinstance(timestamp, int):
        return datetime.fromtimestamp(timestamp, tz=UTC)
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise ValueError("webhook timestamp datetime must be timezone-aware")
    return timestamp.astimezone(UTC).replace(microsecond=0)


def signing_secrets(
    current: str, previous: str | None, previous_expires_at: datetime | None, now: datetime
) -> list[str]:
    """The secrets to sign with: the current one, plus the one it replaced during its grace period."""
    if previous and previous_expires_at is not None and previous_expires_at > now:
        return [current, previous]
    return [current]
