"""One request with its retries, for the sync and the async client alike.

A request is retried (tenacity) when the API says it is busy or overloaded (429, 503: it did
nothing with the request), after the ``Retry-After`` it sends, or else after an exponential
backoff; and when the connection failed or a gateway in front of the API answered 502 or 504,
if the request is safe to send twice: a GET, PUT or DELETE, a POST carrying an
``Idempotency-Key`` (the API replays the first answer), or any request that never reached the
server (the connection was refused). The key of a submission is made
once, before the first attempt, so every retry carries the same one.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from dermasentinel_client.errors import JSON_TYPES, ApiError, NotTheApi, StorageRefused, content_type

BUSY = frozenset({429, 503})
GATEWAY = frozenset({502, 504})  # the request may have arrived: retried only when repeatable
SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` more attempts after the first; ``backoff`` seconds doubling up to
    ``max_backoff`` (with jitter) when the answer gives no ``Retry-After``; a ``Retry-After``
    longer than ``max_retry_after`` is cut to it."""

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0


@dataclass
class Call:
    """One HTTP request of an operation. ``url`` is a path under the API's base URL, or with
    ``storage`` an absolute presigned URL (sent without the API key)."""

    method: str
    url: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    storage: bool = False
    expect_json: bool = True
    content_types: tuple[str, ...] = ()  # else, when expect_json is False: what a 2xx answer must be
    timeout: float | None = None  # seconds, for a request the API holds open (Prefer: wait)
    idempotent: bool = False  # a POST that is safe to repeat without an Idempotency-Key header
    retries: bool = True  # False: one attempt (a health check answers 503 to say "not ready")
    accept: frozenset[int] = frozenset()  # statuses of 400 and above that are an answer, not an error

    def kwargs(self) -> dict[str, Any]:
        sent: dict[str, Any] = {"headers": self.headers}
        if self.timeout is not None:
            sent["timeout"] = self.timeout
        for name in ("params", "json", "data", "files", "content"):
            value = getattr(self, name)
            if value is not None:
                sent[name] = value
        return sent

    @property
    def repeatable(self) -> bool:
        """Safe to send twice if the first one may have arrived."""
        keyed = any(name.lower() == "idempotency-key" for name in self.headers)
        return self.idempotent or keyed or self.method in SAFE_METHODS


class _Busy(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _retryable(call: Call) -> Any:
    def check(exc: BaseException) -> bool:
        if isinstance(exc, _Busy):
            return True
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return True  # never reached the server
        return isinstance(exc, httpx.TransportError) and call.repeatable

    return retry_if_exception(check)


def _wait(policy: RetryPolicy) -> Any:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Busy):
            asked = retry_after(exc.response)
            if asked is not None:
                return min(asked, policy.max_retry_after)
        backoff = min(policy.max_backoff, policy.backoff * 2 ** (state.attempt_number - 1))
        return backoff * (0.5 + random.random() / 2)

    return wait


def _retrying_kwargs(policy: RetryPolicy, call: Call) -> dict[str, Any]:
    attempts = policy.max_retries + 1 if call.retries else 1
    return dict(stop=stop_after_attempt(attempts), wait=_wait(policy), retry=_retryable(call), reraise=True)


def _busy(call: Call, response: httpx.Response) -> None:
    if response.status_code in BUSY or (response.status_code in GATEWAY and call.repeatable):
        raise _Busy(response)


def checked(call: Call, response: httpx.Response) -> httpx.Response:
    """The answer, or the error it is: ApiError for 400 and above (StorageRefused from the object
    store), NotTheApi for an API answer that should be JSON and is not."""
    if call.storage:
        if response.status_code >= 300:
            raise StorageRefused(response)
        return response
    if response.status_code >= 400 and response.status_code not in call.accept:
        raise ApiError(response)
    wanted = JSON_TYPES if call.expect_json else call.content_types
    if wanted and response.status_code != 204 and content_type(response) not in wanted:
        raise NotTheApi(response)
    return response


def send(policy: RetryPolicy, api: httpx.Client, storage: httpx.Client, call: Call) -> httpx.Response:
    http = storage if call.storage else api
    try:
        for attempt in Retrying(**_retrying_kwargs(policy, call)):
            with attempt:
                response = http.request(call.method, call.url, **call.kwargs())
                _busy(call, response)
    except _Busy as exc:  # still busy after the last retry: the answer is the error
        response = exc.response
    return checked(call, response)


async def send_async(
    policy: RetryPolicy, api: httpx.AsyncClient, storage: httpx.AsyncClient, call: Call
) -> httpx.Response:
    http = storage if call.storage else api
    try:
        async for attempt in AsyncRetrying(**_retrying_kwargs(policy, call)):
            with attempt:
                response = await http.request(call.method, call.url, **call.kwargs())
                _busy(call, response)
    except _Busy as exc:
        response = exc.response
    return checked(call, response)
