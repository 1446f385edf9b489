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

import logging
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
from dermasentinel_client import Client, RetryPolicy, WaitTimeout
from dermasentinel_client.models import BatchOut, UploadOut
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cli.client import ApiError, connect
from cli.manifest import BadRow, Row, external_id_from, plan_batch
from cli.render import disposition_counts, equity_table, triage_summary
from shared.config import get_settings

# The SDK retries each call (429 and 503 after their Retry-After, a failed connection when the
# call is safe to repeat: every upload carries its Idempotency-Key); what is still busy or out
# of reach after that is an upload failure of this run (rerun to resume), not a bad row.
UPLOAD_ATTEMPTS = RetryPolicy().max_retries + 1
GAVE_UP_STATUSES = {429, 502, 503, 504}


# ---------------------------------------------------------------- the batch on the server


def find_or_create_batch(client: Client, name: str, external_id: str | None) -> tuple[BatchOut, bool]:
    """The newest batch called ``name`` if there is one (to resume or report), else a new one.
    Returns the batch and whether it was created now."""
    newest = next(iter(client.batches.list(name=name, page_size=1)), None)
    if newest is not None:
        return client.batches.get(newest.id), False
    return client.batches.create(name, external_id=external_id or None), True


def hashes_in_batch(client: Client, batch_id: str) -> set[str]:
    """The content hashes of the images the batch already holds (a resumed run skips them)."""
    return {a.image.sha256 for a in client.analyses.list(batch_id=batch_id) if a.image.sha256}


def idempotency_key(batch_id: str, sha256: str) -> str:
    return f"batch:{batch_id}:{sha256}"


class Fatal(RuntimeError):
    """An answer that stops the whole run (bad key, batch gone or sealed)."""


@dataclass
class Uploaded:
    row: Row
    warning: str | None = None


def upload(client: Client, batch_id: str, row: Row, direct: bool = False) -> Uploaded:
    """Send one row (the SDK retries transient failures). Raises ValueError for a row the API
    refuses, ConnectionError when it could not be sent. ``direct``: the bytes go to the object
    store through a presigned URL, not through the API."""
    try:
        fields: dict[str, Any] = dict(row.fields)
        client.analyses.create(row.path, direct=direct, batch_id=batch_id,
                               idempotency_key=idempotency_key(batch_id, row.sha256), **fields)
    except httpx.TransportError as exc:
        raise ConnectionError(f"gave up after {UPLOAD_ATTEMPTS} attempts: {exc}") from None
    except ApiError as exc:
        if exc.status_code in GAVE_UP_STATUSES:
            raise ConnectionError(f"gave up after {UPLOAD_ATTEMPTS} attempts: {exc}") from None
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
            uploads = client.uploads.create_bulk(len(wanted), content_type)
        except (httpx.TransportError, ApiError):
            continue  # those rows go one at a time below
        for n, made_upload in zip(wanted, uploads, strict=True):
            try:
                client.uploads.put(made_upload, rows[n].path.read_bytes())
            except (httpx.TransportError, ApiError):
                continue
            puts.append((n, made_upload))
    if puts:
        items: list[dict[str, Any]] = [
            {**{k: v for k, v in rows[n].fields.items() if v is not None}, "batch_id": batch_id,
             "upload_id": str(made_upload.id), "idempotency_key": idempotency_key(batch_id, rows[n].sha256)}
            for n, made_upload in puts
        ]
        answer = None
        try:
            answer = client.uploads.submit(items)
        except ApiError as exc:
            if exc.status_code in (401, 403):
                raise Fatal(str(exc)) from None
        except httpx.TransportError:
            pass
        for (n, _), result in zip(puts, answer.results if answer else [], strict=False):
            settled[n] = _direct_result(rows[n], result.status, result.problem.detail if result.problem else "")
    out = []
    for n, row in enumerate(rows):
        if n not in settled:
            try:
                settled[n] = upload(client, batch_id, row, direct=True)
            except (ValueError, ConnectionError) as exc:
                settled[n] = exc
        out.append((row, settled[n]))
    return out


