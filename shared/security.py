"""API keys and secrets at rest.

API keys are shown once and stored only as a SHA-256 hash (keys are 256-bit random, so a
fast hash is enough; there is nothing to brute-force). Webhook signing secrets must be
recoverable to sign with, so they are encrypted instead: Fernet (AES-128-CBC + HMAC-SHA256)
under `SECRET_KEY`, several keys at once while one is being rotated.
"""

from __future__ import annotations

import hashlib
import secrets
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import Settings

KEY_PREFIX = "dsk_"


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 6]


class SecretDecryptionError(RuntimeError):
    """A stored secret was encrypted under a key that is no longer configured."""


class SecretBox:
    """Encrypts with the first key, decrypts with any (MultiFernet)."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is needed")
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise SecretDecryptionError(
                "a stored webhook secret cannot be decrypted with any key in DERMASENTINEL_SECRET_KEY; "
                "put the key it was encrypted with back in the list (after the new one)"
            ) from None

    def reseal(self, token: str) -> str:
        """The same secret, encrypted under the first (newest) key."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise SecretDecryptionError("a stored webhook secret cannot be decrypted with any configured key") from None


def secret_box(settings: Settings) -> SecretBox:
    return _box(tuple(settings.secret_keys))


@lru_cache(maxsize=4)
def _box(keys: tuple[str, ...]) -> SecretBox:
    return SecretBox(list(keys))


def reencrypt_webhook_secrets(session: Session, box: SecretBox) -> int:
    """Re-encrypt every stored webhook secret under the box's first key, so older keys can
    leave SECRET_KEY. Returns how many endpoints were rewritten."""
    from shared.tables import WebhookEndpoint

    count = 0
    for endpoint in session.execute(select(WebhookEndpoint).with_for_update()).scalars():
        endpoint.secret_encrypted = box.reseal(endpoint.secret_encrypted)
        if endpoint.previous_secret_encrypted:
            endpoint.previous_secret_encrypted = box.reseal(endpoint.previous_secret_encrypted)
        count += 1
    session.flush()
    return count
