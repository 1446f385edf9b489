"""A batch's archive, read row by row within bounds (issue 25): a zip or tar of images with a
``manifest.csv``, or NDJSON rows of upload ids. No database and no HTTP here: the ingest lane
(``worker/archive_ingest.py``) decides what each row becomes.

Bounds, each refused with a message that says what to change:

- the archive's bytes (``ARCHIVE_MAX_MB``): a zip or tar is copied to the worker's disk in
  chunks (a zip's directory is at its end; members are found by name), never held in memory;
  a compressed tar is inflated there too, stopping past the same limit;
  NDJSON is read as it streams;
- its rows (``ARCHIVE_MAX_ITEMS``) and its entries (a zip's count is read from its end record
  before its directory is loaded; a tar's headers are walked only that far);
- each member (``MAX_UPLOAD_MB``, as one upload): its declared size is checked first, and at
  most that many bytes are ever read (a zip member whose data outgrows its header fails its
  CRC check), so a zip bomb costs one member's limit, not the disk;
- names: a manifest names members relative to its own folder; absolute paths, ``..``,
  backslashes, drive letters and NUL are refused, and nothing is ever written under a member's
  name (members are read into memory, one at a time), so no path can escape; a tar's links and
  devices are never read.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import posixpath
import re
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import IO, Any

from shared import json_limits
from shared.manifests import IMAGE_SUFFIXES, NO_FILE_COLUMN, column_map

FORMATS = ("zip", "tar", "ndjson")
MANIFEST_NAME = "manifest.csv"
# A manifest of 1,000,000 rows is well under this; a bigger member is not a manifest.
MANIFEST_MAX_BYTES = 256 * 1024 * 1024
# One NDJSON row: an upload id and the analysis fields fit in far less.
LINE_MAX_BYTES = 64 * 1024
# Entries besides the images a manifest names: folders, the manifest, stray files.
EXTRA_ENTRIES = 1000

# The problem titles the API gives these codes (api/problems.py), and the archive's own.
TITLES = {
    "unprocessable": "Invalid input",
    "unreadable_image": "Image could not be decoded",
    "image_too_large": "Image has too many pixels",
    "unsupported_media_type": "Unsupported image type",
    "payload_too_large": "Upload too large",
    "unsupported_dicom": "DICOM object not accepted",
    "not_found": "Not found",
    "conflict": "Conflict",
    "missing_file": "File not in the archive",
    "invalid_file_name": "File name not accepted",
    "invalid_archive": "Archive not usable",
    "batch_expired": "Batch deadline passed",
}


class ArchiveRefused(Exception):
    """The archive as a whole cannot be read: no row of it becomes an item."""

    code, status = "invalid_archive", 422

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    @property
    def title(self) -> str:
        return TITLES[self.code]


class ArchiveTooLarge(ArchiveRefused):
    code, status = "payload_too_large", 413


class RowRefused(Exception):
    """One row is refused, as ``POST /v1/analyses`` would have refused it: the problem's code,
    status and detail (and, for fields, one entry per field)."""

    def __init__(self, code: str, status: int, detail: str, errors: list[dict[str, str]] | None = None):
        super().__init__(detail)
        self.code, self.status, self.detail, self.errors = code, status, detail, errors

    @property
    def title(self) -> str:
        return TITLES.get(self.code, "Refused")


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_items: int
    max_member_bytes: int
    max_member_mb: int


@dataclass(frozen=True)
class ManifestRow:
    """One row: its number (1-based: the manifest's data records, the header not counted, or
    the NDJSON file's lines), what names its image (a file name or an upload id, as given),
    and its values as given (text from CSV, JSON values from NDJSON)."""

    row: int
    file: str | None
    values: dict[str, Any]
    problem: RowRefused | None = None
    """Set when the row could not even be read (a line too long, not a JSON object)."""


def too_large_detail(limits: Limits) -> str:
    return f"the image is larger than the {limits.max_member_mb} MB limit; send a smaller JPEG or PNG"


# ---------------------------------------------------------------- zip and tar


@dataclass
class ImageArchive:
    """A zip or tar on local disk: its manifest's rows, and its members read by name."""

    format: str
    limits: Limits
    _zip: zipfile.ZipFile | None = None
    _tar: tarfile.TarFile | None = None
    _members: dict[str, Any] = field(default_factory=dict)  # normalised name → ZipInfo | TarInfo
    _not_regular: set[str] = field(default_factory=set)
    _base: str = ""
    _manifest: Any = None
    _plain: IO[bytes] | None = None  # a compressed tar, inflated to local disk

    @classmethod
    def open(cls, path: str, format: str, limits: Limits) -> ImageArchive:
        archive = cls(format, limits)
        if format == "zip":
            archive._open_zip(path)
        else:
            archive._open_tar(path)
        archive._find_manifest()
        return archive

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()
        if self._plain is not None:
            self._plain.close()

    def __enter__(self) -> ImageArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _max_entries(self) -> int:
        return self.limits.max_items + EXTRA_ENTRIES

    def _open_zip(self, path: str) -> None:
        with open(path, "rb") as handle:
            entries = zip_entry_count(handle)
        if entries > self._max_entries():
            raise ArchiveRefused(
                f"the zip holds {entries} entries, more than the {self._max_entries()} this batch can take "
                f"({self.limits.max_items} images); split it over several batches"
            )
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
            raise ArchiveRefused("the file is not a readable zip archive; send a zip (or tar) of images") from None
        for info in self._zip.infolist():
            if not info.is_dir():
                self._members.setdefault(_normal(info.filename), info)

    def _open_tar(self, path: str) -> None:
        self._plain = _decompressed(path, self.limits.max_bytes)
        try:
            # Closed by close(); plain, so finding members by name seeks instead of re-inflating.
            if self._plain is not None:
                self._tar = tarfile.open(fileobj=self._plain, mode="r:")  # noqa: SIM115
            else:
                self._tar = tarfile.open(path, mode="r:")  # noqa: SIM115
        except (tarfile.TarError, OSError, EOFError):
            raise ArchiveRefused("the file is not a readable tar archive; send a tar (or zip) of images") from None
        count = 0
        try:
            while (info := self._tar.next()) is not None:
                count += 1
                if count > self._max_entries():
                    raise ArchiveRefused(
                        f"the tar holds more than {self._max_entries()} entries ({self.limits.max_items} images "
                        "per batch); split it over several batches"
                    )
                name = _normal(info.name)
                if info.isreg():
                    self._members.setdefault(name, info)
                elif not info.isdir():
                    self._not_regular.add(name)  # symlinks, hard links, devices: never read
        except (tarfile.TarError, OSError, EOFError):
            raise ArchiveRefused("the tar archive is damaged; send it again") from None

    def _find_manifest(self) -> None:
        found = [name for name in self._members if posixpath.basename(name).lower() == MANIFEST_NAME]
        if not found:
            raise ArchiveRefused(
                f"no {MANIFEST_NAME} in the archive; add one with a 'filename' column and one row per image"
            )
        depth = min(name.count("/") for name in found)
        shallowest = [name for name in found if name.count("/") == depth]
        if len(shallowest) > 1:
            raise ArchiveRefused(f"the archive holds {len(shallowest)} {MANIFEST_NAME} files side by side; keep one")
        self._manifest = self._members[shallowest[0]]
        self._base = posixpath.dirname(shallowest[0])
        if _size(self._manifest) > MANIFEST_MAX_BYTES:
            raise ArchiveRefused(f"{MANIFEST_NAME} is larger than {MANIFEST_MAX_BYTES // (1024 * 1024)} MB")

    def _open_member(self, info: Any) -> IO[bytes]:
        if self._zip is not None:
            return self._zip.open(info)
        assert self._tar is not None
        handle = self._tar.extractfile(info)
        assert handle is not None  # a regular file always has data
        return handle

    def rows(self) -> Iterator[ManifestRow]:
        """The manifest's rows in order. ``ArchiveRefused`` when it has no file column or is not text."""
        try:
            with io.TextIOWrapper(self._open_member(self._manifest), encoding="utf-8-sig", newline="") as text:
                reader = csv.DictReader(text)
                columns = column_map(reader.fieldnames or [])
                if "filename" not in columns:
                    raise ArchiveRefused(f"{MANIFEST_NAME} has {NO_FILE_COLUMN}")
                for row, record in enumerate(reader, start=1):
                    values = {name: (record.get(column) or "").strip() for name, column in columns.items()}
                    yield ManifestRow(row, values.pop("filename") or None, values)
        except UnicodeDecodeError:
            raise ArchiveRefused(f"{MANIFEST_NAME} is not UTF-8 text; save it as CSV UTF-8") from None
        except csv.Error as exc:
            raise ArchiveRefused(f"{MANIFEST_NAME} is not readable CSV ({exc})") from None
        except (zipfile.BadZipFile, tarfile.TarError, OSError, RuntimeError):
            raise ArchiveRefused(f"{MANIFEST_NAME} could not be read from the archive (damaged or encrypted)") from None

    def read(self, name: str | None) -> bytes:
        """The bytes of the member a row names, at most the member limit; ``RowRefused`` when
        the name is unsafe, the member missing, not a file, or too large."""
        info = self._member(name)
        if _size(info) > self.limits.max_member_bytes:
            raise RowRefused("payload_too_large", 413, too_large_detail(self.limits))
        try:
            with self._open_member(info) as handle:
                data = handle.read(self.limits.max_member_bytes + 1)
        except (zipfile.BadZipFile, tarfile.TarError, OSError, RuntimeError, EOFError, ValueError):
            raise RowRefused(
                "unreadable_image", 422, f"{name} could not be read from the archive (damaged or encrypted)"
            ) from None
        if len(data) > self.limits.max_member_bytes:
            raise RowRefused("payload_too_large", 413, too_large_detail(self.limits))
        return data

    def _member(self, name: str | None) -> Any:
        if not name:
            raise RowRefused("unprocessable", 422, "filename: no file named", [{"field": "filename",
                                                                               "message": "no file named"}])
        problem = unsafe_name(name)
        if problem:
            raise RowRefused("invalid_file_name", 422, f"file name refused: {problem}")
        path = posixpath.normpath(posixpath.join(self._base, _normal(name)))
        candidates = [path]
        if not path.lower().endswith(IMAGE_SUFFIXES):  # ISIC writes image names without their extension
            candidates += [path + suffix for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)]
        for candidate in candidates:
            if candidate in self._members:
                return self._members[candidate]
            if candidate in self._not_regular:
                raise RowRefused("invalid_file_name", 422, f"{name} is a link or device in the tar, not a file")
        where = f" (in {self._base}/)" if self._base else ""
        raise RowRefused("missing_file", 422, f"missing file: {name} is not in the archive{where}")


