"""One webhook delivery attempt, and when to try again.

`deliver` re-checks the endpoint URL at send time and connects only to the addresses that
check approved: a `DeliveryClient` has no resolver of its own, so a DNS answer that changes
between the check and the connect (DNS rebinding) cannot move the request to an internal
address. The URL keeps its host name, so Host, SNI and certificate verification are the
same as for any HTTPS client.

Internal targets (reached only because `WEBHOOK_ALLOW_CIDRS` admits them) are logged
blind: `AttemptResult.as_logged` keeps the status code and a coarse error class, never a
response body, a redirect target or the time a failed connection took, so the delivery
log cannot be used to read internal services or tell open, closed and filtered ports apart.
"""

from __future__ import annotations

import contextvars
import functools
import random
import ssl
import time
import typing
from collections.abc import Iterable
from dataclasses import dataclass, replace

import httpcore
import httpx
from opentelemetry.trace import SpanKind

from shared import tracing
from shared.config import DEFAULT_RETRY_SCHEDULE, parse_retry_schedule  # noqa: F401 (re-exported)
from shared.ssrf import AllowList, IPAddress, UnsafeURLError, is_internal, resolve_and_check
from shared.webhook_signing import sign

USER_AGENT = "DermaSentinel-Webhooks/0.1 (+https://www.standardwebhooks.com)"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 3.0
NO_RESPONSE = "no_response"
RESPONSE_EXCERPT_BYTES = 1024
RETRY_JITTER = 0.2


@dataclass(frozen=True)
class AttemptResult:
    ok: bool
    status_code: int | None
    latency_ms: float | None
    """Connect, send and response headers plus the excerpt read; excludes the DNS check."""
    error: str | None
    response_excerpt: str | None
    """At most the first 1 KiB of the response body, decoded leniently."""
    disable_endpoint: bool
    """The receiver answered 410 Gone: stop sending to this endpoint."""
    error_class: str | None = None
    """Coarse kind of failure: refused_url, connect_error, timeout, protocol_error,
    http_3xx, http_4xx, http_5xx (None on success)."""
    internal: bool = False
    """The target is a non-public address admitted by the allow list."""

    def as_logged(self) -> AttemptResult:
        """What the delivery log may keep: everything for public targets; for internal ones
        the status code and error class only (connection failures all read `no_response`)."""
        if not self.internal:
            return self
        if self.status_code is None and self.error_class != "refused_url":
            return replace(self, error=NO_RESPONSE, error_class=NO_RESPONSE, response_excerpt=None, latency_ms=None)
        return replace(self, error=self.error_class, response_excerpt=None)


@dataclass(frozen=True)
class _Pin:
    host: str
    port: int
    addresses: tuple[IPAddress, ...]
    deadline: float


_current_pin: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar(
    "webhook_delivery_pin", default=None
)


