"""Issue 22 at the API's edge, with no service started: duplicate or misplaced multipart parts
are a 422 naming the field, part headers are bounded, unknown keys are limited per address
before any lookup, and /metrics is not on the public port by default."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from api import auth
from api.auth import KeyCache
from api.deps import CurrentTenant
from api.main import create_app
from api.metrics import ApiMetrics
from api.multipart import MAX_PART_HEADER_BYTES, _Collector
from api.problems import BadRequest, RateLimited, Unprocessable
from api.ratelimit import Limiter
from shared.config import Settings
from shared.scopes import ALL_SCOPES
from shared.security import hash_api_key
from shared.tenants import KeyGrant

BOUNDARY = "b0undary"


def part(name: str, value: bytes, filename: str | None = None, headers: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{headers}\r\n".encode() + value + b"\r\n"


def collect(*parts: bytes, chunk: int = 7):
    """Parse a form through the API's collector, in small chunks as a slow client sends it."""
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    collector = _Collector(max_file_bytes=1 << 20, max_mb=1)
    parser = MultipartParser(BOUNDARY.encode(), collector.callbacks())
    for start in range(0, len(body), chunk):
        parser.write(body[start:start + chunk])
    parser.finalize()
    return collector.form


def refused_field(problem: pytest.ExceptionInfo) -> str:
    assert isinstance(problem.value, Unprocessable)
    (error,) = problem.value.errors
    assert problem.value.detail.startswith(error["field"] + ": ")
    return error["field"]


def test_a_form_with_each_part_once_is_read():
    form = collect(part("image", b"\xff\xd8jpeg", "a.jpg"), part("age", b"61"), part("site", b"torso"))
    assert form.files == {"image": b"\xff\xd8jpeg"} and form.fields == {"age": "61", "site": "torso"}


@pytest.mark.parametrize(
    "parts, field",
    [
        ((part("image", b"one", "a.jpg"), part("image", b"two", "b.jpg")), "image"),  # two images
        ((part("age", b"200"), part("age", b"30")), "age"),  # once refused, once fine: neither wins
        ((part("age", b"30"), part("age", b"200")), "age"),
        ((part("image", b"x", "a.jpg"), part("age", b"61", "age.txt")), "age"),  # a field sent as a file
        ((part("image", b"not a file"),), "image"),  # the image sent as a plain field
        ((part("age", b"61"), part("age", b"61", "age.txt")), "age"),
    ],
)
def test_a_duplicate_or_misplaced_part_is_422_naming_the_field(parts, field):
    with pytest.raises(Unprocessable) as problem:
        collect(*parts)
    assert refused_field(problem) == field


def test_part_headers_are_bounded():
    # Each line under python-multipart's own 4 KiB limit, together over ours.
    padding = "".join(f"X-Pad-{i}: {'a' * 3000}\r\n" for i in range(3))
    with pytest.raises(BadRequest, match=f"headers are longer than {MAX_PART_HEADER_BYTES} bytes"):
        collect(part("age", b"1", headers=padding), chunk=1000)
    with pytest.raises(MultipartParseError):  # the library's limit on their number (read_multipart: 400)
        collect(part("age", b"1", headers="".join(f"X-{i}: v\r\n" for i in range(20))))


# --- unknown keys: limited per address before any lookup ----------------------------------


def _app(**update) -> tuple[TestClient, list[str]]:
    """An app on in-process rate limits (no Redis) whose key lookups are recorded, not run."""
    settings = Settings(_env_file=None, unknown_key_rate="3/minute", auth_cache_seconds=0.0, **update)
    app = create_app(settings)
    app.state.context = None
    lookups: list[str] = []
    valid = {"dsk_valid-key-0001": KeyGrant(uuid.uuid4(), uuid.uuid4(), frozenset(ALL_SCOPES))}

    def tenant_of_key(_context, key: str) -> KeyGrant | None:
        lookups.append(key)
        return valid.get(key)

    app.state.tenant_of_key = tenant_of_key

    async def whoami(tenant: CurrentTenant) -> dict:
        return {"tenant": str(tenant.id)}

    app.add_api_route("/v1/whoami", whoami)
    return TestClient(app), lookups


@pytest.fixture
def gate(monkeypatch):
    client, lookups = _app()
    monkeypatch.setattr(auth, "_grant_of_key", lambda context, key: client.app.state.tenant_of_key(context, key))
    return client, lookups


def _get(client: TestClient, key: str, path: str = "/v1/whoami") -> httpx.Response:
    return client.get(path, headers={"Authorization": f"Bearer {key}"})


