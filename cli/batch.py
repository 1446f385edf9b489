"""``dermasentinel batch submit``: a folder of photos (and a spreadsheet) as one batch.

The run is resumable: it continues the newest open batch of the same name, skips images the
batch already holds (by content hash), and sends each upload with an Idempotency-Key derived
from the batch id and the content hash, so an upload whose answer was lost is replayed by the
API rather than duplicated. Bad rows are reported with their manifest line and never stop the
others. Exit status: 0 when every valid row is in the batch (and, with --wait, the batch has
finished); bad rows are reported but do not change it. 1 when a valid row could not be
uploaded or the wait timed out; rerun the same command to continue.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from cli.client import ApiError, Client
from shared.config import get_settings
from shared.schemas import EXTERNAL_ID_PATTERN, SEXES, SITES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Column names accepted for each field, ours first, then ISIC's.
COLUMNS = {
    "filename": ("filename", "file", "image", "image_name", "isic_id"),
    "age": ("age", "age_approx"),
    "sex": ("sex",),
    "site": ("site", "anatom_site_general_challenge", "anatom_site_general"),
    "external_id": ("external_id",),
}
SITE_ALIASES = {
    "": "unknown",
    "na": "unknown",
    "nan": "unknown",
    "anterior torso": "torso",
    "posterior torso": "torso",
    "lateral torso": "torso",
    "head neck": "head/neck",
    "palms soles": "palms/soles",
    "oral genital": "oral/genital",
}
SEX_ALIASES = {"": "unknown", "m": "male", "f": "female", "na": "unknown", "nan": "unknown"}
MISSING = {"", "na", "nan", "none", "null"}

UPLOAD_ATTEMPTS = 4
RETRY_STATUSES = {429, 500, 502, 503, 504}
FINAL_STATES = {"completed"}


# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class Row:
    """One image to put in the batch, with its validated form fields."""

    where: str  # "line 7 (IMG_1.jpg)" or the file name when there is no manifest
    path: Path
    sha256: str
    fields: dict


@dataclass(frozen=True)
class BadRow:
    where: str
    reason: str


@dataclass
class Plan:
    rows: list[Row] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    unlisted: int = 0  # images in the folder that the manifest does not name


def plan_batch(folder: Path, manifest: Path | None) -> Plan:
    if manifest is None:
        plan = Plan()
        for path in _images_in(folder):
            _add_row(plan, path.name, path, {"external_id": _external_id_from(path.stem)}, seen={})
        return plan
    return _plan_from_manifest(folder, manifest)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _plan_from_manifest(folder: Path, manifest: Path) -> Plan:
    plan = Plan()
    seen_content: dict[str, str] = {}
    seen_files: dict[Path, str] = {}
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = _column_map(reader.fieldnames or [], manifest)
        for record in reader:
            line = reader.line_num
            values = {name: (record.get(column) or "").strip() for name, column in columns.items()}
            if not any(values.values()):
                continue
            where = f"line {line} ({values['filename'] or 'no filename'})"
            try:
                path = _resolve(folder, values["filename"])
            except ValueError as exc:
                plan.bad.append(BadRow(where, str(exc)))
                continue
            if path in seen_files:
                plan.bad.append(BadRow(where, f"the same file is listed on {seen_files[path]}"))
                continue
            seen_files[path] = f"line {line}"
            try:
                fields = _fields(values, path)
            except ValueError as exc:
                plan.bad.append(BadRow(where, str(exc)))
                continue
            _add_row(plan, where, path, fields, seen_content)
    listed = set(seen_files)
    plan.unlisted = sum(1 for p in _images_in(folder) if p not in listed)
    return plan


def _column_map(header: Iterable[str], manifest: Path) -> dict[str, str]:
    present = {h.strip().lower(): h for h in header if h}
    columns = {}
    for name, candidates in COLUMNS.items():
        for candidate in candidates:
            if candidate in present:
                columns[name] = present[candidate]
                break
    if "filename" not in columns:
        raise click.UsageError(
            f"{manifest} has no file column; name it 'filename' (or ISIC's 'image_name'). "
            f"Columns found: {', '.join(present) or 'none'}"
        )
    return columns


def _resolve(folder: Path, filename: str) -> Path:
    if not filename:
        raise ValueError("no filename")
    path = folder / filename
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if path.is_file():
            return path
        raise ValueError(f"missing file: {filename} is not in {folder}")
    # ISIC writes image names without their extension.
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    raise ValueError(f"missing file: no {filename}.jpg, .jpeg or .png in {folder}")


def _fields(values: dict, path: Path) -> dict:
    return {
        "age": _age(values.get("age", "")),
        "sex": _sex(values.get("sex", "")),
        "site": _site(values.get("site", "")),
        "external_id": _external_id(values.get("external_id", ""), path),
    }


def _age(raw: str) -> int | None:
    if raw.lower() in MISSING:
        return None
    try:
        age = float(raw)
    except ValueError:
        raise ValueError(f"age {raw!r} is not a number; give whole years 0..120 or leave it empty") from None
    if not 0 <= age <= 120 or age != int(age):
        raise ValueError(f"impossible age {raw}; ages are whole years 0..120 (leave it empty when unknown)")
    return int(age)


def _sex(raw: str) -> str:
    value = raw.lower()
    value = SEX_ALIASES.get(value, value)
    if value not in SEXES:
        raise ValueError(f"unknown sex {raw!r}; use male, female or unknown")
    return value


def _site(raw: str) -> str:
    value = " ".join(raw.lower().replace("_", " ").split())
    value = SITE_ALIASES.get(value, value)
    if value not in SITES:
        raise ValueError(
            f"unknown site {raw!r}; use one of: {', '.join(SITES)} (or ISIC's anterior/posterior/lateral torso)"
        )
    return value


def _external_id(raw: str, path: Path) -> str:
    if not raw:
        return _external_id_from(path.stem)
    if not re.fullmatch(EXTERNAL_ID_PATTERN, raw):
        raise ValueError(f"external_id {raw!r} may only hold letters, digits and . _ : / - (at most 200)")
    return raw


def _external_id_from(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._:/\-]", "_", stem)[:200] or "image"


def _add_row(plan: Plan, where: str, path: Path, fields: dict, seen: dict[str, str]) -> None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        plan.bad.append(BadRow(where, f"cannot read the file: {exc.strerror}"))
        return
    if not (data.startswith(JPEG_MAGIC) or data.startswith(PNG_MAGIC)):
        plan.bad.append(BadRow(where, "not a JPEG or PNG image"))
        return
    digest = hashlib.sha256(data).hexdigest()
    if digest in seen:
        plan.bad.append(BadRow(where, f"the same image as {seen[digest]}; submitted once"))
        return
    seen[digest] = where
    plan.rows.append(Row(where, path, digest, fields))


# ---------------------------------------------------------------- the batch on the server


def find_or_create_batch(client: Client, name: str, external_id: str | None) -> tuple[dict, bool]:
    """The newest batch called ``name`` if there is one (to resume or report), else a new one.
    Returns the batch and whether it was created now."""
    listed = client.request("GET", "/v1/batches", params={"name": name, "limit": 1}).json()["data"]
    if listed:
        return client.request("GET", f"/v1/batches/{listed[0]['id']}").json(), False
    body = {"name": name, "external_id": external_id}
    return client.request("POST", "/v1/batches", json={k: v for k, v in body.items() if v}).json(), True


def hashes_in_batch(client: Client, batch_id: str) -> set[str]:
    hashes: set[str] = set()
    cursor = None
    while True:
        params = {"batch_id": batch_id, "limit": 200, **({"cursor": cursor} if cursor else {})}
        page = client.request("GET", "/v1/analyses", params=params).json()
        hashes.update(a["image"]["sha256"] for a in page["data"])
        cursor = page["next_cursor"]
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
    puts: list[tuple[int, dict]] = []
    for content_type in ("image/jpeg", "image/png"):
        wanted = [n for n, row in enumerate(rows) if _content_type(row) == content_type]
        if not wanted:
            continue
        try:
            body = {"count": len(wanted), "content_type": content_type}
            made = _retry_call(
                lambda body=body: client.request("POST", "/v1/uploads/bulk", json=body).json()["uploads"]
            )
        except (ConnectionError, ApiError):
            continue  # those rows go one at a time below
        for n, made_upload in zip(wanted, made, strict=True):
            try:
                put = client.storage.put(made_upload["url"], content=rows[n].path.read_bytes(),
                                         headers=made_upload["headers"])
            except httpx.TransportError:
                continue
            if put.status_code < 300:
                puts.append((n, made_upload))
    if puts:
        items = [
            {**{k: v for k, v in rows[n].fields.items() if v is not None}, "batch_id": batch_id,
             "upload_id": made_upload["id"], "idempotency_key": idempotency_key(batch_id, rows[n].sha256)}
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


def _upload_one(client: Client, batch_id: str, row: Row) -> list[tuple[Row, Uploaded | Exception]]:
    try:
        return [(row, upload(client, batch_id, row))]
    except (ValueError, ConnectionError) as exc:
        return [(row, exc)]


def _content_type(row: Row) -> str:
    with row.path.open("rb") as image:
        return "image/png" if image.read(4) == b"\x89PNG" else "image/jpeg"


def _retry_call(call):
    try:
        for attempt in _upload_retrying():
            with attempt:
                return call()
    except RetryError as exc:
        raise ConnectionError(f"gave up after {UPLOAD_ATTEMPTS} attempts: {exc.last_attempt.exception()}") from None


def _direct_result(row: Row, result: dict) -> Uploaded | Exception:
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


def _equity_table(summary: dict) -> Table:
    title = "Equity summary (succeeded items per skin group)"
    if summary.get("weights_warning"):
        title += " — weights not trained: the risk columns are not clinically meaningful"
    table = Table(title=title)
    for column in ("skin group", "items", "high risk", "share high risk", "suspicious (medium+high)", "needs review"):
        table.add_column(column, justify="right" if column != "skin group" else "left")
    for group in summary["equity"]:
        table.add_row(
            group["skin_group"] + (" (bias warning)" if group["bias_warning"] else ""),
            str(group["items"]),
            str(group["high_risk"]),
            f"{group['high_risk_share']:.0%}",
            f"{group['suspicious_share']:.0%}",
            str(group["needs_review"]),
        )
    return table


# ---------------------------------------------------------------- the command


@click.group()
def batch() -> None:
    """Bulk screening: a folder of photos (and a spreadsheet) as one batch."""


@batch.command("submit")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV: filename, age, sex, site, external_id (ISIC names accepted)")
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
def submit(folder: Path, manifest, name, batch_external_id, wait, out, concurrency, timeout, direct, api_url,
           api_key) -> None:
    """Upload FOLDER's images as one batch, seal it, and (with --wait) write the triage list."""
    # One line per upload would bury the progress bar and the bad-row report.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = get_settings()
    name = name or folder.resolve().name
    wait = wait or out is not None
    out = out or Path(f"triage-{_external_id_from(name)}.csv")
    console = Console(stderr=True, highlight=False)
    client = Client(api_url or settings.api_url, api_key or settings.api_key.get_secret_value())
    try:
        code = _run(console, client, folder, manifest, name, batch_external_id, wait, out, concurrency, timeout,
                    direct)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    except httpx.TransportError as exc:
        raise click.ClickException(f"cannot reach the API at {client.http.base_url}: {exc}") from None
    finally:
        client.close()
    click.get_current_context().exit(code)


