"""RFC 7807 problems: specific error types, mapped to HTTP once."""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import urllib3
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from minio.error import S3Error, ServerError
from psycopg import errors as pg_errors
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)
TRANSIENT_DRIVER_ERRORS = (
    pg_errors.IdleInTransactionSessionTimeout, pg_errors.AdminShutdown, pg_errors.OperationalError
)
# Postgres ended this transaction so that a concurrent one could go on: retrying succeeds.
CONFLICTING_CHANGE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://dermasentinel.dev/problems/"


class Problem(Exception):
    status = 400
    code = "bad_request"
    title = "Bad request"
    # Under /fhir the problem is an OperationOutcome; its issue code, when the status alone
    # does not say it (ISSUE_CODES).
    issue_code: str | None = None

    def __init__(self, detail: str, *, errors: list[dict] | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class BadRequest(Problem):
    pass


class Unauthorized(Problem):
    status, code, title = 401, "unauthorized", "Missing or invalid API key"


class Forbidden(Problem):
    """The key is valid but lacks the scope this operation needs (issue 22)."""

    status, code, title = 403, "forbidden", "This API key may not do that"


class NotFound(Problem):
    status, code, title = 404, "not_found", "Not found"


class Conflict(Problem):
    status, code, title = 409, "conflict", "Conflict"


class BatchSealed(Conflict):
    """Adding to a batch that was sealed (or canceled): its own code, so clients can tell it
    from an idempotency conflict and start a new batch."""

    code, title = "batch_sealed", "Batch is sealed"


class NotReady(Problem):
    status, code, title = 409, "not_ready", "Not ready yet"


class PayloadTooLarge(Problem):
    status, code, title = 413, "payload_too_large", "Upload too large"


class UnsupportedMediaType(Problem):
    status, code, title = 415, "unsupported_media_type", "Unsupported image type"


class Unprocessable(Problem):
    status, code, title = 422, "unprocessable", "Invalid input"


class UnreadableImage(Unprocessable):
    code, title = "unreadable_image", "Image could not be decoded"


class ImageTooLarge(Unprocessable):
    code, title = "image_too_large", "Image has too many pixels"


class UnsupportedDicom(Unprocessable):
    """A DICOM object that is not an image we analyse; the detail names what it is (issue 23)."""

    code, title = "unsupported_dicom", "DICOM object not accepted"


class RequestTimeout(Problem):
    status, code, title = 408, "request_timeout", "Request body too slow"


class RateLimited(Problem):
    status, code, title = 429, "rate_limited", "Too many requests"


class Overloaded(Problem):
    """The API is at capacity: answered at once, with a hint when to retry, never a 500."""

    status, code, title = 503, "overloaded", "Service busy"

    def __init__(self, detail: str, *, retry_after: int = 1):
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


STATUS_MEANING = {
    400: "Bad request: the body could not be parsed, or a parameter is malformed (see `detail`)",
    401: "Missing, unknown or revoked API key",
    403: "The API key lacks the scope this operation needs (the problem names it)",
    404: "No such object for this tenant (another tenant's id answers 404 too)",
    408: "The request body arrived too slowly",
    409: "Conflict with the object's current state (see the problem `type`)",
    413: "The request body is too large",
    415: "Unsupported image type (JPEG or PNG only)",
    422: "Invalid input: one entry per field in `errors`",
    429: "Rate limited: retry after `Retry-After` seconds (`RateLimit-*` headers)",
    503: "Busy or a dependency is unreachable: nothing was saved, retry after `Retry-After` seconds",
    504: "A dependency did not answer in time",
}
PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}


def problem_content() -> dict:
    return {PROBLEM_JSON: {"schema": dict(PROBLEM_REF)}}


