"""``dermasentinel batch submit``: a folder of photos (and a spreadsheet) as one batch.

The rows come from ``cli.manifest`` (the folder and its spreadsheet, checked against the API's
vocabulary); this module puts them in a batch on the server, waits for it and writes the
triage list. The run is resumable: it continues the newest open batch of the same name, skips
images the batch already holds (by content hash), and sends each upload with an
Idempotency-Key derived from the batch id and the content hash, so an upload whose answer was
lost is replayed by the API rather than duplicated. Bad rows are reported with their manifest
line and never stop the others. Exit status: 0 when every valid row is in the batch (and, with --wait, the batch has
finished); bad rows are reported but do not change it. 1 when a valid row could not be
uploaded or the wait timed out; rerun the same command to continue.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from cli.client import ApiError, Client
from cli.manifest import BadRow, Row, external_id_from, plan_batch
from cli.render import disposition_counts, equity_table, triage_summary
from shared.config import get_settings
from shared.schemas.analyses import AnalysisPage
from shared.schemas.batches import BatchOut, BatchPage, BatchResults
from shared.schemas.uploads import UploadOut

UPLOAD_ATTEMPTS = 4
RETRY_STATUSES = {429, 500, 502, 503, 504}
FINAL_STATES = {"completed", "canceled", "expired"}  # how a sealed batch ends (issue 25)
T = TypeVar("T")


# ---------------------------------------------------------------- the batch on the server


def find_or_create_batch(client: Client, name: str, external_id: str | None) -> tuple[BatchOut, bool]:
    """The newest batch called ``name`` if there is one (to resume or report), else a new one.
    Returns the batch and whether it was created now."""
    listed = BatchPage.model_validate(
        client.request("GET", "/v1/batches", params={"name": name, "limit": 1}).json()
    ).data
    if listed:
        return BatchOut.model_validate(client.request("GET", f"/v1/batches/{listed[0].id}").json()), False
    body = {"name": name, "external_id": external_id}
    created = client.request("POST", "/v1/batches", json={k: v for k, v in body.items() if v}).json()
    return BatchOut.model_validate(created), True


def hashes_in_batch(client: Client, batch_id: str) -> set[str]:
    """The content hashes of the images the batch already holds (a resumed run skips them)."""
    hashes: set[str] = set()
    cursor = None
    while True:
        params = {"batch_id": batch_id, "limit": 200, **({"cursor": cursor} if cursor else {})}
        page = AnalysisPage.model_validate(client.request("GET", "/v1/analyses", params=params).json())
        hashes.update(a.image.sha256 for a in page.data if a.image.sha256)
        cursor = page.next_cursor
        if not cursor:
            return hashes


def idempotency_key(batch_id: str, sha256: str) -> str:
    return f"batch:{batch_id}:{sha256}"


class Fatal(RuntimeError):
    """An answer that stops the whole run (bad key, batch gone or sealed)."""


@dataclass
class Uploaded:
    row: Row
    warning: str | None = None


def upload(client: Client, batch_id: str, row: Row, direct: bool = False) -> Uploaded:
    """Send one row, retrying transient failures. Raises ValueError for a row the API refuses.
    ``direct``: the bytes go to the object store through a presigned URL, not through the API."""
    fields = {**row.fields, "batch_id": batch_id}
    try:
        for attempt in _upload_retrying():
            with attempt:
                if direct:
                    client.submit_direct(row.path.read_bytes(), fields, idempotency_key(batch_id, row.sha256))
                else:
                    client.submit(row.path.read_bytes(), row.path.name, fields, idempotency_key(batch_id, row.sha256))
    except RetryError as exc:
        raise ConnectionError(f"gave up after {UPLOAD_ATTEMPTS} attempts: {exc.last_attempt.exception()}") from None
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise Fatal(str(exc)) from None
        if exc.status_code == 409 and "sealed" in str(exc):
            raise Fatal(f"{exc}; the batch was sealed while uploading") from None
        if exc.status_code == 409:
            # The same image went in on an earlier run with other metadata: it is in the batch.
            return Uploaded(row, warning="already in the batch with the metadata of an earlier run")
        raise ValueError(f"the API refused it: {exc}") from None
    return Uploaded(row)


# Rows per bulk call of a --direct run (POST /v1/uploads/bulk, the PUTs, POST /v1/uploads/submit).
DIRECT_CHUNK = 50


def upload_direct_chunk(client: Client, batch_id: str, rows: list[Row]) -> list[tuple[Row, Uploaded | Exception]]:
    """Send several rows the direct way in two API calls instead of two per row: upload ids and
    URLs in bulk, one PUT per image to the object store, then one bulk submission (each row
    with its idempotency key, so a retried call replays). Each row's answer is what
    ``upload(direct=True)`` gives for it; a row the bulk calls cannot settle (a call or its
    PUT failed) goes through ``upload(direct=True)`` itself, with its retries."""
    settled: dict[int, Uploaded | Exception] = {}
    puts: list[tuple[int, UploadOut]] = []
    for content_type in ("image/jpeg", "image/png"):
        wanted = [n for n, row in enumerate(rows) if _content_type(row) == content_type]
        if not wanted:
            continue
        try:
            uploads = _retry_call(functools.partial(_create_uploads, client, len(wanted), content_type))
        except (ConnectionError, ApiError):
            continue  # those rows go one at a time below
        for n, made_upload in zip(wanted, uploads, strict=True):
            try:
                put = client.storage.put(made_upload.url, content=rows[n].path.read_bytes(),
                                         headers=made_upload.headers)
            except httpx.TransportError:
                continue
            if put.status_code < 300:
                puts.append((n, made_upload))
    if puts:
        items = [
            {**{k: v for k, v in rows[n].fields.items() if v is not None}, "batch_id": batch_id,
             "upload_id": str(made_upload.id), "idempotency_key": idempotency_key(batch_id, rows[n].sha256)}
            for n, made_upload in puts
        ]
        try:
            answer = _retry_call(lambda: client.request("POST", "/v1/uploads/submit", json={"items": items}).json())
        except ApiError as exc:
            if exc.status_code in (401, 403):
                raise Fatal(str(exc)) from None
            answer = None
        except ConnectionError:
            answer = None
        for (n, _), result in zip(puts, answer["results"] if answer else [], strict=False):
            settled[n] = _direct_result(rows[n], result)
    out = []
    for n, row in enumerate(rows):
        if n not in settled:
            try:
                settled[n] = upload(client, batch_id, row, direct=True)
            except (ValueError, ConnectionError) as exc:
                settled[n] = exc
        out.append((row, settled[n]))
    return out


def _create_uploads(client: Client, count: int, content_type: str) -> list[UploadOut]:
    """``POST /v1/uploads/bulk``: ``count`` upload ids and URLs for images of ``content_type``."""
    answer = client.request("POST", "/v1/uploads/bulk", json={"count": count, "content_type": content_type}).json()
    return [UploadOut.model_validate(made) for made in answer["uploads"]]


def _upload_one(client: Client, batch_id: str, row: Row) -> list[tuple[Row, Uploaded | Exception]]:
    try:
        return [(row, upload(client, batch_id, row))]
    except (ValueError, ConnectionError) as exc:
        return [(row, exc)]


def _content_type(row: Row) -> str:
    with row.path.open("rb") as image:
        return "image/png" if image.read(4) == b"\x89PNG" else "image/jpeg"


def _retry_call(call: Callable[[], T]) -> T:
    """``call``'s answer, retried as an upload is; ConnectionError once the attempts are spent."""
    try:
        return _upload_retrying()(call)
    except RetryError as exc:
        raise ConnectionError(f"gave up after {UPLOAD_ATTEMPTS} attempts: {exc.last_attempt.exception()}") from None