def _run(console, client, folder, manifest, name, batch_external_id, wait, out, concurrency, timeout,
         direct: bool = False) -> int:
    plan = plan_batch(folder, manifest)
    console.print(f"{len(plan.rows)} valid rows, {len(plan.bad)} bad rows")
    if plan.unlisted:
        console.print(f"{plan.unlisted} images in {folder} are not in the manifest and were left out")
    if not plan.rows:
        _report_rows(console, "bad rows, not submitted", plan.bad, "yellow")
        raise click.ClickException(f"no valid JPEG or PNG rows to submit from {folder}; nothing was created")
    batch_body, created = find_or_create_batch(client, name, batch_external_id)
    batch_id = batch_body["id"]
    outcome = Outcome(bad=list(plan.bad))
    if batch_body["state"] == "open":
        verb = "created" if created else f"resuming ({batch_body['total']} items already in it)"
        console.print(f"batch {name!r} {batch_id}: {verb}")
        _upload_all(console, client, batch_id, plan.rows, concurrency, outcome, direct)
    else:
        console.print(
            f"batch {name!r} {batch_id} is already {batch_body['state']} with {batch_body['total']} items; "
            "nothing uploaded (use a new --name to submit these images again)"
        )
    _report_rows(console, "bad rows, not submitted", outcome.bad, "yellow")
    _report_rows(console, "notes", outcome.warnings, "cyan")
    _report_rows(console, "upload failures", outcome.failed, "red")
    if outcome.failed:
        console.print("[red]some valid rows are not in the batch; it stays open. Rerun the same command to resume.[/]")
        return 1
    if batch_body["state"] == "open":
        batch_body = client.request("POST", f"/v1/batches/{batch_id}/seal").json()
        console.print(
            f"sealed batch {batch_id}: {batch_body['total']} items "
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
    console, client, batch_id: str, rows: list[Row], concurrency: int, outcome: Outcome, direct: bool = False
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


def _wait_for(console, client, batch_id: str, timeout: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    columns = (TextColumn("processing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=console) as bar:
        task = None
        while True:
            body = client.request("GET", f"/v1/batches/{batch_id}").json()
            counts = body["counts"]
            rate = body["throughput_per_minute"]
            eta = body["eta_seconds"]
            description = (
                f"ok {counts['succeeded']} · rejected {counts['rejected']} · failed {counts['failed']}"
                + (f" · {rate:.1f}/min" if rate else "")
                + (f" · ETA {eta:.0f}s" if eta else "")
            )
            if task is None:
                task = bar.add_task(description, total=body["total"])
            bar.update(task, completed=body["done"], total=body["total"], description=description)
            if body["state"] in FINAL_STATES:
                return True
            if time.monotonic() > deadline:
                console.print(f"[red]batch {batch_id} still processing after {timeout:.0f}s; rerun with --wait[/]")
                return False
            time.sleep(interval)


def _write_triage(console, client, batch_id: str, out: Path) -> None:
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
    summary = client.request(
        "GET", f"/v1/batches/{batch_id}/results", params={"format": "json", "items": "false"}
    ).json()["summary"]
    counts = summary["counts"]
    if summary.get("weights_warning"):
        console.print(summary["weights_warning"], style="bold red", markup=False)
    weights = ", ".join(f"{status} {n}" for status, n in (summary.get("weights") or {}).items())
    console.print(
        f"triage list: {out} — {counts['succeeded']} results ("
        + (f"weights: {weights}; " if weights else "")
        + f"{summary['needs_review']} flagged for review), {counts['rejected']} to retake, {counts['failed']} failed"
    )
    if summary["retake"]:
        console.print("retakes by reason: " + ", ".join(f"{k} {v}" for k, v in summary["retake"].items()))
    if summary["equity"]:
        console.print(_equity_table(summary))