def problems(*statuses: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses a route answers as problem+json; a status
    may come with its own description, as ``(409, "why")``. The generic ones (401, 413,
    422, 429, 503, …) are added to every operation they apply to by ``api.openapi.contract``."""
    declared: dict[int | str, dict[str, Any]] = {}
    for entry in statuses:
        status, description = entry if isinstance(entry, tuple) else (entry, STATUS_MEANING.get(entry, "Error"))
        declared[status] = {"description": description, "content": problem_content()}
    return declared


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    instance: str,
    errors: list[dict] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    issue_code: str | None = None,
) -> JSONResponse:
    if is_fhir_path(instance):
        return operation_outcome_response(status, code, title, detail, headers, issue_code)
    body = {"type": TYPE_BASE + code, "title": title, "status": status, "detail": detail, "instance": instance}
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


# ---------------------------------------------------------------- FHIR (issue 23)
# Under the /fhir base, FHIR clients expect an OperationOutcome: every problem answered there
# (by a route, a dependency or the edge) is the same problem as an OperationOutcome, with the
# same status and headers, its stable code kept as a coding of details.
FHIR_BASE_PATH = "/fhir"
FHIR_JSON = "application/fhir+json"
# HTTP status → OperationOutcome.issue.code (the IssueType value set).
ISSUE_CODES = {
    400: "structure", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported", 408: "timeout",
    409: "conflict", 413: "too-long", 415: "not-supported", 422: "invalid", 429: "throttled", 500: "exception",
    503: "transient", 504: "timeout", 507: "transient",
}


def is_fhir_path(path: str) -> bool:
    return path == FHIR_BASE_PATH or path.startswith(FHIR_BASE_PATH + "/")


def operation_outcome(status: int, code: str, title: str, detail: str, issue_code: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error" if status < 500 else "fatal",
                "code": issue_code or ISSUE_CODES.get(status, "processing"),
                "details": {"coding": [{"system": TYPE_BASE.rstrip("/"), "code": code}], "text": title},
                "diagnostics": detail,
            }
        ],
    }


def operation_outcome_response(
    status: int, code: str, title: str, detail: str, headers: Mapping[str, str] | None = None,
    issue_code: str | None = None,
) -> JSONResponse:
    return JSONResponse(
        operation_outcome(status, code, title, detail, issue_code), status_code=status, media_type=FHIR_JSON,
        headers=headers,
    )


def _unavailable(request: Request, dependency: str, why: str = "is not reachable right now") -> JSONResponse:
    # Nothing was accepted: the upload is stored and the row committed, or neither.
    return problem_response(
        503,
        "unavailable",
        "Service unavailable",
        f"{dependency} {why}; nothing was saved, retry in a few seconds",
        request.url.path,
        headers={"Retry-After": "5"},
    )


# ---------------------------------------------------------------- issue 26: out of space
# A store that is out of space is reachable: it is answered 507 Insufficient Storage with a
# Retry-After (space is freed by an operator or the retention purge, not in seconds), and
# /readyz reports it for STORAGE_FULL_REPORT_SECONDS after the last write that met it.
STORAGE_FULL_RETRY_AFTER = 60
STORAGE_FULL_REPORT_SECONDS = 120.0
# S3 error codes for a store or bucket out of space (MinIO's, SeaweedFS's and generic ones).
S3_FULL_CODES = frozenset({
    "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "InsufficientStorage", "QuotaExceeded", "StorageFull",
    "EntityTooLargeForQuota",
})


class StorageFull:
    """When each store was last found out of space, in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def met(self, store: str) -> None:
        with self._lock:
            self._last[store] = time.monotonic()

    def recent(self, within: float = STORAGE_FULL_REPORT_SECONDS) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return sorted(store for store, when in self._last.items() if now - when <= within)

    def clear(self) -> None:
        with self._lock:
            self._last.clear()


STORAGE_FULL = StorageFull()


def full_store(exc: BaseException | None) -> str | None:
    """Which store ``exc`` (or an exception it was raised from or wraps) says is out of space:
    "database", "object store" or "local disk"; None when it says nothing of the kind."""
    seen = 0
    while exc is not None and seen < 8:
        seen += 1
        if isinstance(exc, pg_errors.DiskFull):
            return "database"
        if isinstance(exc, S3Error) and exc.code in S3_FULL_CODES:
            return "object store"
        if isinstance(exc, ServerError) and exc.status_code == 507:
            return "object store"
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and "507" in str(exc.reason or ""):
            return "object store"
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "local disk"
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return None


def _storage_full(request: Request, store: str) -> JSONResponse:
    STORAGE_FULL.met(store)
    log.error("the %s is out of space: writes are refused with 507 until space is freed", store)
    return problem_response(
        507,
        "insufficient_storage",
        "Insufficient storage",
        f"the {store} is out of space; nothing was saved, retry later",
        request.url.path,
        headers={"Retry-After": str(STORAGE_FULL_RETRY_AFTER)},
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status, exc.code, exc.title, exc.detail, request.url.path, exc.errors, exc.headers,
            issue_code=exc.issue_code,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "path")), "message": err["msg"]}
            for err in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
        return problem_response(422, "validation_error", "Invalid input", detail, request.url.path, errors)

    @app.exception_handler(urllib3.exceptions.HTTPError)
    async def _object_store_down(request: Request, exc: Exception) -> JSONResponse:
        if (store := full_store(exc)) is not None:
            return _storage_full(request, store)
        return _unavailable(request, "the object store")

    @app.exception_handler(S3Error)
    @app.exception_handler(ServerError)
    async def _object_store_error(request: Request, exc: Exception) -> JSONResponse:
        # Issue 26: out of space is 507; anything else stays what it was (a 500 names a bug).
        if (store := full_store(exc)) is not None:
            return _storage_full(request, store)
        raise exc

    @app.exception_handler(OSError)
    async def _local_error(request: Request, exc: OSError) -> JSONResponse:
        if (store := full_store(exc)) is not None:
            return _storage_full(request, store)
        raise exc

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        if (store := full_store(exc)) is not None:
            return _storage_full(request, store)
        # Connection refused, statement or idle timeout, pool exhausted: all transient.
        cause = getattr(exc, "orig", exc) or exc
        log.warning("database unavailable: %s", type(cause).__name__)
        if isinstance(cause, CONFLICTING_CHANGE):
            return _unavailable(request, "the database", "gave way to a concurrent change of the same records")
        return _unavailable(request, "the database")

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # The server ended the session (idle-in-transaction timeout, admin shutdown): as
        # transient as a refused connection. Anything else is a bug and stays a 500.
        if exc.connection_invalidated or isinstance(exc.orig, TRANSIENT_DRIVER_ERRORS) or full_store(exc):
            return await _database_down(request, exc)
        raise exc

    @app.exception_handler(DataError)
    async def _data_rejected(request: Request, exc: Exception) -> JSONResponse:
        # Inputs are validated before they reach SQL; this is the backstop, not the plan.
        return problem_response(
            422, "unprocessable", "Invalid input",
            "a value was rejected by the database (out of range or containing a NUL byte); check the inputs",
            request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names only the methods of the first route on the path; a path served by
            # several routes (GET and POST) allows them all (RFC 9110 15.5.6).
            headers = {**(headers or {}), "Allow": ", ".join(sorted(_allowed_methods(request)))}
        return problem_response(
            exc.status_code, code, str(exc.detail), str(exc.detail), request.url.path, headers=headers
        )


CANDIDATE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> set[str]:
    allowed = set()
    for method in CANDIDATE_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.add(method)
    return allowed