_COMPRESSED: dict[bytes, ModuleType] = {b"\x1f\x8b": gzip, b"BZh": bz2, b"\xfd7zXZ\x00": lzma}


def _decompressed(path: str, max_bytes: int) -> IO[bytes] | None:
    """A gzip, bzip2 or xz tar inflated to a temporary file (None when the tar is plain), so its
    members are found by seeking. Inflating stops past ``max_bytes``: a compression bomb costs
    the archive's own limit of disk, no more."""
    with open(path, "rb") as handle:
        magic = handle.read(6)
    codec = next((module for prefix, module in _COMPRESSED.items() if magic.startswith(prefix)), None)
    if codec is None:
        return None
    plain = tempfile.TemporaryFile()  # noqa: SIM115 - the caller's to close (ImageArchive.close)
    try:
        with codec.open(path, "rb") as inflating:
            total = 0
            while chunk := inflating.read(1024 * 1024):
                total += len(chunk)
                if total > max_bytes:
                    raise ArchiveRefused(
                        f"the tar inflates to more than the {max_bytes // (1024 * 1024)} MB limit; split it over "
                        "several batches"
                    )
                plain.write(chunk)
    except (OSError, EOFError, lzma.LZMAError, zlib.error):
        plain.close()
        raise ArchiveRefused("the compressed tar is damaged; send it again") from None
    except BaseException:
        plain.close()
        raise
    plain.seek(0)
    return plain


