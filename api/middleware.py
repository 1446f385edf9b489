"""The edge of every request, as plain ASGI middleware (no extra task or buffering per request).

``Edge`` (outermost): a request id on every response, security headers, metrics, and a
problem+json 500 carrying an error id for true bugs. ``BodyGuard``: bodies are bounded in size
and in time before any route, dependency or key check sees them, and text inputs with NUL
bytes are refused naming the field. ``TenantGate``: only ``API_CONCURRENCY`` requests are
worked on at once, and a freed place goes first to the tenant holding the fewest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl

from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import UNKNOWN_KEY_CHECKED, KeyCache, client_address
from api.capacity import HOLDS_PLACE, Capacity
from api.problems import (
    BadRequest,
    PayloadTooLarge,
    Problem,
    RateLimited,
    RequestTimeout,
    Unprocessable,
    problem_response,
)
from api.ratelimit import STATE_HEADERS, Limiter
from shared import json_limits, tracing
from shared.config import Settings
from shared.logs import HIDE_EXCEPTION_MESSAGE
from shared.logs import bind as bind_log_context
from shared.security import KEY_PREFIX, hash_api_key

log = logging.getLogger(__name__)

REQUESTS = Counter("dermasentinel_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("dermasentinel_http_request_seconds", "HTTP request latency", ["method", "route"])
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
# The web app loads its script and style from /static; images come from presigned links
# (the object store's origin) or the preview's blob: URL. No inline script anywhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data: {images}; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
UPLOAD_ROUTES = {("POST", "/v1/analyses")}
DEADLINE_EXTENSION = "deadline_extension_seconds"  # scope["state"] key: see RequestDeadline
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _image_origin(settings: Settings) -> str:
    host = settings.s3_public_endpoint or settings.s3_endpoint
    if not host:
        return ""
    if "://" in host:
        return host.rstrip("/")
    return ("https://" if settings.s3_secure else "http://") + host


class Edge:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.https_public = settings.public_url.lower().startswith("https://")
        self.static_headers = [
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"),
            ("Content-Security-Policy", CONTENT_SECURITY_POLICY.format(images=_image_origin(settings)).strip()),
            ("Cross-Origin-Opener-Policy", "same-origin"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        bind_log_context(request_id=request_id)  # this request's task only (docs/OBSERVABILITY.md)
        https = scope.get("scheme") == "https" or self.https_public
        path = scope.get("path", "")
        started = time.perf_counter()
        answered: float | None = None  # when an event stream's answer started (its latency)
        status = 500
        response_started = False
        # Issue 25: the request's span, child of an incoming W3C traceparent (honoured with traces
        # off too: then the caller's span is current, and the job stores the caller's trace).
        request_span = tracing.span(
            str(scope.get("method", "")),
            parent=tracing.extract(Headers(scope=scope)), kind=SpanKind.SERVER,
            attributes={"http.request.method": str(scope.get("method", "")), "url.path": path},
        )
        current_span = request_span.__enter__()

        async def send_with_headers(message: Message) -> None:
            nonlocal response_started, status, answered
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if headers.get("content-type", "").startswith("text/event-stream"):
                    # Live progress (issue 25) stays open for minutes: its latency is the wait
                    # for its answer to start, not the stream's life.
                    answered = time.perf_counter()
                headers["X-Request-ID"] = request_id
                for name, value in self.static_headers:
                    headers.setdefault(name, value)
                if https:
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
                if path.startswith("/v1/"):
                    # Results, images' presigned links, reports: nothing here may sit in a cache.
                    headers.setdefault("Cache-Control", "no-store")
                for name, value in state.get(STATE_HEADERS, {}).items():
                    headers.setdefault(name, value)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            status = 499  # nobody left to answer; counted, not logged as a bug
        except Exception as exc:
            # Path and method only: ids, never PHI. The traceback is for us, the id for the
            # caller: written once, here, bounded, without locals or the exception's message
            # (which can quote SQL parameters, a form value or the key), by the log writer's
            # thread, not this event loop (shared.logs; issue 22).
            log.error(
                "unhandled error %s on %s %s", request_id, scope.get("method"), _route(scope),
                exc_info=exc, extra={HIDE_EXCEPTION_MESSAGE: True},
            )
            if response_started:
                # Too late for a 500: the answer is cut short (uvicorn closes the connection).
                # Not raised again, or the server would log it a second time, message and all.
                return
            response = problem_response(
                500,
                "internal_error",
                "Internal error",
                f"something went wrong on our side, not in what you sent; quote error id {request_id} "
                "if you contact support",
                path,
                extra={"error_id": request_id},
            )
            await response(scope, receive, send_with_headers)
        finally:
            route = _route(scope)
            REQUESTS.labels(scope.get("method", ""), route, str(status)).inc()
            LATENCY.labels(scope.get("method", ""), route).observe((answered or time.perf_counter()) - started)
            if current_span.is_recording():
                current_span.update_name(f"{scope.get('method', '')} {route}")
                current_span.set_attribute("http.route", route)
                current_span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    current_span.set_status(StatusCode.ERROR)
            request_span.__exit__(None, None, None)


def _route(scope: Scope) -> str:
    return getattr(scope.get("route"), "path", "unmatched")


# Probes and scrapes are never limited by address: a load balancer checks from one address.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class TenantGate:
    """At most ``API_CONCURRENCY`` requests past the edge at once (per API process), shared
    fairly: a freed place goes to the waiting tenant that holds the fewest, then to the one
    served longest ago (``api.capacity.FairSlots``). A request waits here, costing a future, for up
    to ``API_DB_WAIT_SECONDS``, then 503 with Retry-After. A tenant also holds at most
    ``API_CONCURRENCY`` places across every API replica (issue 26, ``api.cluster_places``:
    counted in Redis; failing open to this process's gate alone when Redis is away); at that
    cap its request waits within the same ``API_DB_WAIT_SECONDS``, then the same 503. However many requests one tenant
    sends, the process then works on only a few at a time (its event loop, its threads and
    the GIL are not shared N ways), and a tenant with one request waits for the next free place
    only. The place is given back when the answer starts, so a client reading a long streamed
    body does not keep it. Uploads are not held here while their body streams (they have their
    own per-tenant quota, ``CONCURRENT_UPLOADS``, and may trickle for minutes); they take a
    place for each step after it has arrived (``api.capacity.Capacity.request``). The tenant is
    the owner of the presented key (cached, or known from an earlier lookup); a key never seen
    valid counts as its client address's, and is first checked against that address's limit
    on unknown keys (issue 22: 429 here, holding no place, before any lookup). Requests
    without a well-formed bearer key pass to the route, which answers 401 without a lookup."""

    def __init__(self, app: ASGIApp, key_cache: KeyCache, capacity: Capacity, limiter: Limiter) -> None:
        self.app = app
        self.key_cache = key_cache
        self.capacity = capacity
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # ---- issue 26: a per-client-address limit before authentication (CLIENT_ADDRESS_RATE)
        if scope["type"] == "http" and scope.get("path") not in PROBE_PATHS:
            verdict = await self.limiter.client_address(client_address(scope))
            if verdict is not None and not verdict.allowed:
                response = problem_response(
                    429, RateLimited.code, RateLimited.title,
                    f"too many requests from this address (at most {verdict.limit} per window); "
                    f"retry in {max(1, verdict.reset_after)} s",
                    scope.get("path", ""), headers=verdict.headers(),
                )
                await response(scope, receive, send)
                return
        # ---- end issue 26
        owner = self._owner(scope) if scope["type"] == "http" else None
        if owner is None:
            await self.app(scope, receive, send)
            return
        capacity = self.capacity
        try:
            if isinstance(owner, UnknownKey):
                await self.limiter.unknown_key(owner.address)
                scope.setdefault("state", {})[UNKNOWN_KEY_CHECKED] = True
            lease = await capacity.take_place(owner, capacity.settings.api_db_wait_seconds)
        except Problem as problem:
            response = problem_response(
                problem.status, problem.code, problem.title, problem.detail, scope.get("path", ""),
                headers=problem.headers,
            )
            await response(scope, receive, send)
            return
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                capacity.give_back_place(owner, lease)

        async def send_releasing(message: Message) -> None:
            # The place covers the work up to the answer; a client reading a long body (a
            # streamed export) does not keep it.
            if message["type"] == "http.response.start":
                release()
            await send(message)

        token = HOLDS_PLACE.set(True)
        try:
            await self.app(scope, receive, send_releasing)
        finally:
            HOLDS_PLACE.reset(token)
            release()

    def _owner(self, scope: Scope) -> object | None:
        if (scope["method"], scope["path"].rstrip("/")) in UPLOAD_ROUTES:
            return None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, key = value.partition(b" ")
                key = key.strip()
                if scheme.lower() != b"bearer" or not key.startswith(KEY_PREFIX.encode()) or len(key) > 256:
                    return None  # refused by authentication without a lookup
                digest = hash_api_key(key.decode("latin-1"))
                return self.key_cache.get(digest) or self.key_cache.known(digest) or UnknownKey(client_address(scope))
        return None


@dataclass(frozen=True)
class UnknownKey:
    """The owner, at the gate, of keys never seen valid: one per client address, so a flood of
    made-up keys is one crowd to the fair gate, not thousands of tenants never served."""

    address: str


class RequestDeadline:
    """An answer within ``REQUEST_DEADLINE_SECONDS`` even when a dependency stalls (a frozen
    Postgres never answers, so its own statement timeout cannot fire). The clock runs while
    the server works on the request, not while it waits for the client's body (an upload's
    streaming time has its own read deadline in ``BodyGuard``); when the handler has not
    started its response by then, the client gets 503 + Retry-After at once. The late
    handler is not cancelled (its thread could not be stopped anyway): it runs on to its own
    end, its session rolls back or commits and closes as usual, it keeps its place in
    ``TenantGate`` until then (so a stall does not pile up more work), and whatever it sends
    is dropped."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.seconds = settings.request_deadline_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.seconds:
            await self.app(scope, receive, send)
            return
        began = time.monotonic()
        reading_since: float | None = None  # a wait for the client's body is in progress
        read_time = 0.0  # seconds spent waiting for the client's body, not counted
        body_done = False

        async def receive_timed() -> Message:
            nonlocal reading_since, read_time, body_done
            if body_done:
                return await receive()
            reading_since = time.monotonic()
            try:
                message = await receive()
            finally:
                read_time += time.monotonic() - reading_since
                reading_since = None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        started = False
        late = False

        async def send_unless_late(message: Message) -> None:
            nonlocal started
            if late:
                return  # the client already has its 503
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        def budget_left() -> float:
            now = time.monotonic()
            waiting = read_time + (now - reading_since if reading_since is not None else 0.0)
            # A route that waits on purpose (Prefer: wait=N) extends its own deadline by N.
            extension = scope.get("state", {}).get(DEADLINE_EXTENSION, 0.0)
            return self.seconds + extension - (now - began - waiting)

        handler = asyncio.ensure_future(self.app(scope, receive_timed, send_unless_late))
        try:
            while not handler.done() and not started:
                left = budget_left()
                if left <= 0 and reading_since is None:
                    break
                await asyncio.wait({handler}, timeout=max(left, 0.05))
        except asyncio.CancelledError:
            handler.cancel()
            raise
        if handler.done() or started:
            await handler  # its answer (or its error, for Edge) as usual
            return
        late = True
        handler.add_done_callback(_log_late_outcome)
        log.warning("no answer within %.1fs on %s %s; answered 503, the handler finishes on its own",
                    self.seconds, scope.get("method"), _route(scope))
        response = problem_response(
            503, "unavailable", "Service unavailable",
            "a dependency of the API is not answering right now; retry in a few seconds (a submission "
            "may still complete: resend it with the same Idempotency-Key)",
            scope.get("path", ""), headers={"Retry-After": "5"},
        )
        await response(scope, receive, send)


