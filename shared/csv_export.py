"""CSV that spreadsheets open as data, never as formulas (OWASP "CSV injection").

Every CSV the product writes goes through `safe_cell`: a text cell that begins with
`=`, `+`, `-`, `@`, a tab or a carriage return gets a leading single quote, which Excel,
LibreOffice and Google Sheets show as text. Numbers are left alone (a negative ITA is a
number, not a formula); the `csv` module does the quoting of separators and newlines.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """The value as a CSV cell: None is empty, booleans are true/false, risky text is quoted."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    text = str(value)
    if text.startswith(FORMULA_TRIGGERS):
        return "'" + text
    return text


class SafeDictWriter:
    """`csv.DictWriter` whose every cell passes through `safe_cell`."""

    def __init__(self, handle: TextIO, fieldnames: Iterable[str], **kwargs: Any) -> None:
        self._writer = csv.DictWriter(handle, fieldnames=list(fieldnames), **kwargs)

    def writeheader(self) -> None:
        self._writer.writeheader()

    def writerow(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({key: safe_cell(value) for key, value in row.items()})
