"""API keys: shown once, stored only as a SHA-256 hash (keys are 256-bit random, so a
fast hash is enough; there is nothing to brute-force)."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "dsk_"


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 6]
