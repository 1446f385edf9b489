"""A folder of photos, and the spreadsheet that describes them, read into rows to upload.

Each row's age, sex and site are checked against the one patient-metadata vocabulary
(``shared.clinical.vocabulary``: the values, aliases and age range the API accepts), and its
patient and encounter references against the API's one parser (``shared.fhir_refs``), so a row
the API would refuse is reported here with its manifest line instead of being uploaded. Bad
rows never stop the others.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import click

from shared.clinical.vocabulary import VocabularyError, normalise_age, normalise_sex, normalise_site
from shared.fhir_refs import InvalidReference, ReferenceType, parse_reference
from shared.manifests import IMAGE_SUFFIXES, NO_FILE_COLUMN, column_map, external_id_from
from shared.schemas.common import EXTERNAL_ID_PATTERN

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Row:
    """One image to put in the batch, with its validated form fields."""

    where: str  # "line 7 (IMG_1.jpg)" or the file name when there is no manifest
    path: Path
    sha256: str
    fields: dict[str, str | int | None]


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
    """Every image of ``folder`` (named after its file), or the rows ``manifest`` lists."""
    if manifest is None:
        plan = Plan()
        for path in _images_in(folder):
            _add_row(plan, path.name, path, {"external_id": external_id_from(path.stem)}, seen={})
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
    columns = column_map(header)
    if "filename" not in columns:
        present = [h.strip().lower() for h in header if h]
        raise click.UsageError(f"{manifest} has {NO_FILE_COLUMN}. Columns found: {', '.join(present) or 'none'}")
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


def _fields(values: dict[str, str], path: Path) -> dict[str, str | int | None]:
    """The row's form fields in the API's vocabulary; ValueError (VocabularyError) says what is wrong."""
    try:
        age = normalise_age(values.get("age", ""))
    except VocabularyError as exc:
        # A spreadsheet's blank cell is "not given": say so, as the column may simply be unknown.
        raise VocabularyError(f"{exc} (leave it empty when unknown)") from None
    fields: dict[str, str | int | None] = {
        "age": age,
        "sex": normalise_sex(values.get("sex", "")),
        "site": normalise_site(values.get("site", "")),
        "external_id": _external_id(values.get("external_id", ""), path),
    }
    # The patient and the visit (issue 23): sent only when the row gives them.
    for column, expected in REFERENCE_COLUMNS.items():
        if values.get(column):
            fields[column] = _reference(values[column], column, expected)
    return fields


REFERENCE_COLUMNS: dict[str, ReferenceType] = {"patient_reference": "Patient", "encounter_reference": "Encounter"}


def _reference(raw: str, column: str, expected: ReferenceType) -> str:
    """The cell as the API takes it; ValueError naming the column (never quoting the cell) otherwise."""
    try:
        parse_reference(raw, expected)
    except InvalidReference as exc:
        raise ValueError(f"{column} {exc}") from None
    return raw


def _external_id(raw: str, path: Path) -> str:
    if not raw:
        return external_id_from(path.stem)
    if not re.fullmatch(EXTERNAL_ID_PATTERN, raw):
        raise ValueError(f"external_id {raw!r} may only hold letters, digits and . _ : - (at most 200, no / or \\)")
    return raw


def _add_row(plan: Plan, where: str, path: Path, fields: dict[str, str | int | None], seen: dict[str, str]) -> None:
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
