"""Every operation of the client, written once for the sync and the async client.

An operation is a generator: it yields the ``Call`` it needs sent (or a ``Pause``), receives the
checked ``httpx.Response`` (or has the error thrown into it), and returns its result. ``Client``
runs them with ``httpx.Client`` and ``time.sleep``, ``AsyncClient`` with ``httpx.AsyncClient``
and ``asyncio.sleep``; neither holds any logic of its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, Union

import httpx
from pydantic import BaseModel

from dermasentinel_client import models
from dermasentinel_client._transport import Call
from dermasentinel_client.errors import WaitTimeout

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)
ImageInput = Union[str, "os.PathLike[str]", bytes, IO[bytes]]

FINAL_ANALYSIS = frozenset({"succeeded", "rejected", "failed", "canceled"})
FINAL_BATCH = frozenset({"completed", "canceled", "expired"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".dcm"})
MAX_PREFER_WAIT = 60  # the API waits at most this long on one request
BULK_MAX = 100  # items per POST /v1/uploads/bulk and /v1/uploads/submit
PAGE_LIMIT = 200


@dataclass(frozen=True)
class Pause:
    seconds: float


Op = Generator[Call | Pause, Any, T]


# ---------------------------------------------------------------- images


def read_image(image: ImageInput) -> tuple[bytes, str]:
    """The image's bytes and a file name for it: a path, bytes, or a binary file object."""
    if isinstance(image, bytes | bytearray):
        return bytes(image), "image"
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return path.read_bytes(), path.name
    data = image.read()
    if not isinstance(data, bytes):
        raise TypeError("image: open the file in binary mode ('rb')")
    return data, Path(str(getattr(image, "name", "image"))).name


def sniff_type(data: bytes) -> str:
    """The content type the bytes are: PNG, DICOM (``DICM`` at byte 128), else JPEG (the API
    judges the content itself and refuses what is neither)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[128:132] == b"DICM":
        return "application/dicom"
    return "image/jpeg"


def folder_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The images of a folder (not its sub-folders): .jpg, .jpeg, .png and .dcm, by name."""
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _fields(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _form(values: Mapping[str, Any]) -> dict[str, str]:
    """Form fields as the multipart route reads them: text, lists comma-separated."""
    return {k: ",".join(v) if isinstance(v, list | tuple) else str(v) for k, v in _fields(values).items()}


# ---------------------------------------------------------------- pages


def page(path: str, params: Mapping[str, Any]) -> Call:
    return Call("GET", path, params=_fields(params))


def items_and_cursor(response: httpx.Response, model: type[ModelT]) -> tuple[list[ModelT], str | None]:
    """One page's items, parsed, and the cursor of the next (None: the last page, or a list that
    has no pages)."""
    body = response.json()
    return [model.model_validate(item) for item in body["data"]], body.get("next_cursor")


def one(call: Call, model: type[ModelT]) -> Op[ModelT]:
    """One call whose answer is one ``model``."""
    response = yield call
    return model.model_validate(response.json())


def no_answer(call: Call) -> Op[None]:
    """One call answered 204."""
    yield call


def readiness() -> Op[models.Readiness]:
    response = yield Call("GET", "/readyz", retries=False, accept=frozenset({503}))
    return models.Readiness.model_validate(response.json())


# ---------------------------------------------------------------- analyses


def create_analysis(
    image: ImageInput | None,
    inputs: Mapping[str, Any],
    *,
    upload_id: str | None,
    direct: bool,
    wait: bool,
    timeout: float,
    poll_interval: float,
    idempotency_key: str | None,
    cancel_after: str | float | None,
    filename: str | None,
) -> Op[models.AnalysisOut]:
    """``POST /v1/analyses``: the image as a multipart file, or by ``upload_id`` (``direct``: a
    direct upload made here first, so the bytes go to the object store, not through the API).
    One Idempotency-Key for every retry. ``wait``: ``Prefer: wait`` and then polling until the
    analysis is final or ``timeout`` passes (``WaitTimeout``)."""
    started = time.monotonic()
    key = idempotency_key or f"sdk-{uuid.uuid4()}"
    headers = {"Idempotency-Key": key}
    if cancel_after is not None:
        headers["Cancel-After"] = str(cancel_after)
    call_timeout = None
    if wait:
        prefer = max(1, min(MAX_PREFER_WAIT, math.floor(timeout)))
        headers["Prefer"] = f"wait={prefer}"
        call_timeout = prefer + 30.0
    if image is not None and direct:
        upload = yield from create_upload(image)
        upload_id, image = upload.id, None
    if image is not None:
        data, name = read_image(image)
        files = {"image": (filename or name, data, sniff_type(data))}
        call = Call("POST", "/v1/analyses", data=_form(inputs), files=files, headers=headers)
    elif upload_id is not None:
        call = Call("POST", "/v1/analyses", json={**_fields(inputs), "upload_id": str(upload_id)}, headers=headers)
    else:
        raise ValueError("give an image (a path, bytes or a binary file) or an upload_id")
    call.timeout = call_timeout
    response = yield call
    analysis = models.AnalysisOut.model_validate(response.json())
    if not wait or analysis.status in FINAL_ANALYSIS:
        return analysis
    remaining = timeout - (time.monotonic() - started)
    return (yield from wait_analysis(analysis.id, max(0.0, remaining), poll_interval))


def get_analysis(analysis_id: str) -> Op[models.AnalysisOut]:
    response = yield Call("GET", f"/v1/analyses/{analysis_id}")
    return models.AnalysisOut.model_validate(response.json())


def wait_analysis(analysis_id: str, timeout: float, interval: float) -> Op[models.AnalysisOut]:
    """The analysis once it is final (succeeded, rejected, failed or canceled)."""
    deadline = time.monotonic() + timeout
    while True:
        analysis = yield from get_analysis(analysis_id)
        if analysis.status in FINAL_ANALYSIS:
            return analysis
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"analysis {analysis_id} still {analysis.status} after {timeout:.0f}s")
        yield Pause(interval)


