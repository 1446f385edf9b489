"""``Client`` and ``AsyncClient``: the resources of the API, each method one operation of
``_operations`` run by the client's driver (sync: httpx.Client; async: httpx.AsyncClient)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel

from dermasentinel_client import _operations as ops
from dermasentinel_client import models
from dermasentinel_client._transport import Call, RetryPolicy, checked, send, send_async
from dermasentinel_client.errors import ApiError
from dermasentinel_client.webhooks import verify

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
__version__ = "0.1.0"
USER_AGENT = f"dermasentinel-client/{__version__}"
ProgressCallback = Callable[[ops.UploadProgress], None]
Metadata = Mapping[str, Mapping[str, Any]] | Callable[[Path], Mapping[str, Any]] | None


def _headers(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The base URL and the headers of every API request (no key: only /readyz answers)."""
    base_url = base_url or os.environ.get("DERMASENTINEL_API_URL")
    api_key = api_key or os.environ.get("DERMASENTINEL_API_KEY")
    if not base_url:
        raise ValueError("no API URL: pass base_url=… or set DERMASENTINEL_API_URL")
    headers = {"User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return base_url.rstrip("/"), headers


def _analysis_inputs(
    age: int | None, sex: str | None, site: str | None, pixel_spacing_mm: float | None, external_id: str | None,
    batch_id: str | None, priority: str | None, patient_reference: str | None, encounter_reference: str | None,
    webhook_url: str | None, webhook_events_filter: list[str] | None,
) -> dict[str, Any]:
    return dict(age=age, sex=sex, site=site, pixel_spacing_mm=pixel_spacing_mm, external_id=external_id,
                batch_id=batch_id, priority=priority, patient_reference=patient_reference,
                encounter_reference=encounter_reference, webhook_url=webhook_url,
                webhook_events_filter=webhook_events_filter)


def _refusal(exc: Exception) -> str:
    """An error that settles one chunk of a folder as refused; a key that cannot upload at all
    stops the whole run."""
    if isinstance(exc, ApiError) and exc.status_code in (401, 403):
        raise exc
    return str(exc)


# ================================================================ sync


class Client:
    """The DermaSentinel API.

    ``Client(base_url="http://127.0.0.1:8000", api_key="dsk_…")`` (or ``DERMASENTINEL_API_URL``
    and ``DERMASENTINEL_API_KEY``). Requests are retried as ``retry`` says (``RetryPolicy``:
    429 and 503 after their ``Retry-After``, connection failures when safe). Use it as a context
    manager, or ``close()`` it."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, headers = _headers(base_url, api_key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        # Presigned URLs carry their own authorization: the API key never goes to the object store.
        self._storage = httpx.Client(timeout=timeout, headers={"User-Agent": USER_AGENT}, transport=transport)
        self.analyses = Analyses(self)
        self.uploads = Uploads(self)
        self.batches = Batches(self)
        self.webhooks = Webhooks(self)
        self.api_keys = ApiKeys(self)
        self.audit_events = AuditEvents(self)
        self.models = Models(self)
        self.destinations = Destinations(self)

    def close(self) -> None:
        self._http.close()
        self._storage.close()

    def __enter__(self) -> Client:
        return self

    def readiness(self) -> models.Readiness:
        """``GET /readyz``: ``status`` ready or not, and each dependency's check (no key needed)."""
        return self._run(ops.readiness())

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, op: ops.Op[T]) -> T:
        step = next(op)
        while True:
            try:
                if isinstance(step, ops.Pause):
                    time.sleep(step.seconds)
                    value: Any = None
                else:
                    value = send(self.retry, self._http, self._storage, step)
            except Exception as exc:
                try:
                    step = op.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                step = op.send(value)
            except StopIteration as done:
                return done.value

    def _pages(self, path: str, params: Mapping[str, Any], model: type[M]) -> Iterator[M]:
        cursor = None
        while True:
            response = send(self.retry, self._http, self._storage, ops.page(path, {**params, "cursor": cursor}))
            items, cursor = ops.items_and_cursor(response, model)
            yield from items
            if not cursor:
                return

    def _stream(self, call: Call) -> Iterator[httpx.Response]:
        http = self._storage if call.storage else self._http
        with http.stream(call.method, call.url, **call.kwargs()) as response:
            if response.status_code >= 300:
                response.read()
            yield checked(call, response)