def _upload_one(client: Client, batch_id: str, row: Row) -> list[tuple[Row, Uploaded | Exception]]:
    try:
        return [(row, upload(client, batch_id, row))]
    except (ValueError, ConnectionError) as exc:
        return [(row, exc)]


def _content_type(row: Row) -> str:
    with row.path.open("rb") as image:
        return "image/png" if image.read(4) == b"\x89PNG" else "image/jpeg"


def _direct_result(row: Row, status: int, detail: str) -> Uploaded | Exception:
    """One item of ``POST /v1/uploads/submit``, read as ``upload`` reads a single answer."""
    if status < 300:
        return Uploaded(row)
    if status == 409 and "sealed" in detail:
        raise Fatal(f"HTTP 409: {detail}; the batch was sealed while uploading")
    if status == 409:
        return Uploaded(row, warning="already in the batch with the metadata of an earlier run")
    return ValueError(f"the API refused it: HTTP {status}: {detail}")


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
    """Bulk screening: a folder of photos (and a spreadsheet) as one batch; list, follow, cancel
    and fetch the results of batches."""


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
@click.option("--api-key", "--key", "api_key", envvar="DERMASENTINEL_API_KEY", help="API key (dsk_…)")
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
    client = connect(api_url or settings.api_url, api_key or settings.api_key.get_secret_value())
    try:
        code = _run(console, client, folder, manifest, name, batch_external_id, wait, out, concurrency, timeout,
                    direct)
    finally:  # an error of the API is explained by the boundary (cli/errors.py)
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
        batch_body = client.batches.seal(batch_id)
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
    """Show the batch's progress until it has ended (True) or ``timeout`` passes (False)."""
    columns = (TextColumn("processing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("", total=None)

        def show(body: BatchOut) -> None:
            bar.update(task, completed=body.done, total=body.total, description=progress_line(body))

        try:
            body = client.batches.wait(batch_id, timeout=timeout, poll_interval=interval, on_progress=show)
        except WaitTimeout:
            console.print(f"[red]batch {batch_id} still processing after {timeout:.0f}s; rerun with --wait[/]")
            return False
    if body.state != "completed":
        console.print(f"[yellow]batch {batch_id} {ended(body.state)}: {body.counts.canceled} items were canceled "
                      "and are in the triage list as such[/]")
    return True


def ended(state: str) -> str:
    return "was canceled" if state == "canceled" else "expired (its deadline passed)"


def progress_line(body: BatchOut) -> str:
    """"ok 12 · rejected 1 · failed 0 · urgent 2 · 30.5/min · ETA 40s": where a batch is."""
    counts, rate, eta, dispositions = body.counts, body.throughput_per_minute, body.eta_seconds, body.dispositions
    return (
        f"ok {counts.succeeded} · rejected {counts.rejected} · failed {counts.failed}"
        + (f" · urgent {dispositions.urgent_referral}" if dispositions.urgent_referral else "")
        + (f" · {rate:.1f}/min" if rate else "")
        + (f" · ETA {eta:.0f}s" if eta else "")
    )


def _write_triage(console: Console, client: Client, batch_id: str, out: Path) -> None:
    """Stream the triage CSV to ``out`` (whole or not at all), then print the batch's summary."""
    client.batches.download_results(batch_id, out, format="csv", order="risk")
    summary = client.batches.results(batch_id, items=False).summary
    if summary.weights_warning:
        console.print(summary.weights_warning, style="bold red", markup=False)
    console.print(triage_summary(summary, str(out)))
    console.print("dispositions: " + disposition_counts(summary.dispositions), markup=False)
    if summary.retake:
        console.print("retakes by reason: " + ", ".join(f"{k} {v}" for k, v in summary.retake.items()))
    if summary.equity:
        console.print(equity_table(summary))


# ---------------------------------------------------------------- list, status, cancel, results (issue 25)


def _api_options(func: Any) -> Any:
    func = click.option("--api-key", "--key", "api_key", envvar="DERMASENTINEL_API_KEY",
                        help="API key (dsk_…); default: DERMASENTINEL_API_KEY, else the development key of `up`")(func)
    return click.option("--api-url", envvar="DERMASENTINEL_API_URL", help="API base URL")(func)


def _connect(api_url: str | None, api_key: str | None) -> Client:
    settings = get_settings()
    return connect(api_url or settings.api_url, api_key or settings.api_key.get_secret_value())


@batch.command("list")
@click.option("--name", help="only the batches called so")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="how many, newest first")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (one JSON object per line)")
@_api_options
def list_batches(name: str | None, limit: int, as_json: bool, api_url: str | None, api_key: str | None) -> None:
    """The tenant's batches, newest first: id, state, items done, name."""
    shown = 0
    with _connect(api_url, api_key) as client:
        for listed in client.batches.list(name=name, page_size=min(limit, 200)):
            if shown == limit:
                break
            shown += 1
            if as_json:
                click.echo(listed.model_dump_json())
                continue
            done = listed.total - listed.counts.queued - listed.counts.processing
            click.echo(f"{listed.id}  {listed.state:<9}  {done:>6}/{listed.total:<6}  {listed.created_at}  "
                       f"{listed.name}")
    if not shown and not as_json:
        click.echo("no batches" + (f" called {name!r}" if name else ""), err=True)


@batch.command("status")
@click.argument("batch_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="the API's answer as JSON")
@_api_options
def status(batch_id: str, as_json: bool, api_url: str | None, api_key: str | None) -> None:
    """A batch's state and progress: counts per status, dispositions, throughput and ETA."""
    with _connect(api_url, api_key) as client:
        body = client.batches.get(batch_id)
    if as_json:
        click.echo(body.model_dump_json(indent=2))
        return
    click.echo(f"batch {body.id} {body.name!r}: {body.state}, {body.done} of {body.total} done "
               f"({body.percent_done:.0f}%)")
    click.echo(progress_line(body) + f" · canceled {body.counts.canceled}")
    click.echo("dispositions: " + disposition_counts(body.dispositions))
    if body.state in ("canceled", "expired"):
        click.echo(f"the batch {ended(body.state)}: {body.counts.canceled} items were canceled")


@batch.command("cancel")
@click.argument("batch_id", metavar="ID")
@_api_options
def cancel(batch_id: str, api_url: str | None, api_key: str | None) -> None:
    """Cancel a batch's unfinished items and close it (a repeat changes nothing)."""
    with _connect(api_url, api_key) as client:
        body = client.batches.cancel(batch_id)
    click.echo(f"batch {body.id}: {body.canceled_now} items canceled now; {body.state}, "
               f"{body.counts.succeeded} succeeded, {body.counts.canceled} canceled of {body.total}")


@batch.command("results")
@click.argument("batch_id", metavar="ID")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "isic"]), default="csv", show_default=True,
              help="the triage CSV, the API's JSON, or ISIC challenge-style CSV")
@click.option("--order", type=click.Choice(["risk", "submitted"]), default="risk", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write to this file [default: stdout]")
@_api_options
def results(batch_id: str, fmt: str, order: str, out: Path | None, api_url: str | None, api_key: str | None) -> None:
    """A batch's triage list, highest risk first (weights that are not `trained`: the ranking is
    not meaningful; the JSON's summary says so)."""
    if out is not None:
        check_writable(out)
    with _connect(api_url, api_key) as client:
        if out is not None:
            client.batches.download_results(batch_id, out, format=fmt, order=order)
        else:
            client.batches.download_results(batch_id, sys.stdout.buffer, format=fmt, order=order)
            sys.stdout.buffer.flush()
    if out is not None:
        click.echo(f"wrote {out}", err=True)