def analysis_action(analysis_id: str, action: str) -> Op[models.AnalysisOut]:
    """``POST /v1/analyses/{id}/cancel`` or ``…/reprocess``."""
    response = yield Call("POST", f"/v1/analyses/{analysis_id}/{action}")
    return models.AnalysisOut.model_validate(response.json())


def delete_analysis(analysis_id: str) -> Op[None]:
    yield Call("DELETE", f"/v1/analyses/{analysis_id}", expect_json=False)


def send_feedback(analysis_id: str, body: Mapping[str, Any]) -> Op[models.FeedbackOut]:
    response = yield Call("POST", f"/v1/analyses/{analysis_id}/feedback", json=_fields(body))
    return models.FeedbackOut.model_validate(response.json())


def ask(analysis_id: str, question: str) -> Op[models.QuestionOut]:
    response = yield Call("POST", f"/v1/analyses/{analysis_id}/questions", json={"question": question})
    return models.QuestionOut.model_validate(response.json())


def report_pdf(analysis_id: str) -> Op[bytes]:
    """The PDF report (ApiError 409 until the report worker has written it)."""
    response = yield Call("GET", f"/v1/analyses/{analysis_id}/report.pdf", expect_json=False,
                          content_types=("application/pdf",))
    return response.content


# ---------------------------------------------------------------- direct uploads


def create_upload(image: ImageInput, content_type: str | None = None) -> Op[models.UploadOut]:
    """``POST /v1/uploads`` and the PUT of the bytes to its presigned URL: an ``upload_id`` for
    ``analyses.create(upload_id=…)``."""
    data, _ = read_image(image)
    response = yield Call("POST", "/v1/uploads", json={"content_type": content_type or sniff_type(data)})
    upload = models.UploadOut.model_validate(response.json())
    yield Call("PUT", upload.url, content=data, headers=dict(upload.headers), storage=True)
    return upload


