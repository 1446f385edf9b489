"""A small HTTP client for the public API, used by the client commands.

Analyses come back as ``AnalysisOut``, the API's own schema, so a command reads fields by
name and a renamed field fails at the first parse, not in the middle of printing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from shared.schemas.analyses import AnalysisOut
from shared.schemas.uploads import UploadOut

FINAL = {"succeeded", "rejected", "failed", "canceled"}


class ApiError(RuntimeError):
    """An answer of 400 or above, or one that is not the API's: one line, ``HTTP <status>: …``."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}: {_problem(response)}")
        self.status_code = response.status_code


class NotTheApi(ApiError):
    """A 2xx answer that is not the API's JSON: the URL points at something else."""

    def __init__(self, response: httpx.Response) -> None:
        RuntimeError.__init__(self, f"HTTP {response.status_code}: {_not_ours(response)}")
        self.status_code = response.status_code


class StorageRefused(ApiError):
    """The object store refused a presigned PUT (its answer is S3's XML, not a problem)."""

    def __init__(self, response: httpx.Response) -> None:
        url = response.request.url
        RuntimeError.__init__(
            self, f"HTTP {response.status_code}: the object store at {url.host}:{url.port} refused the direct upload"
        )
        self.status_code = response.status_code


JSON_TYPES = ("application/json", "application/problem+json")


def _content_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def _problem(response: httpx.Response) -> str:
    """The problem's ``detail`` (or ``title``) on one line; for an answer that is not the API's
    JSON, where it came from and what to check (a wrong URL answers HTML)."""
    if _content_type(response) in JSON_TYPES:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and (body.get("detail") or body.get("title")):
            return " ".join(str(body.get("detail") or body.get("title")).split())
    return _not_ours(response)


def _not_ours(response: httpx.Response) -> str:
    kind = _content_type(response) or "no content type"
    return (f"{response.request.method} {response.request.url} answered {kind}, not the DermaSentinel API's JSON; "
            "check --api-url / DERMASENTINEL_API_URL")


class Client:
    def __init__(self, api_url: str, api_key: str, timeout: float = 60.0) -> None:
        if not api_url:
            raise SystemExit("no API URL: run `dermasentinel up`, or pass --api-url / set DERMASENTINEL_API_URL")
        if not api_key:
            raise SystemExit("no API key: pass --api-key / set DERMASENTINEL_API_KEY")
        self.http = httpx.Client(
            base_url=api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )
        # Presigned URLs carry their own authorization: the API key never goes to the store.
        self.storage = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()
        self.storage.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call whose answer is the API's JSON: ApiError for a status of 400 or above,
        NotTheApi for an answer that is not JSON at all (the URL points at another server)."""
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response)
        if _content_type(response) not in JSON_TYPES:
            raise NotTheApi(response)
        return response

    def submit(
        self,
        image: bytes,
        filename: str,
        fields: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> AnalysisOut:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = {k: str(v) for k, v in fields.items() if v is not None}
        files = {"image": (Path(filename).name, image, "application/octet-stream")}
        response = self.request("POST", "/v1/analyses", data=data, files=files, headers=headers)
        return AnalysisOut.model_validate(response.json())

    def submit_direct(
        self,
        image: bytes,
        fields: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> AnalysisOut:
        """Send the image straight to the object store (``POST /v1/uploads``, then a PUT to its
        presigned URL) and submit the analysis by upload id: the API never carries the bytes."""
        content_type = "image/png" if image.startswith(b"\x89PNG") else "image/jpeg"
        upload = UploadOut.model_validate(
            self.request("POST", "/v1/uploads", json={"content_type": content_type}).json()
        )
        put = self.storage.put(upload.url, content=image, headers=upload.headers)
        if put.status_code >= 300:
            raise StorageRefused(put)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {k: v for k, v in fields.items() if v is not None}
        response = self.request(
            "POST", "/v1/analyses", json={**body, "upload_id": str(upload.id)}, headers=headers
        )
        return AnalysisOut.model_validate(response.json())

    def reprocess(self, analysis_id: str) -> AnalysisOut:
        """``POST /v1/analyses/{id}/reprocess``: a new queued analysis of the same image and inputs,
        on the models active when a worker takes it; its ``reprocessed_from`` names the original."""
        return AnalysisOut.model_validate(self.request("POST", f"/v1/analyses/{analysis_id}/reprocess").json())

    def get_analysis(self, analysis_id: str) -> AnalysisOut:
        return AnalysisOut.model_validate(self.request("GET", f"/v1/analyses/{analysis_id}").json())

    def wait(self, analysis_id: str, timeout: float = 600.0, interval: float = 0.5) -> AnalysisOut:
        """The analysis once it is final (succeeded, rejected, failed or canceled); TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            analysis = self.get_analysis(analysis_id)
            if analysis.status in FINAL:
                return analysis
            if time.monotonic() > deadline:
                raise TimeoutError(f"analysis {analysis_id} still {analysis.status} after {timeout:.0f}s")
            time.sleep(interval)
