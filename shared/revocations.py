"""Revocations every API process hears at once (issue 22: "keys stop at once").

API processes cache key lookups for ``AUTH_CACHE_SECONDS``. When a key is revoked, or its
tenant disabled or deleted, the process that did it publishes the fact on one Redis channel
(after its transaction commits) and every API process drops the matching cache entries as it
hears it (``api.auth.listen_for_revocations``), so the next request is looked up and refused.
Publishing is best-effort: without Redis, the cache's few seconds still bound the delay.
"""

from __future__ import annotations

import json
import logging
import uuid

import redis

from shared.config import Settings

CHANNEL = "dermasentinel:auth-revocations"
log = logging.getLogger(__name__)


def message(*, tenant_id: uuid.UUID | None = None, key_id: uuid.UUID | None = None) -> str:
    return json.dumps({"tenant_id": tenant_id and str(tenant_id), "key_id": key_id and str(key_id)})


def parse(data: bytes | str) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """(tenant id, key id) from a published message; ValueError for anything else."""
    body = json.loads(data)
    if not isinstance(body, dict):
        raise ValueError("not a revocation")
    tenant, key = body.get("tenant_id"), body.get("key_id")
    return (uuid.UUID(tenant) if tenant else None, uuid.UUID(key) if key else None)


def announce(settings: Settings, *, tenant_id: uuid.UUID | None = None, key_id: uuid.UUID | None = None) -> None:
    """Tell every API process to forget a tenant's keys, or one key, now."""
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return
    try:
        client = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.publish(CHANNEL, message(tenant_id=tenant_id, key_id=key_id))
        finally:
            client.close()
    except redis.RedisError as exc:
        log.warning("could not announce a revocation (%s); API processes forget it within AUTH_CACHE_SECONDS",
                    type(exc).__name__)