class Analyses:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        image: ops.ImageInput | None = None,
        *,
        upload_id: str | None = None,
        direct: bool = False,
        wait: bool = False,
        timeout: float = 600.0,
        poll_interval: float = 0.5,
        age: int | None = None,
        sex: str | None = None,
        site: str | None = None,
        pixel_spacing_mm: float | None = None,
        external_id: str | None = None,
        batch_id: str | None = None,
        priority: str | None = None,
        patient_reference: str | None = None,
        encounter_reference: str | None = None,
        webhook_url: str | None = None,
        webhook_events_filter: list[str] | None = None,
        cancel_after: str | float | None = None,
        idempotency_key: str | None = None,
        filename: str | None = None,
    ) -> models.AnalysisOut:
        """Submit a photo (a path, bytes or a binary file; or the ``upload_id`` of a direct
        upload; ``direct=True`` makes one). ``wait=True``: the final analysis, or
        ``WaitTimeout`` after ``timeout`` seconds. Retries carry one Idempotency-Key (yours, or
        one made here), so an image is never analysed twice."""
        inputs = _analysis_inputs(age, sex, site, pixel_spacing_mm, external_id, batch_id, priority,
                                  patient_reference, encounter_reference, webhook_url, webhook_events_filter)
        return self._client._run(ops.create_analysis(
            image, inputs, upload_id=upload_id, direct=direct, wait=wait, timeout=timeout,
            poll_interval=poll_interval, idempotency_key=idempotency_key, cancel_after=cancel_after,
            filename=filename,
        ))

    def get(self, analysis_id: str) -> models.AnalysisOut:
        return self._client._run(ops.get_analysis(str(analysis_id)))

    def wait(self, analysis_id: str, timeout: float = 600.0, poll_interval: float = 0.5) -> models.AnalysisOut:
        """The analysis once final (succeeded, rejected, failed, canceled); ``WaitTimeout`` after ``timeout``."""
        return self._client._run(ops.wait_analysis(str(analysis_id), timeout, poll_interval))

    def list(
        self, *, status: str | None = None, batch_id: str | None = None, external_id: str | None = None,
        page_size: int = ops.PAGE_LIMIT,
    ) -> Iterator[models.AnalysisSummary]:
        """Every analysis, newest first, page after page as the iteration goes."""
        params = {"status": status, "batch_id": batch_id, "external_id": external_id, "limit": page_size}
        return self._client._pages("/v1/analyses", params, models.AnalysisSummary)

    def cancel(self, analysis_id: str) -> models.AnalysisOut:
        return self._client._run(ops.analysis_action(str(analysis_id), "cancel"))

    def reprocess(self, analysis_id: str) -> models.AnalysisOut:
        """A new analysis of the same image and inputs on the active models (the original is kept)."""
        return self._client._run(ops.analysis_action(str(analysis_id), "reprocess"))

    def delete(self, analysis_id: str) -> None:
        """Erase the analysis, its image and its artifacts."""
        self._client._run(ops.delete_analysis(str(analysis_id)))

    def feedback(self, analysis_id: str, *, agrees: bool, final_diagnosis: str | None = None,
                 histopathology: str | None = None, notes: str | None = None) -> models.FeedbackOut:
        body = dict(agrees=agrees, final_diagnosis=final_diagnosis, histopathology=histopathology, notes=notes)
        return self._client._run(ops.send_feedback(str(analysis_id), body))

    def ask(self, analysis_id: str, question: str) -> models.QuestionOut:
        return self._client._run(ops.ask(str(analysis_id), question))

    def questions(self, analysis_id: str) -> Iterator[models.QuestionOut]:
        return self._client._pages(f"/v1/analyses/{analysis_id}/questions", {}, models.QuestionOut)

    def report_pdf(self, analysis_id: str) -> bytes:
        """The PDF report; ApiError 409 until it is written."""
        return self._client._run(ops.report_pdf(str(analysis_id)))