def create_uploads(count: int, content_type: str) -> Op[list[models.UploadOut]]:
    """``POST /v1/uploads/bulk``: ``count`` (at most 100) upload ids and presigned URLs."""
    response = yield Call("POST", "/v1/uploads/bulk", json={"count": count, "content_type": content_type})
    return models.UploadsOut.model_validate(response.json()).uploads


def put_upload(upload: models.UploadOut, data: bytes) -> Op[None]:
    """The image's bytes to a presigned URL (the API key never goes to the object store)."""
    yield Call("PUT", upload.url, content=data, headers=dict(upload.headers), storage=True)


def submit_uploads(items: Sequence[Mapping[str, Any]]) -> Op[models.UploadSubmissionsOut]:
    """``POST /v1/uploads/submit``: up to 100 uploads as analyses, each item with its own
    ``upload_id``, analysis fields, ``idempotency_key`` and ``cancel_after``; answered item by item."""
    body = {"items": [{k: str(v) if k == "upload_id" else v for k, v in _fields(item).items()} for item in items]}
    # Every item carrying its own key, a retry of the whole call replays the ones that went in.
    keyed = all(item.get("idempotency_key") for item in items)
    response = yield Call("POST", "/v1/uploads/submit", json=body, idempotent=keyed)
    return models.UploadSubmissionsOut.model_validate(response.json())


# ---------------------------------------------------------------- batches


def create_batch(name: str, external_id: str | None, cancel_after: str | float | None) -> Op[models.BatchOut]:
    body = _fields({"name": name, "external_id": external_id, "cancel_after": cancel_after})
    response = yield Call("POST", "/v1/batches", json=body)
    return models.BatchOut.model_validate(response.json())


def get_batch(batch_id: str) -> Op[models.BatchOut]:
    response = yield Call("GET", f"/v1/batches/{batch_id}")
    return models.BatchOut.model_validate(response.json())


def seal_batch(batch_id: str) -> Op[models.BatchOut]:
    response = yield Call("POST", f"/v1/batches/{batch_id}/seal")
    return models.BatchOut.model_validate(response.json())


def cancel_batch(batch_id: str) -> Op[models.BatchCanceled]:
    response = yield Call("POST", f"/v1/batches/{batch_id}/cancel")
    return models.BatchCanceled.model_validate(response.json())


def batch_results(batch_id: str, order: str, items: bool) -> Op[models.BatchResults]:
    params = {"format": "json", "order": order, "items": "true" if items else "false"}
    response = yield Call("GET", f"/v1/batches/{batch_id}/results", params=params)
    return models.BatchResults.model_validate(response.json())


def wait_batch(
    batch_id: str, timeout: float, interval: float, on_progress: Callable[[models.BatchOut], None] | None
) -> Op[models.BatchOut]:
    """The batch once it has ended (completed, canceled or expired); ``on_progress`` sees each poll."""
    deadline = time.monotonic() + timeout
    while True:
        batch = yield from get_batch(batch_id)
        if on_progress is not None:
            on_progress(batch)
        if batch.state in FINAL_BATCH:
            return batch
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"batch {batch_id} still {batch.state} after {timeout:.0f}s ({batch.done} of "
                              f"{batch.total} done)")
        yield Pause(interval)


# File-based batches (issue 25): one archive in, NDJSON files out.
ARCHIVE_FORMATS = {".zip": "zip", ".tar": "tar", ".tgz": "tar", ".gz": "tar", ".ndjson": "ndjson", ".jsonl": "ndjson"}


def archive_format(path: Path) -> str:
    found = ARCHIVE_FORMATS.get(path.suffix.lower())
    if found is None:
        raise ValueError(f"{path.name}: an archive is .zip, .tar (.tar.gz) or .ndjson")
    return found