def _log_late_outcome(handler: asyncio.Future) -> None:
    if handler.cancelled():
        return
    exc = handler.exception()
    if exc is not None and not isinstance(exc, ClientDisconnect):
        log.warning("a request answered 503 at its deadline later ended with %s", type(exc).__name__)


class BodyGuard:
    """Bodies are read within limits before the app sees them: JSON and other small bodies up
    to ``API_MAX_JSON_BYTES`` (buffered, then checked for NUL bytes), uploads up to the upload
    limit (streamed through). Both within a read deadline: ``API_BODY_IDLE_TIMEOUT_SECONDS``
    between chunks and ``API_BODY_READ_TIMEOUT_SECONDS`` overall. Query strings are checked for
    NUL bytes too."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.max_json = settings.api_max_json_bytes
        self.max_upload = settings.max_upload_bytes + 64 * 1024
        self.max_upload_mb = settings.max_upload_mb
        self.idle_timeout = settings.api_body_idle_timeout_seconds
        self.total_timeout = settings.api_body_read_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            _refuse_nul_in_query(scope)
            if scope["method"] not in BODY_METHODS:
                await self.app(scope, receive, send)
                return
            upload = (scope["method"], scope["path"].rstrip("/")) in UPLOAD_ROUTES
            limit = self.max_upload if upload else self.max_json
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise self._too_large(upload)
            reader = _DeadlineReader(receive, limit, self.idle_timeout, self.total_timeout, self._too_large(upload))
            if upload:
                # Streamed to the multipart parser, which keeps its own per-part limits; errors
                # raised while reading reach the route and its problem handlers.
                await self.app(scope, reader.receive, send)
                return
            body = await reader.read_all()
            if _parsed_as_json(scope):
                _refuse_deep_json(body)
                _refuse_nul_in_json(body)
        except Problem as problem:
            response = problem_response(
                problem.status, problem.code, problem.title, problem.detail, scope.get("path", ""),
                problem.errors, problem.headers,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self, upload: bool) -> PayloadTooLarge:
        if upload:
            return PayloadTooLarge(f"the request is larger than the {self.max_upload_mb} MB upload limit")
        return PayloadTooLarge(
            f"the request body is larger than {self.max_json // 1024} KiB; JSON requests are small, "
            "images go to POST /v1/analyses"
        )


class _DeadlineReader:
    def __init__(self, receive: Receive, limit: int, idle: float, total: float, too_large: Problem):
        self._receive, self.limit, self.idle, self.too_large = receive, limit, idle, too_large
        self.deadline = time.monotonic() + total
        self.received = 0

    async def receive(self) -> Message:
        remaining = self.deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(self._receive(), timeout=max(0.0, min(self.idle, remaining)))
        except TimeoutError:
            raise RequestTimeout(
                "the request body arrived too slowly and was dropped; nothing was saved, retry on a "
                "better connection"
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise self.too_large
        return message

    async def read_all(self) -> bytes:
        chunks = []
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _nul_problem(field: str) -> Unprocessable:
    return Unprocessable(
        f"{field}: must not contain NUL bytes (\\u0000); remove them and resend",
        errors=[{"field": field, "message": "contains a NUL byte"}],
    )


def _refuse_nul_in_query(scope: Scope) -> None:
    raw = scope.get("query_string", b"")
    if b"%00" not in raw and b"\x00" not in raw:
        return
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            raise _nul_problem(name.replace("\x00", "") or "query")


def _parsed_as_json(scope: Scope) -> bool:
    """Whether a route would parse this body as JSON: FastAPI does so for a JSON media type
    and for a body sent with no Content-Type at all."""
    content_type = Headers(scope=scope).get("content-type", "")
    return not content_type.strip() or "json" in content_type.lower()


def _refuse_deep_json(body: bytes) -> None:
    """400 for JSON nested deeper than ``MAX_JSON_DEPTH``, before any parser recurses into it
    (issue 22: ``[[[…"\\u0000"…]]]`` a thousand deep crashed the NUL check below)."""
    try:
        json_limits.check_depth(body)
    except json_limits.JsonTooDeep as exc:
        raise BadRequest(f"the JSON body {exc}; send a flatter document") from None


def _refuse_nul_in_json(body: bytes) -> None:
    if b"\\u0000" not in body:
        return
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return  # the route answers malformed JSON itself
    path = _nul_path(document, [])
    if path is not None:
        raise _nul_problem(".".join(path) or "body")


def _nul_path(value: object, path: list[str]) -> list[str] | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return [*path, key.replace("\x00", "")]
            found = _nul_path(item, [*path, key])
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, [*path, str(index)])
            if found is not None:
                return found
    return None