class Uploads:
    """Direct uploads: the image goes to the object store, never through the API."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, image: ops.ImageInput, content_type: str | None = None) -> models.UploadOut:
        """One upload, its bytes PUT: pass its ``id`` as ``analyses.create(upload_id=…)``."""
        return self._client._run(ops.create_upload(image, content_type))

    def create_bulk(self, count: int, content_type: str = "image/jpeg") -> list[models.UploadOut]:
        """Up to 100 upload ids and presigned URLs in one call (nothing PUT yet: ``put``)."""
        return self._client._run(ops.create_uploads(count, content_type))

    def put(self, upload: models.UploadOut, data: bytes) -> None:
        self._client._run(ops.put_upload(upload, data))

    def submit(self, items: Sequence[Mapping[str, Any]]) -> models.UploadSubmissionsOut:
        """Up to 100 uploads as analyses in one call, answered item by item."""
        return self._client._run(ops.submit_uploads(items))


class Batches:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, name: str, *, external_id: str | None = None,
               cancel_after: str | float | None = None) -> models.BatchOut:
        return self._client._run(ops.create_batch(name, external_id, cancel_after))

    def get(self, batch_id: str) -> models.BatchOut:
        return self._client._run(ops.get_batch(str(batch_id)))

    def list(self, *, name: str | None = None, page_size: int = ops.PAGE_LIMIT) -> Iterator[models.BatchSummary]:
        """Every batch, newest first (``name``: only those called so)."""
        return self._client._pages("/v1/batches", {"name": name, "limit": page_size}, models.BatchSummary)

    def seal(self, batch_id: str) -> models.BatchOut:
        return self._client._run(ops.seal_batch(str(batch_id)))

    def cancel(self, batch_id: str) -> models.BatchCanceled:
        return self._client._run(ops.cancel_batch(str(batch_id)))

    def wait(self, batch_id: str, timeout: float = 6 * 3600.0, poll_interval: float = 1.0,
             on_progress: Callable[[models.BatchOut], None] | None = None) -> models.BatchOut:
        """The batch once it has ended (completed, canceled or expired); ``WaitTimeout`` after ``timeout``."""
        return self._client._run(ops.wait_batch(str(batch_id), timeout, poll_interval, on_progress))

    def results(self, batch_id: str, *, order: str = "risk", items: bool = True) -> models.BatchResults:
        """The triage list as JSON: the batch, every item ranked, the summary."""
        return self._client._run(ops.batch_results(str(batch_id), order, items))

    def iter_results(self, batch_id: str, *, format: str = "csv", order: str = "risk") -> Iterator[bytes]:
        """The triage list as the API streams it (``format``: csv, isic or json), in chunks."""
        call = Call("GET", f"/v1/batches/{batch_id}/results", params={"format": format, "order": order},
                    expect_json=format == "json", content_types=("text/csv",))
        for response in self._client._stream(call):
            yield from response.iter_bytes()

    def download_results(self, batch_id: str, out: str | os.PathLike[str] | IO[bytes], *, format: str = "csv",
                         order: str = "risk") -> None:
        """The triage list written to ``out``: a path is written whole or not at all."""
        if not isinstance(out, str | os.PathLike):
            for chunk in self.iter_results(batch_id, format=format, order=order):
                out.write(chunk)
            return
        path = Path(out)
        partial = path.with_name(path.name + ".part")
        try:
            with partial.open("wb") as handle:
                for chunk in self.iter_results(batch_id, format=format, order=order):
                    handle.write(chunk)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)

    def submit_folder(
        self,
        folder: str | os.PathLike[str],
        *,
        name: str | None = None,
        batch_id: str | None = None,
        external_id: str | None = None,
        cancel_after: str | float | None = None,
        metadata: Metadata = None,
        seal: bool = True,
        concurrency: int = 4,
        chunk_size: int = 50,
        on_progress: ProgressCallback | None = None,
    ) -> ops.FolderSubmission:
        """Every image of ``folder`` (.jpg, .jpeg, .png, .dcm) as one batch, by direct uploads in
        bulk: a new batch called ``name`` (default: the folder's name), or the open batch
        ``batch_id`` to continue one (images already in it are replayed, not duplicated).
        ``metadata``: each image's fields (age, sex, site, external_id, …) by file name, or a
        function of its path. ``on_progress`` gets an ``UploadProgress`` as each image settles.
        The batch is sealed at the end unless ``seal=False``."""
        paths = ops.folder_images(folder)
        batch = self.get(batch_id) if batch_id else self.create(
            name or Path(folder).resolve().name, external_id=external_id, cancel_after=cancel_after)
        outcome = ops.FolderSubmission(batch=batch)
        fields_for = ops.metadata_reader(metadata)
        progress = _FolderProgress(len(paths), outcome, on_progress)
        chunks = ops.folder_chunks(paths, max(1, min(chunk_size, -(-len(paths) // concurrency) if paths else 1)))

        def one(chunk: list[Path]) -> None:
            try:
                settled = self._client._run(ops.submit_chunk(str(batch.id), chunk, fields_for))
            except Exception as exc:
                reason = _refusal(exc)
                settled = [(path, reason) for path in chunk]
            progress.settle(settled)

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            for future in [pool.submit(one, chunk) for chunk in chunks]:
                future.result()
        outcome.batch = self.seal(str(batch.id)) if seal else self.get(str(batch.id))
        return outcome

    def submit_archive(
        self, path: str | os.PathLike[str], *, name: str | None = None, external_id: str | None = None,
        cancel_after: str | float | None = None, on_progress: Callable[[int, int], None] | None = None,
    ) -> models.BatchOut:
        """A file-based batch: one archive (.zip or .tar of images with ``manifest.csv``, or an
        .ndjson manifest of upload ids) PUT to the object store, then the batch sealed; the
        ingest workers unpack it. ``on_progress(bytes_sent, total)``."""
        archive = Path(path)
        ops.archive_format(archive)  # a wrong kind of file is refused before a batch is made
        batch = self.create(name or archive.stem, external_id=external_id, cancel_after=cancel_after)
        self._client._run(ops.upload_archive(str(batch.id), archive, on_progress))
        return self.seal(str(batch.id))

    def output(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The batch's output file (``GET …/output``): one parsed NDJSON line per item."""
        return self._file(batch_id, "output")

    def errors(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The batch's errors file (``GET …/errors``): one parsed line per refused row or failed item."""
        return self._file(batch_id, "errors")

    def _file(self, batch_id: str, which: str) -> Iterator[dict[str, Any]]:
        described = self._client._run(ops.batch_file(str(batch_id), which))
        for response in self._client._stream(Call("GET", described["url"], storage=True)):
            yield from ops.ndjson_lines(response.iter_lines())


class _FolderProgress:
    """The counts of a folder's upload, told to the callback as each image settles (thread-safe)."""

    def __init__(self, total: int, outcome: ops.FolderSubmission, callback: ProgressCallback | None) -> None:
        import threading

        self.total, self.outcome, self.callback = total, outcome, callback
        self._lock = threading.Lock()

    def settle(self, settled: list[tuple[Path, models.AnalysisSummary | str]]) -> None:
        with self._lock:
            for path, result in settled:
                if isinstance(result, str):
                    self.outcome.refused[path] = result
                else:
                    self.outcome.accepted[path] = result
                if self.callback is not None:
                    accepted, refused = len(self.outcome.accepted), len(self.outcome.refused)
                    self.callback(ops.UploadProgress(self.total, accepted + refused, accepted, refused, path))


class Webhooks:
    """Webhook endpoints, their delivery logs, and ``verify`` for what a receiver gets."""

    def __init__(self, client: Client) -> None:
        self._client = client

    verify = staticmethod(verify)

    def create_endpoint(self, url: str, *, events: Sequence[str] | None = None,
                        description: str | None = None) -> models.WebhookEndpointWithSecret:
        """A new endpoint; its ``secret`` (``whsec_…``) is shown only in this answer."""
        return self._client._run(ops.one(_endpoint_call(url, events, description), models.WebhookEndpointWithSecret))

    def list_endpoints(self) -> Iterator[models.WebhookEndpointOut]:
        return self._client._pages("/v1/webhook-endpoints", {}, models.WebhookEndpointOut)

    def get_endpoint(self, endpoint_id: str) -> models.WebhookEndpointOut:
        return self._client._run(ops.one(Call("GET", f"/v1/webhook-endpoints/{endpoint_id}"),
                                         models.WebhookEndpointOut))

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._client._run(ops.no_answer(Call("DELETE", f"/v1/webhook-endpoints/{endpoint_id}", expect_json=False)))

    def send_test(self, endpoint_id: str) -> models.WebhookTestSent:
        return self._client._run(ops.one(Call("POST", f"/v1/webhook-endpoints/{endpoint_id}/test"),
                                         models.WebhookTestSent))

    def deliveries(self, endpoint_id: str, *, limit: int = 200) -> Iterator[models.DeliveryOut]:
        """The endpoint's latest ``limit`` deliveries, newest first, with every attempt."""
        return self._client._pages(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", {"limit": limit},
                                   models.DeliveryOut)


class ApiKeys:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> Iterator[models.ApiKeyOut]:
        return self._client._pages("/v1/api-keys", {}, models.ApiKeyOut)

    def create(self, name: str, scopes: Sequence[str] | None = None) -> models.ApiKeyCreated:
        """A new key of this tenant; its ``key`` is shown only in this answer."""
        return self._client._run(ops.one(_key_call(name, scopes), models.ApiKeyCreated))

    def revoke(self, key_id: str) -> models.ApiKeyOut:
        return self._client._run(ops.one(Call("DELETE", f"/v1/api-keys/{key_id}"), models.ApiKeyOut))


class AuditEvents:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, **filters: str | None) -> Iterator[models.AuditEventOut]:
        """The tenant's audit trail, newest first (filters: since, until, action, resource_type,
        resource_id, actor, outcome); needs the ``audit:read`` scope."""
        return self._client._pages("/v1/audit-events", {**filters, "limit": ops.PAGE_LIMIT}, models.AuditEventOut)


class Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> Iterator[models.ModelListed]:
        """The model registry's versions."""
        return self._client._pages("/v1/models", {}, models.ModelListed)


class Destinations:
    """The tenant's EHR (FHIR) and PACS (DICOMweb) destinations' delivery logs."""

    KINDS = ("fhir", "dicomweb")

    def __init__(self, client: Client) -> None:
        self._client = client

    def deliveries(self, kind: str, *, limit: int = 200) -> Iterator[models.DeliveryOut]:
        """``kind`` ``fhir`` or ``dicomweb``: the latest ``limit`` deliveries, newest first."""
        return self._client._pages(_deliveries_path(kind), {"limit": limit}, models.DeliveryOut)


def _endpoint_call(url: str, events: Sequence[str] | None, description: str | None) -> Call:
    return Call("POST", "/v1/webhook-endpoints", json={"url": url, "events": events, "description": description})


def _key_call(name: str, scopes: Sequence[str] | None) -> Call:
    body = {"name": name, "scopes": list(scopes) if scopes else None}
    return Call("POST", "/v1/api-keys", json={k: v for k, v in body.items() if v})


def _deliveries_path(kind: str) -> str:
    if kind not in Destinations.KINDS:
        raise ValueError(f"kind: one of {', '.join(Destinations.KINDS)}")
    return f"/v1/{kind}-destination/deliveries"


# ================================================================ async


class AsyncClient:
    """``Client`` for asyncio: the same resources, each method awaited, each list an async iterator."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, headers = _headers(base_url, api_key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self._storage = httpx.AsyncClient(timeout=timeout, headers={"User-Agent": USER_AGENT}, transport=transport)
        self.analyses = AsyncAnalyses(self)
        self.uploads = AsyncUploads(self)
        self.batches = AsyncBatches(self)
        self.webhooks = AsyncWebhooks(self)
        self.api_keys = AsyncApiKeys(self)
        self.audit_events = AsyncAuditEvents(self)
        self.models = AsyncModels(self)
        self.destinations = AsyncDestinations(self)

    async def close(self) -> None:
        await self._http.aclose()
        await self._storage.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def readiness(self) -> models.Readiness:
        return await self._run(ops.readiness())

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _run(self, op: ops.Op[T]) -> T:
        step = next(op)
        while True:
            try:
                if isinstance(step, ops.Pause):
                    await asyncio.sleep(step.seconds)
                    value: Any = None
                else:
                    value = await send_async(self.retry, self._http, self._storage, step)
            except Exception as exc:
                try:
                    step = op.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                step = op.send(value)
            except StopIteration as done:
                return done.value

    async def _pages(self, path: str, params: Mapping[str, Any], model: type[M]) -> AsyncIterator[M]:
        cursor = None
        while True:
            call = ops.page(path, {**params, "cursor": cursor})
            response = await send_async(self.retry, self._http, self._storage, call)
            items, cursor = ops.items_and_cursor(response, model)
            for item in items:
                yield item
            if not cursor:
                return


class AsyncAnalyses:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        image: ops.ImageInput | None = None,
        *,
        upload_id: str | None = None,
        direct: bool = False,
        wait: bool = False,
        timeout: float = 600.0,
        poll_interval: float = 0.5,
        age: int | None = None,
        sex: str | None = None,
        site: str | None = None,
        pixel_spacing_mm: float | None = None,
        external_id: str | None = None,
        batch_id: str | None = None,
        priority: str | None = None,
        patient_reference: str | None = None,
        encounter_reference: str | None = None,
        webhook_url: str | None = None,
        webhook_events_filter: list[str] | None = None,
        cancel_after: str | float | None = None,
        idempotency_key: str | None = None,
        filename: str | None = None,
    ) -> models.AnalysisOut:
        """As ``Client.analyses.create``."""
        inputs = _analysis_inputs(age, sex, site, pixel_spacing_mm, external_id, batch_id, priority,
                                  patient_reference, encounter_reference, webhook_url, webhook_events_filter)
        return await self._client._run(ops.create_analysis(
            image, inputs, upload_id=upload_id, direct=direct, wait=wait, timeout=timeout,
            poll_interval=poll_interval, idempotency_key=idempotency_key, cancel_after=cancel_after,
            filename=filename,
        ))

    async def get(self, analysis_id: str) -> models.AnalysisOut:
        return await self._client._run(ops.get_analysis(str(analysis_id)))

    async def wait(self, analysis_id: str, timeout: float = 600.0, poll_interval: float = 0.5) -> models.AnalysisOut:
        return await self._client._run(ops.wait_analysis(str(analysis_id), timeout, poll_interval))

    def list(
        self, *, status: str | None = None, batch_id: str | None = None, external_id: str | None = None,
        page_size: int = ops.PAGE_LIMIT,
    ) -> AsyncIterator[models.AnalysisSummary]:
        params = {"status": status, "batch_id": batch_id, "external_id": external_id, "limit": page_size}
        return self._client._pages("/v1/analyses", params, models.AnalysisSummary)

    async def cancel(self, analysis_id: str) -> models.AnalysisOut:
        return await self._client._run(ops.analysis_action(str(analysis_id), "cancel"))

    async def reprocess(self, analysis_id: str) -> models.AnalysisOut:
        return await self._client._run(ops.analysis_action(str(analysis_id), "reprocess"))

    async def delete(self, analysis_id: str) -> None:
        await self._client._run(ops.delete_analysis(str(analysis_id)))

    async def feedback(self, analysis_id: str, *, agrees: bool, final_diagnosis: str | None = None,
                       histopathology: str | None = None, notes: str | None = None) -> models.FeedbackOut:
        body = dict(agrees=agrees, final_diagnosis=final_diagnosis, histopathology=histopathology, notes=notes)
        return await self._client._run(ops.send_feedback(str(analysis_id), body))

    async def ask(self, analysis_id: str, question: str) -> models.QuestionOut:
        return await self._client._run(ops.ask(str(analysis_id), question))

    def questions(self, analysis_id: str) -> AsyncIterator[models.QuestionOut]:
        return self._client._pages(f"/v1/analyses/{analysis_id}/questions", {}, models.QuestionOut)

    async def report_pdf(self, analysis_id: str) -> bytes:
        return await self._client._run(ops.report_pdf(str(analysis_id)))


class AsyncBatches:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, name: str, *, external_id: str | None = None,
                     cancel_after: str | float | None = None) -> models.BatchOut:
        return await self._client._run(ops.create_batch(name, external_id, cancel_after))

    async def get(self, batch_id: str) -> models.BatchOut:
        return await self._client._run(ops.get_batch(str(batch_id)))

    def list(self, *, name: str | None = None, page_size: int = ops.PAGE_LIMIT) -> AsyncIterator[models.BatchSummary]:
        return self._client._pages("/v1/batches", {"name": name, "limit": page_size}, models.BatchSummary)

    async def seal(self, batch_id: str) -> models.BatchOut:
        return await self._client._run(ops.seal_batch(str(batch_id)))

    async def cancel(self, batch_id: str) -> models.BatchCanceled:
        return await self._client._run(ops.cancel_batch(str(batch_id)))

    async def wait(self, batch_id: str, timeout: float = 6 * 3600.0, poll_interval: float = 1.0,
                   on_progress: Callable[[models.BatchOut], None] | None = None) -> models.BatchOut:
        return await self._client._run(ops.wait_batch(str(batch_id), timeout, poll_interval, on_progress))

    async def results(self, batch_id: str, *, order: str = "risk", items: bool = True) -> models.BatchResults:
        return await self._client._run(ops.batch_results(str(batch_id), order, items))

    async def submit_folder(
        self,
        folder: str | os.PathLike[str],
        *,
        name: str | None = None,
        batch_id: str | None = None,
        external_id: str | None = None,
        cancel_after: str | float | None = None,
        metadata: Metadata = None,
        seal: bool = True,
        concurrency: int = 4,
        chunk_size: int = 50,
        on_progress: ProgressCallback | None = None,
    ) -> ops.FolderSubmission:
        """As ``Client.batches.submit_folder``, ``concurrency`` chunks in flight at once."""
        paths = ops.folder_images(folder)
        batch = await self.get(batch_id) if batch_id else await self.create(
            name or Path(folder).resolve().name, external_id=external_id, cancel_after=cancel_after)
        outcome = ops.FolderSubmission(batch=batch)
        fields_for = ops.metadata_reader(metadata)
        progress = _FolderProgress(len(paths), outcome, on_progress)
        chunks = ops.folder_chunks(paths, max(1, min(chunk_size, -(-len(paths) // concurrency) if paths else 1)))
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(chunk: list[Path]) -> None:
            async with gate:
                try:
                    settled = await self._client._run(ops.submit_chunk(str(batch.id), chunk, fields_for))
                except Exception as exc:
                    reason = _refusal(exc)
                    settled = [(path, reason) for path in chunk]
                progress.settle(settled)

        await asyncio.gather(*(one(chunk) for chunk in chunks))
        outcome.batch = await self.seal(str(batch.id)) if seal else await self.get(str(batch.id))
        return outcome


class AsyncUploads:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, image: ops.ImageInput, content_type: str | None = None) -> models.UploadOut:
        return await self._client._run(ops.create_upload(image, content_type))

    async def create_bulk(self, count: int, content_type: str = "image/jpeg") -> list[models.UploadOut]:
        return await self._client._run(ops.create_uploads(count, content_type))

    async def put(self, upload: models.UploadOut, data: bytes) -> None:
        await self._client._run(ops.put_upload(upload, data))

    async def submit(self, items: Sequence[Mapping[str, Any]]) -> models.UploadSubmissionsOut:
        return await self._client._run(ops.submit_uploads(items))


class AsyncWebhooks:
    verify = staticmethod(verify)

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create_endpoint(self, url: str, *, events: Sequence[str] | None = None,
                              description: str | None = None) -> models.WebhookEndpointWithSecret:
        return await self._client._run(ops.one(_endpoint_call(url, events, description),
                                               models.WebhookEndpointWithSecret))

    def list_endpoints(self) -> AsyncIterator[models.WebhookEndpointOut]:
        return self._client._pages("/v1/webhook-endpoints", {}, models.WebhookEndpointOut)

    async def get_endpoint(self, endpoint_id: str) -> models.WebhookEndpointOut:
        return await self._client._run(ops.one(Call("GET", f"/v1/webhook-endpoints/{endpoint_id}"),
                                               models.WebhookEndpointOut))

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await self._client._run(ops.no_answer(Call("DELETE", f"/v1/webhook-endpoints/{endpoint_id}",
                                                   expect_json=False)))

    async def send_test(self, endpoint_id: str) -> models.WebhookTestSent:
        return await self._client._run(ops.one(Call("POST", f"/v1/webhook-endpoints/{endpoint_id}/test"),
                                               models.WebhookTestSent))

    def deliveries(self, endpoint_id: str, *, limit: int = 200) -> AsyncIterator[models.DeliveryOut]:
        return self._client._pages(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", {"limit": limit},
                                   models.DeliveryOut)


class AsyncApiKeys:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def list(self) -> AsyncIterator[models.ApiKeyOut]:
        return self._client._pages("/v1/api-keys", {}, models.ApiKeyOut)

    async def create(self, name: str, scopes: Sequence[str] | None = None) -> models.ApiKeyCreated:
        return await self._client._run(ops.one(_key_call(name, scopes), models.ApiKeyCreated))

    async def revoke(self, key_id: str) -> models.ApiKeyOut:
        return await self._client._run(ops.one(Call("DELETE", f"/v1/api-keys/{key_id}"), models.ApiKeyOut))


class AsyncAuditEvents:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def list(self, **filters: str | None) -> AsyncIterator[models.AuditEventOut]:
        return self._client._pages("/v1/audit-events", {**filters, "limit": ops.PAGE_LIMIT}, models.AuditEventOut)


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def list(self) -> AsyncIterator[models.ModelListed]:
        return self._client._pages("/v1/models", {}, models.ModelListed)


class AsyncDestinations:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def deliveries(self, kind: str, *, limit: int = 200) -> AsyncIterator[models.DeliveryOut]:
        return self._client._pages(_deliveries_path(kind), {"limit": limit}, models.DeliveryOut)