def upload_archive(
    batch_id: str, path: Path, on_progress: Callable[[int, int], None] | None
) -> Op[dict[str, Any]]:
    """``POST /v1/batches/{id}/archive`` and the PUT of the archive to its presigned URL."""
    response = yield Call("POST", f"/v1/batches/{batch_id}/archive", json={"format": archive_format(path)})
    archive = response.json()
    data = path.read_bytes()
    yield Call("PUT", archive["url"], content=data, headers=dict(archive.get("headers") or {}), storage=True)
    if on_progress is not None:
        on_progress(len(data), len(data))
    return dict(archive)


def batch_file(batch_id: str, which: str) -> Op[dict[str, Any]]:
    """``GET /v1/batches/{id}/output`` or ``…/errors``: ``{url, expires_at, lines, partial}``."""
    response = yield Call("GET", f"/v1/batches/{batch_id}/{which}")
    return dict(response.json())


def ndjson_lines(chunks: Iterable[str]) -> Generator[dict[str, Any], None, None]:
    for line in chunks:
        if line.strip():
            yield json.loads(line)


# ---------------------------------------------------------------- a folder as a batch


@dataclass(frozen=True)
class UploadProgress:
    """Where ``submit_folder`` is: ``done`` of ``total`` images settled (``accepted`` or
    ``refused``); ``path``: the image just settled."""

    total: int
    done: int
    accepted: int
    refused: int
    path: Path | None = None


@dataclass
class FolderSubmission:
    """What ``submit_folder`` did: the batch (sealed unless ``seal=False``), the analyses it
    queued, and the images the API refused, each with its problem."""

    batch: models.BatchOut
    accepted: dict[Path, models.AnalysisSummary] = field(default_factory=dict)
    refused: dict[Path, str] = field(default_factory=dict)


def folder_chunks(paths: list[Path], size: int) -> list[list[Path]]:
    """Chunks of at most ``size`` images of one content type (a bulk upload call takes one)."""
    by_type: dict[str, list[Path]] = {}
    for path in paths:
        with path.open("rb") as handle:
            by_type.setdefault(sniff_type(handle.read(132)), []).append(path)
    size = max(1, min(size, BULK_MAX))
    return [group[n:n + size] for group in by_type.values() for n in range(0, len(group), size)]


def submit_chunk(
    batch_id: str, paths: list[Path], fields_for: Callable[[Path], Mapping[str, Any]]
) -> Op[list[tuple[Path, models.AnalysisSummary | str]]]:
    """Some images of one type as analyses of the batch in two API calls: upload ids in bulk,
    one PUT each to the object store, then one bulk submission. Each item's Idempotency-Key is
    the batch and the image's SHA-256, so a retried call, or a rerun, replays rather than
    duplicates. Returns each image's analysis, or why it was refused."""
    images = [path.read_bytes() for path in paths]
    uploads = yield from create_uploads(len(paths), sniff_type(images[0]))
    for made, data in zip(uploads, images, strict=True):
        yield from put_upload(made, data)
    items = [
        {**fields_for(path), "batch_id": batch_id, "upload_id": made.id,
         "idempotency_key": f"folder:{batch_id}:{hashlib.sha256(data).hexdigest()}"}
        for path, made, data in zip(paths, uploads, images, strict=True)
    ]
    answer = yield from submit_uploads(items)
    settled: list[tuple[Path, models.AnalysisSummary | str]] = []
    for path, result in zip(paths, answer.results, strict=True):
        if result.analysis is not None:
            settled.append((path, result.analysis))
        else:
            problem = result.problem
            settled.append((path, f"HTTP {result.status}: {problem.detail if problem else 'refused'}"))
    return settled


def metadata_reader(
    metadata: Mapping[str, Mapping[str, Any]] | Callable[[Path], Mapping[str, Any]] | None,
) -> Callable[[Path], Mapping[str, Any]]:
    """``metadata`` as a function of the image's path: a mapping is keyed by file name."""
    if metadata is None:
        return lambda path: {}
    if callable(metadata):
        return metadata
    table = metadata
    return lambda path: table.get(path.name, {})
