"""What the client raises. An answer of 400 or above is an ``ApiError`` carrying the API's
problem document; an answer that is not the API's JSON is ``NotTheApi`` (the base URL points at
another server); a presigned PUT the object store refused is ``StorageRefused``. A connection
that fails even after the retries raises httpx's own ``httpx.TransportError``."""

from __future__ import annotations

from typing import Any

import httpx

JSON_TYPES = ("application/json", "application/problem+json")


class DermaSentinelError(Exception):
    """Every error of this client that is not httpx's."""


class ApiError(DermaSentinelError):
    """An answer of 400 or above: ``HTTP <status>: <the problem's detail>``.

    ``status_code``, ``problem`` (the problem+json document as a dict, or None), ``code`` (the
    last part of its ``type``, e.g. ``batch_sealed``), ``request_id`` (``X-Request-ID``) and
    ``response``."""

    def __init__(self, response: httpx.Response, message: str | None = None) -> None:
        super().__init__(message or f"HTTP {response.status_code}: {_problem_text(response)}")
        self.response = response
        self.status_code = response.status_code
        self.problem: dict[str, Any] | None = _problem(response)
        self.request_id = response.headers.get("x-request-id")

    @property
    def code(self) -> str | None:
        kind = (self.problem or {}).get("type")
        return str(kind).rstrip("/").rsplit("/", 1)[-1] if kind else None

    @property
    def detail(self) -> str:
        problem = self.problem or {}
        return str(problem.get("detail") or problem.get("title") or "")


class NotTheApi(ApiError):
    """A 2xx answer that is not the API's JSON: the base URL points at something else."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response, f"HTTP {response.status_code}: {_not_ours(response)}")


class StorageRefused(ApiError):
    """The object store refused a presigned PUT or GET (its answer is S3's XML, not a problem)."""

    def __init__(self, response: httpx.Response) -> None:
        url = response.request.url
        super().__init__(
            response,
            f"HTTP {response.status_code}: the object store at {url.host}:{url.port} refused the "
            f"{'direct upload' if response.request.method == 'PUT' else 'download'}",
        )


class WaitTimeout(DermaSentinelError, TimeoutError):
    """An analysis or batch was not final when the wait's time ran out."""


def content_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def _problem(response: httpx.Response) -> dict[str, Any] | None:
    if content_type(response) not in JSON_TYPES:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _problem_text(response: httpx.Response) -> str:
    """The problem's ``detail`` (or ``title``) on one line; for an answer that is not the API's
    JSON, where it came from (a wrong URL answers HTML)."""
    body = _problem(response)
    if body and (body.get("detail") or body.get("title")):
        return " ".join(str(body.get("detail") or body.get("title")).split())
    return _not_ours(response)


def _not_ours(response: httpx.Response) -> str:
    kind = content_type(response) or "no content type"
    return (f"{response.request.method} {response.request.url} answered {kind}, not the DermaSentinel API's JSON; "
            "check the API URL")