def test_unknown_keys_are_refused_429_per_address_before_any_lookup(gate):
    client, lookups = gate
    assert _get(client, "dsk_valid-key-0001").status_code == 200  # seen valid: known from now on
    statuses = [_get(client, f"dsk_made-up-{i:04d}").status_code for i in range(6)]
    assert statuses == [401, 401, 401, 429, 429, 429]
    assert len(lookups) == 4  # the valid key and three made-up ones: the refused ones never looked up
    refused = _get(client, "dsk_made-up-9999")
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("/rate_limited") and "unknown" in refused.json()["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # The upload route is not held at the gate: authentication itself refuses it, still unlooked-up.
    upload = client.post("/v1/analyses", headers={"Authorization": "Bearer dsk_made-up-upload"})
    assert upload.status_code == 429 and len(lookups) == 4
    # A key seen valid is never held back by made-up keys from its address, though its cache
    # entry has expired (AUTH_CACHE_SECONDS is 0 here: every request is looked up).
    assert _get(client, "dsk_valid-key-0001").status_code == 200 and len(lookups) == 5
    # Keys that are not well-formed are refused without a lookup and without counting.
    assert _get(client, "not-a-key").status_code == 401 and len(lookups) == 5


def test_the_unknown_key_limit_fails_open_when_its_store_is_down():
    async def scenario() -> None:
        limiter = Limiter(Settings(_env_file=None, broker_url="redis://127.0.0.1:9/0", unknown_key_rate="1/minute"))
        try:
            for _ in range(3):
                await limiter.count_unknown_key("203.0.113.9")
                await limiter.unknown_key("203.0.113.9")  # no RateLimited: the store is away
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_the_unknown_key_limit_counts_each_address_on_its_own():
    async def scenario() -> None:
        limiter = Limiter(Settings(_env_file=None, unknown_key_rate="2/minute"))
        for _ in range(2):
            await limiter.count_unknown_key("203.0.113.1")
        with pytest.raises(RateLimited):
            await limiter.unknown_key("203.0.113.1")
        await limiter.unknown_key("203.0.113.2")

    asyncio.run(scenario())


def test_the_key_cache_remembers_valid_keys_and_forgets_a_tenants():
    cache = KeyCache(ttl=0.0)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    cache.put(hash_api_key("dsk_a"), KeyGrant(tenant, uuid.uuid4(), frozenset()))
    cache.put(hash_api_key("dsk_b"), KeyGrant(other, uuid.uuid4(), frozenset()))
    assert cache.get(hash_api_key("dsk_a")) is None  # no cache entry with ttl 0
    assert cache.known(hash_api_key("dsk_a")) == tenant
    cache.forget_tenant(tenant)
    assert cache.known(hash_api_key("dsk_a")) is None and cache.known(hash_api_key("dsk_b")) == other

    async def unknown() -> None:
        return None

    assert asyncio.run(cache.resolve(hash_api_key("dsk_b"), unknown)) is None
    assert cache.known(hash_api_key("dsk_b")) is None  # a lookup that found nothing forgets it


# --- metrics --------------------------------------------------------------------------------


def test_metrics_are_not_on_the_public_port_by_default():
    client = TestClient(create_app(Settings(_env_file=None)))
    response = client.get("/metrics")
    assert response.status_code == 404
    assert response.json() == client.get("/no-such-path").json() | {"instance": "/metrics"}


def _nowhere(**update) -> Settings:
    """Settings whose database and broker refuse at once (nothing listens on port 9)."""
    return Settings(_env_file=None, database_url="postgresql+psycopg://nobody:x@127.0.0.1:9/none",
                    broker_url="redis://127.0.0.1:9/0", **update)


def test_metrics_on_the_public_port_need_the_token():
    client = TestClient(create_app(_nowhere(metrics_token="s3cret-scrape-token")))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
    assert answer.status_code == 200
    assert "dermasentinel_http_requests_total" in answer.text
    assert 'dermasentinel_backlog_source_up{source="database"} 0.0' in answer.text  # nothing listens


def test_metrics_are_served_on_a_port_of_their_own():
    served = ApiMetrics(_nowhere(metrics_port=0))
    port = served.start()
    try:
        assert port
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "dermasentinel_http_requests_total" in text and "dermasentinel_backlog_source_up" in text
    finally:
        served.close()
    assert ApiMetrics(Settings(_env_file=None)).start() is None  # unset: not served at all
