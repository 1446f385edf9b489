"""Reading a multipart upload as a stream, with the size limit enforced while reading,
and turning the bytes into a clean image (``shared.images``, which the ingest worker of
direct uploads uses too): type from content, pixel limits, metadata gone (a DICOM file's
header too: only its pixels are kept)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.problems import (
    BadRequest,
    ImageTooLarge,
    PayloadTooLarge,
    Problem,
    Unprocessable,
    UnreadableImage,
    UnsupportedDicom,
    UnsupportedMediaType,
)
from shared import images
from shared.images import CleanImage

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["CleanImage", "UploadedForm", "clean_image", "problem_for", "read_multipart"]

MAX_FIELD_BYTES = 4096
MAX_FIELDS = 32
# A part's headers together (Content-Disposition, Content-Type: a few hundred bytes in
# practice); python-multipart bounds each header line (4 KiB) and their number (8) itself.
MAX_PART_HEADER_BYTES = 8192
FILE_FIELDS = frozenset({"image"})


@dataclass
class UploadedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    file_types: dict[str, str] = field(default_factory=dict)
    """Each file part's declared Content-Type (lower case, no parameters), when it had one."""


class _Collector:
    """Collects the parts of one form, refusing what the route would otherwise have to guess
    about: a name sent twice (422 naming it; never "last one wins"), a file where a field is
    expected or the reverse (422 naming it; never silently dropped), and parts or part headers
    beyond their limits (400)."""

    def __init__(self, max_file_bytes: int, max_mb: int, file_fields: frozenset[str] = FILE_FIELDS):
        self.form = UploadedForm()
        self.max_file_bytes = max_file_bytes
        self.max_mb = max_mb
        self.file_fields = file_fields
        self._headers: dict[bytes, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._header_bytes = 0
        self._name: str | None = None
        self._is_file = False
        self._buffer = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._append(self._header_field, d[s:e]),
            "on_header_value": lambda d, s, e: self._append(self._header_value, d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _append(self, buffer: bytearray, data: bytes) -> None:
        self._header_bytes += len(data)
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise BadRequest(f"a multipart part's headers are longer than {MAX_PART_HEADER_BYTES} bytes")
        buffer.extend(data)

    def _part_begin(self) -> None:
        self._headers, self._buffer, self._name, self._is_file = {}, bytearray(), None, False
        self._header_bytes = 0

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            raise BadRequest("a multipart part has no name")
        self._name = name.decode("utf-8", "replace")
        self._is_file = b"filename" in options
        if len(self.form.fields) + len(self.form.files) >= MAX_FIELDS:
            raise BadRequest("too many form fields")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._buffer.extend(data[start:end])
        limit = self.max_file_bytes if self._is_file else MAX_FIELD_BYTES
        if len(self._buffer) > limit:
            if self._is_file:
                raise PayloadTooLarge(
                    f"the image is larger than the {self.max_mb} MB limit; send a smaller JPEG or PNG"
                )
            raise BadRequest(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        # Judged once the part is complete (a body cut off inside a part is a framing error, 400).
        if self._name is None:
            return
        shown = _shown(self._name)
        if self._name in self.form.fields or self._name in self.form.files:
            raise _refused(shown, "was sent more than once; send each field once")
        if self._is_file and self._name not in self.file_fields:
            raise _refused(shown, "was sent as a file; send it as a plain form field")
        if not self._is_file and self._name in self.file_fields:
            raise _refused(shown, "must be sent as a file part (with a filename)")
        if self._is_file:
            self.form.files[self._name] = bytes(self._buffer)
            declared, _ = parse_options_header(self._headers.get(b"content-type", b""))
            if declared:
                self.form.file_types[self._name] = declared.decode("latin-1").lower()[:100]
        else:
            value = self._buffer.decode("utf-8", "replace")
            if "\x00" in value or "\x00" in self._name:
                field = self._name.replace("\x00", "")
                raise Unprocessable(
                    f"{field}: must not contain NUL bytes; remove them and resend",
                    errors=[{"field": field, "message": "contains a NUL byte"}],
                )
            self.form.fields[self._name] = value
        self._buffer = bytearray()


def _shown(name: str) -> str:
    """A part's name as a problem may quote it: no NUL, not unbounded."""
    return name.replace("\x00", "")[:100] or "form"


def _refused(field: str, message: str) -> Unprocessable:
    return Unprocessable(f"{field}: {message}", errors=[{"field": field, "message": message}])


async def read_multipart(
    request: Request, max_file_bytes: int, max_mb: int, file_fields: frozenset[str] = FILE_FIELDS
) -> UploadedForm:
    """The form's fields and files (``file_fields`` name the parts that must be files), read
    as a stream with every limit enforced while reading."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise UnsupportedMediaType("send the image as multipart/form-data with an 'image' file field")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_file_bytes + 64 * 1024:
        raise PayloadTooLarge(f"the request is larger than the {max_mb} MB upload limit")
    collector = _Collector(max_file_bytes, max_mb, file_fields)
    try:
        parser = MultipartParser(options[b"boundary"], collector.callbacks())
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (MultipartParseError, FormParserError) as exc:
        # Bad framing, an over-long boundary, a missing closing delimiter: the client's fault.
        raise BadRequest(f"the multipart body is malformed: {exc}") from None
    return collector.form


def clean_image(raw: bytes, max_pixels: int, max_side: int = 4096, declared_type: str | None = None) -> CleanImage:
    """``shared.images.clean_image``, its refusals as the API's problems. ``declared_type``:
    the part's Content-Type, which matters only for DICOM without the Part 10 preamble (every
    other type is judged from the content)."""
    try:
        return images.clean_image(raw, max_pixels, max_side, declared_type)
    except images.ImageRejected as exc:
        raise problem_for(exc) from None


def problem_for(exc: images.ImageRejected) -> Problem:
    problem = {
        images.UnreadableImageError: UnreadableImage,
        images.ImageTooLargeError: ImageTooLarge,
        images.UnsupportedImageError: UnsupportedMediaType,
        images.UploadTooLargeError: PayloadTooLarge,
        images.UnsupportedDicomError: UnsupportedDicom,
    }[type(exc)]
    return problem(exc.detail)