def _direct_result(row: Row, result: dict[str, Any]) -> Uploaded | Exception:
    """One item of ``POST /v1/uploads/submit``, read as ``upload`` reads a single answer."""
    status = result["status"]
    if status < 300:
        return Uploaded(row)
    detail = (result.get("problem") or {}).get("detail", "")
    if status == 409 and "sealed" in detail:
        raise Fatal(f"HTTP 409: {detail}; the batch was sealed while uploading")
    if status == 409:
        return Uploaded(row, warning="already in the batch with the metadata of an earlier run")
    return ValueError(f"the API refused it: HTTP {status}: {detail}")


def _transient(exc: BaseException) -> bool:
    """Worth another try: the connection failed, or the API is busy or briefly broken."""
    return isinstance(exc, httpx.TransportError) or (isinstance(exc, ApiError) and exc.status_code in RETRY_STATUSES)


def _upload_retrying() -> Retrying:
    # 0.5 s, 1 s, 2 s between the attempts; anything else the API answers is final.
    return Retrying(
        stop=stop_after_attempt(UPLOAD_ATTEMPTS),
        wait=wait_exponential(multiplier=0.5),
        retry=retry_if_exception(_transient),
    )


# ---------------------------------------------------------------- reporting


@dataclass
class Outcome:
    landed: int = 0
    skipped: int = 0
    bad: list[BadRow] = field(default_factory=list)
    warnings: list[BadRow] = field(default_factory=list)
    failed: list[BadRow] = field(default_factory=list)