class DeliveryClient(httpx.Client):
    """An httpx client that can only connect to addresses approved by the running `deliver`.

    Outside `deliver` every connection attempt fails, so the client cannot be misused for
    unchecked requests. It never follows redirects and ignores proxy environment variables
    (a proxy would resolve the host itself, undoing the pinning). Reuse one per worker
    process so connections to busy receivers stay open.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, max_connections: int = 50) -> None:
        super().__init__(
            transport=_PinnedTransport(ssl_context=ssl_context, max_connections=max_connections),
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": USER_AGENT},
        )


def deliver(
    url: str,
    secret: str | Iterable[str],
    msg_id: str,
    body: str,
    *,
    allow_cidrs: AllowList,
    timeout: float = DEFAULT_TIMEOUT_S,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    client: httpx.Client | None = None,
    tenant_id: object | None = None,
) -> AttemptResult:
    """POST one signed webhook to `url` and report what happened; network trouble is returned, not raised.

    `timeout` bounds the whole exchange (connect, TLS, send, response headers and the
    excerpt), not each socket read; `connect_timeout` bounds the TCP connect alone, so a
    receiver that drops packets is given up on quickly. `secret` may be several secrets
    (one signature each) during a secret rotation. `tenant_id` selects the allow rules
    that name a tenant. `client` must be a `DeliveryClient`.
    """
    headers = sign(secret if isinstance(secret, str) else list(secret), msg_id, int(time.time()), body)
    headers["content-type"] = "application/json"
    outcome, _ = send(
        "POST", url, content=body.encode("utf-8"), headers=headers, allow_cidrs=allow_cidrs, timeout=timeout,
        connect_timeout=connect_timeout, client=client, tenant_id=tenant_id,
    )
    return outcome


def send(
    method: str,
    url: str,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    allow_cidrs: AllowList,
    timeout: float = DEFAULT_TIMEOUT_S,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    client: httpx.Client | None = None,
    tenant_id: object | None = None,
    read_limit: int = RESPONSE_EXCERPT_BYTES,
) -> tuple[AttemptResult, bytes]:
    """One HTTP exchange with a tenant's receiver under the same guard as a webhook: the URL
    re-checked against the SSRF rules, the connection pinned to the approved addresses, no
    redirects, one deadline for the whole exchange. Returns what happened and up to
    `read_limit` bytes of the response body (a token endpoint's answer, a FHIR server's
    transaction-response); network trouble is returned, not raised. The destinations other
    than webhooks (worker/destinations.py) make their requests through this."""
    if client is not None and not isinstance(client, DeliveryClient):
        raise TypeError("send() needs a DeliveryClient; other clients skip address pinning")
    called = time.monotonic()
    deadline = called + timeout
    try:
        parsed, addresses = resolve_and_check(url, allow_cidrs, tenant_id=tenant_id)
    except UnsafeURLError as exc:
        return _failure(f"refused: {exc}", "refused_url", latency_ms=_since(called)), b""
    internal = any(is_internal(address) for address in addresses)

    headers = dict(headers or {})
    # Compressed responses could expand far beyond what we read.
    headers["accept-encoding"] = "identity"

    owned = client is None
    active = client if client is not None else DeliveryClient()
    pin = _current_pin.set(_Pin(parsed.host, parsed.port, tuple(addresses), deadline))
    started = time.monotonic()
    # Issue 25: the exchange's span, and its W3C traceparent to the receiver (the current trace:
    # the delivery's, continued from the event's stored context).
    exchange = tracing.span(method, kind=SpanKind.CLIENT,
                            attributes={"http.request.method": method, "server.address": parsed.host})
    span = exchange.__enter__()
    tracing.inject(headers)
    answered = 0  # the receiver's status code, once it answered
    try:
        with active.stream(
            method,
            parsed.url,
            content=content,
            headers=headers,
            timeout=_timeouts(deadline - started, connect_timeout),
        ) as response:
            raw = _read_body(response, read_limit)
            answered = response.status_code
    except httpx.ConnectTimeout as exc:
        return _failure(
            f"timed out connecting after {min(connect_timeout, timeout):g} s ({type(exc).__name__})",
            "timeout", latency_ms=_since(started), internal=internal,
        ), b""
    except httpx.TimeoutException as exc:
        return _failure(
            f"timed out after {timeout:g} s ({type(exc).__name__})", "timeout",
            latency_ms=_since(started), internal=internal,
        ), b""
    except httpx.ConnectError as exc:
        return _failure(
            f"{type(exc).__name__}: {exc}", "connect_error", latency_ms=_since(started), internal=internal
        ), b""
    except httpx.HTTPError as exc:
        return _failure(
            f"{type(exc).__name__}: {exc}", "protocol_error", latency_ms=_since(started), internal=internal
        ), b""
    finally:
        _current_pin.reset(pin)
        if span.is_recording() and answered:
            span.set_attribute("http.response.status_code", answered)
        exchange.__exit__(None, None, None)
        if owned:
            active.close()
    excerpt = raw[:RESPONSE_EXCERPT_BYTES].decode("utf-8", errors="replace")
    return _classify(response, excerpt, latency_ms=_since(started), internal=internal), raw


def _timeouts(remaining: float, connect_timeout: float) -> httpx.Timeout:
    remaining = max(remaining, 0.001)
    return httpx.Timeout(remaining, connect=min(connect_timeout, remaining))


class _Uniform(typing.Protocol):
    def uniform(self, a: float, b: float) -> float: ...


def next_attempt_delay(
    attempt_number: int, schedule: typing.Sequence[int], rng: _Uniform = random
) -> float | None:
    """Seconds to wait after failed attempt `attempt_number` (1 = the first send), or None when retries are exhausted.

    Each delay is jittered by ±20% so endpoints that failed together don't retry together.
    """
    if attempt_number < 1:
        raise ValueError("attempt_number counts from 1 (the first send)")
    if attempt_number > len(schedule):
        return None
    return schedule[attempt_number - 1] * rng.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)


def _classify(response: httpx.Response, excerpt: str, *, latency_ms: float, internal: bool) -> AttemptResult:
    status = response.status_code
    ok = 200 <= status < 300
    error: str | None = None
    if status == 410:
        error = "HTTP 410 Gone: the receiver asked us to stop sending"
    elif 300 <= status < 400:
        location = response.headers.get("location", "")
        error = f"HTTP {status} redirect to {location[:200]!r} not followed; register the final URL"
    elif not ok:
        error = f"HTTP {status}"
    return AttemptResult(
        ok=ok,
        status_code=status,
        latency_ms=latency_ms,
        error=error,
        response_excerpt=excerpt,
        disable_endpoint=status == 410,
        error_class=None if ok else f"http_{status // 100}xx",
        internal=internal,
    )


def _read_body(response: httpx.Response, limit: int) -> bytes:
    kept = bytearray()
    try:
        for chunk in response.iter_raw():
            kept += chunk
            if len(kept) >= limit:
                break
    except httpx.HTTPError:
        # The status line already decided the outcome; a body cut short only shortens the log.
        pass
    return bytes(kept[:limit])


def _failure(error: str, error_class: str, *, latency_ms: float, internal: bool = False) -> AttemptResult:
    return AttemptResult(
        ok=False,
        status_code=None,
        latency_ms=latency_ms,
        error=error,
        response_excerpt=None,
        disable_endpoint=False,
        error_class=error_class,
        internal=internal,
    )


def _since(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


class _PinnedTransport(httpx.HTTPTransport):
    def __init__(self, *, ssl_context: ssl.SSLContext | None, max_connections: int) -> None:
        context = ssl_context or _default_ssl_context()
        super().__init__(verify=context, trust_env=False)
        # httpx offers no public hook for the network backend, so the pool it built is
        # replaced by one that connects through _PinnedBackend.
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
            http1=True,
            http2=False,
            retries=0,
            network_backend=_PinnedBackend(),
        )


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~20 ms; do it once per process, on first use.
    return httpx.create_ssl_context(trust_env=False)


class _PinnedBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        pin = _current_pin.get()
        if pin is None or host.lower().strip("[]") != pin.host or port != pin.port:
            raise httpcore.ConnectError(
                f"refusing to connect to {host}:{port}: not the address checked for this delivery"
            )
        failure: Exception = httpcore.ConnectError(f"no address to connect to for {host}")
        for address in pin.addresses:
            try:
                stream = self._sockets.connect_tcp(
                    str(address),
                    port,
                    timeout=_budget(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _DeadlineStream(stream)
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are never delivered over unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    """Caps every socket operation at what is left of the delivery's overall timeout.

    httpx timeouts apply per read, so a receiver dripping one byte at a time would
    otherwise hold a worker for as long as it likes.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _budget(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        upgraded = self._inner.start_tls(
            ssl_context, server_hostname, _budget(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(upgraded)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


def _budget(timeout: float | None, expired: type[Exception]) -> float | None:
    pin = _current_pin.get()
    if pin is None:
        return timeout
    remaining = pin.deadline - time.monotonic()
    if remaining <= 0:
        raise expired("webhook delivery deadline reached")
    return remaining if timeout is None else min(timeout, remaining)