def _size(info: Any) -> int:
    return int(info.file_size if isinstance(info, zipfile.ZipInfo) else info.size)


def _normal(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_name(name: str) -> str | None:
    """Why a member name from a manifest is refused, or None: it must be a relative path inside
    the archive (no absolute path, no ``..``, no backslash, no drive, no control character)."""
    if any(ord(ch) < 32 for ch in name):
        return "a control character in the name"
    if "\\" in name:
        return f"{name!r} has a backslash; use / between folders"
    if name.startswith("/") or _DRIVE.match(name):
        return f"{name!r} is an absolute path; name files relative to {MANIFEST_NAME}"
    if ".." in name.split("/"):
        return f"{name!r} leaves the archive's folder (..)"
    return None


_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def zip_entry_count(handle: IO[bytes]) -> int:
    """How many entries a zip's end record declares, read before its directory is loaded (a
    directory of millions of tiny entries would cost gigabytes of memory). ``ArchiveRefused``
    when there is no end record: not a zip."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    tail_size = min(size, _EOCD.size + 65535)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise ArchiveRefused("the file is not a readable zip archive; send a zip (or tar) of images")
    _, _, _, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    if entries != 0xFFFF and cd_size != 0xFFFFFFFF and cd_offset != 0xFFFFFFFF:
        return int(entries)
    locator_at = at - _ZIP64_LOCATOR.size
    if locator_at < 0:
        raise ArchiveRefused("the zip's end record is damaged; send it again")
    signature, _, zip64_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
    if signature != b"PK\x06\x07" or zip64_offset + _ZIP64_EOCD.size > size:
        raise ArchiveRefused("the zip's end record is damaged; send it again")
    handle.seek(zip64_offset)
    record = handle.read(_ZIP64_EOCD.size)
    if len(record) < _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
        raise ArchiveRefused("the zip's end record is damaged; send it again")
    return int(_ZIP64_EOCD.unpack(record)[7])


# ---------------------------------------------------------------- NDJSON


def ndjson_rows(chunks: Iterable[bytes]) -> Iterator[ManifestRow]:
    """NDJSON rows as they stream: one JSON object per line with ``upload_id`` and the analysis
    fields. Blank lines are skipped (their numbers stay taken); a line longer than
    ``LINE_MAX_BYTES`` or not a JSON object is a refused row."""
    for row, line in _lines(chunks):
        if line is None:
            yield ManifestRow(row, None, {}, RowRefused(
                "unprocessable", 422, f"the line is longer than {LINE_MAX_BYTES // 1024} KiB; one row per line"))
            continue
        if not line.strip():
            continue
        try:
            value = json_limits.loads(line)
        except (ValueError, json_limits.JsonTooDeep):
            value = None
        if not isinstance(value, dict):
            yield ManifestRow(row, None, {}, RowRefused(
                "unprocessable", 422, "the line is not a JSON object; send one object with an upload_id per line"))
            continue
        upload_id = value.get("upload_id")
        yield ManifestRow(row, str(upload_id)[:300] if upload_id is not None else None, value)


def _lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) for each line; None for a line past ``LINE_MAX_BYTES`` (never held whole)."""
    number = 0
    buffer = bytearray()
    overlong = False
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not overlong:
                buffer += piece
                if len(buffer) > LINE_MAX_BYTES:
                    overlong = True
                    buffer.clear()
            if end < 0:
                break
            number += 1
            yield number, None if overlong else bytes(buffer)
            buffer.clear()
            overlong = False
            start = end + 1
    if buffer or overlong:
        number += 1
        yield number, None if overlong else bytes(buffer)


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