def _report_rows(console: Console, title: str, rows: list[BadRow], style: str) -> None:
    if not rows:
        return
    console.print(f"[{style}]{title} ({len(rows)}):[/]")
    for bad in rows:
        console.print(f"  {bad.where}: {bad.reason}", markup=False, highlight=False)


# ---------------------------------------------------------------- the command


@click.group()
def batch() -> None:
    """Bulk screening: a folder of photos (and a spreadsheet) as one batch."""


@batch.command("submit")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV: filename, age, sex, site, external_id, patient_reference, encounter_reference "
                   "(ISIC names accepted)")
@click.option("--name", help="batch name; a rerun with the same name resumes it [default: the folder's name]")
@click.option("--external-id", "batch_external_id", help="your reference for the batch")
@click.option("--wait", is_flag=True, help="show processing progress and write the triage CSV")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="triage CSV path (implies --wait) [default with --wait: triage-NAME.csv]")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="parallel uploads")
@click.option("--timeout", default=6 * 3600.0, show_default=True, help="seconds to wait for processing")
@click.option("--direct", is_flag=True,
              help="send each photo straight to the object store (presigned upload), not through the API")
@click.option("--api-key", envvar="DERMASENTINEL_API_KEY", help="API key (dsk_…)")
@click.option("--api-url", envvar="DERMASENTINEL_API_URL", help="API base URL")
def submit(folder: Path, manifest: Path | None, name: str | None, batch_external_id: str | None, wait: bool,
           out: Path | None, concurrency: int, timeout: float, direct: bool, api_url: str | None,
           api_key: str | None) -> None:
    """Upload FOLDER's images as one batch, seal it, and (with --wait) write the triage list."""
    # One line per upload would bury the progress bar and the bad-row report.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = get_settings()
    name = name or folder.resolve().name
    wait = wait or out is not None
    out = out or Path(f"triage-{external_id_from(name)}.csv")
    if wait:
        check_writable(out)  # before anything is uploaded, not after hours of waiting (issue 25)
    console = Console(stderr=True, highlight=False)
    client = Client(api_url or settings.api_url, api_key or settings.api_key.get_secret_value())
    try:
        code = _run(console, client, folder, manifest, name, batch_external_id, wait, out, concurrency, timeout,
                    direct)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()
    click.get_current_context().exit(code)


def check_writable(out: Path) -> None:
    """Refuse a triage file that could not be written: its folder missing or not writable (click
    refuses a folder as the path). The file is written once the batch has finished, hours later
    maybe."""
    folder = out.parent
    if not folder.is_dir():
        raise click.BadParameter(f"the folder {folder} does not exist; create it first or choose another path",
                                 param_hint="'--out'")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise click.BadParameter(f"{out} cannot be written here (permission denied)", param_hint="'--out'")


def _run(console: Console, client: Client, folder: Path, manifest: Path | None, name: str,
         batch_external_id: str | None, wait: bool, out: Path, concurrency: int, timeout: float,
         direct: bool = False) -> int:
    plan = plan_batch(folder, manifest)
    console.print(f"{len(plan.rows)} valid rows, {len(plan.bad)} bad rows")
    if plan.unlisted:
        console.print(f"{plan.unlisted} images in {folder} are not in the manifest and were left out")
    if not plan.rows:
        _report_rows(console, "bad rows, not submitted", plan.bad, "yellow")
        raise click.ClickException(f"no valid JPEG or PNG rows to submit from {folder}; nothing was created")
    batch_body, created = find_or_create_batch(client, name, batch_external_id)
    batch_id = str(batch_body.id)
    outcome = Outcome(bad=list(plan.bad))
    if batch_body.state == "open":
        verb = "created" if created else f"resuming ({batch_body.total} items already in it)"
        console.print(f"batch {name!r} {batch_id}: {verb}")
        _upload_all(console, client, batch_id, plan.rows, concurrency, outcome, direct)
    else:
        console.print(
            f"batch {name!r} {batch_id} is already {batch_body.state} with {batch_body.total} items; "
            "nothing uploaded (use a new --name to submit these images again)"
        )
    _report_rows(console, "bad rows, not submitted", outcome.bad, "yellow")
    _report_rows(console, "notes", outcome.warnings, "cyan")
    _report_rows(console, "upload failures", outcome.failed, "red")
    if outcome.failed:
        console.print("[red]some valid rows are not in the batch; it stays open. Rerun the same command to resume.[/]")
        return 1
    if batch_body.state == "open":
        batch_body = BatchOut.model_validate(client.request("POST", f"/v1/batches/{batch_id}/seal").json())
        console.print(
            f"sealed batch {batch_id}: {batch_body.total} items "
            f"({outcome.landed} uploaded now, {outcome.skipped} already there)"
        )
    click.echo(batch_id)
    if not wait:
        return 0
    if not _wait_for(console, client, batch_id, timeout):
        return 1
    _write_triage(console, client, batch_id, out)
    return 0


def _upload_all(
    console: Console, client: Client, batch_id: str, rows: list[Row], concurrency: int, outcome: Outcome,
    direct: bool = False,
) -> None:
    present = hashes_in_batch(client, batch_id)
    todo = [row for row in rows if row.sha256 not in present]
    outcome.skipped = len(rows) - len(todo)
    if outcome.skipped:
        console.print(f"{outcome.skipped} images are already in the batch; skipped")
    if not todo:
        return
    columns = (TextColumn("uploading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar, ThreadPoolExecutor(concurrency) as pool:
        task = bar.add_task("upload", total=len(todo))
        futures: dict[Future[list[tuple[Row, Uploaded | Exception]]], list[Row]]
        if direct:  # a few rows per call (upload_direct_chunk); about three chunks per thread, so that
            # while one chunk waits on its two API calls the others' PUTs keep the store busy
            # (one chunk per thread: ~100/s for 600 photos here, three: ~114/s; benchmarks/ingest.py)
            size = max(1, min(DIRECT_CHUNK, -(-len(todo) // (3 * concurrency))))
            chunks = [todo[n:n + size] for n in range(0, len(todo), size)]
            futures = {pool.submit(upload_direct_chunk, client, batch_id, chunk): chunk for chunk in chunks}
        else:
            futures = {pool.submit(_upload_one, client, batch_id, row): [row] for row in todo}
        try:
            for future in as_completed(futures):
                for row, result in future.result():
                    if isinstance(result, Uploaded):
                        outcome.landed += 1
                        if result.warning:
                            outcome.warnings.append(BadRow(row.where, result.warning))
                    elif isinstance(result, ConnectionError):
                        outcome.failed.append(BadRow(row.where, str(result)))
                    else:
                        outcome.bad.append(BadRow(row.where, str(result)))
                    bar.advance(task)
        except Fatal as exc:
            for pending in futures:
                pending.cancel()
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            for pending in futures:
                pending.cancel()
            console.print("[yellow]interrupted; rerun the same command to resume[/]")
            raise SystemExit(130) from None


def _wait_for(console: Console, client: Client, batch_id: str, timeout: float, interval: float = 1.0) -> bool:
    """Show the batch's progress until it is complete (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    columns = (TextColumn("processing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=console) as bar:
        task = None
        while True:
            body = BatchOut.model_validate(client.request("GET", f"/v1/batches/{batch_id}").json())
            counts, rate, eta = body.counts, body.throughput_per_minute, body.eta_seconds
            dispositions = body.dispositions
            description = (
                f"ok {counts.succeeded} · rejected {counts.rejected} · failed {counts.failed}"
                + (f" · urgent {dispositions.urgent_referral}" if dispositions.urgent_referral else "")
                + (f" · {rate:.1f}/min" if rate else "")
                + (f" · ETA {eta:.0f}s" if eta else "")
            )
            if task is None:
                task = bar.add_task(description, total=body.total)
            bar.update(task, completed=body.done, total=body.total, description=description)
            if body.state in FINAL_STATES:
                if body.state != "completed":
                    how = "was canceled" if body.state == "canceled" else "expired (its deadline passed)"
                    console.print(f"[yellow]batch {batch_id} {how}: {counts.canceled} items were canceled "
                                  "and are in the triage list as such[/]")
                return True
            if time.monotonic() > deadline:
                console.print(f"[red]batch {batch_id} still processing after {timeout:.0f}s; rerun with --wait[/]")
                return False
            time.sleep(interval)


def _write_triage(console: Console, client: Client, batch_id: str, out: Path) -> None:
    """Stream the triage CSV to ``out`` (whole or not at all), then print the batch's summary."""
    partial = out.with_name(out.name + ".part")
    params = {"order": "risk", "format": "csv"}
    with client.http.stream("GET", f"/v1/batches/{batch_id}/results", params=params) as response:
        if response.status_code >= 400:
            response.read()
            raise ApiError(response)
        with partial.open("wb") as handle:
            for chunk in response.iter_bytes():
                handle.write(chunk)
    partial.replace(out)
    summary = BatchResults.model_validate(client.request(
        "GET", f"/v1/batches/{batch_id}/results", params={"format": "json", "items": "false"}
    ).json()).summary
    if summary.weights_warning:
        console.print(summary.weights_warning, style="bold red", markup=False)
    console.print(triage_summary(summary, str(out)))
    console.print("dispositions: " + disposition_counts(summary.dispositions), markup=False)
    if summary.retake:
        console.print("retakes by reason: " + ", ".join(f"{k} {v}" for k, v in summary.retake.items()))
    if summary.equity:
        console.print(equity_table(summary))
