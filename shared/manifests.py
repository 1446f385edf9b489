"""The manifest's columns, one home for both readers of a manifest: the CLI's folder planner
(``cli/manifest.py``) and the ingest lane's archive reader (``shared.archives``, issue 25).

A manifest is CSV with a header row; each column is found by any of its names (ours first,
then ISIC's), case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# Column names accepted for each field, ours first, then ISIC's.
COLUMNS: dict[str, tuple[str, ...]] = {
    "filename": ("filename", "file", "image", "image_name", "isic_id"),
    "age": ("age", "age_approx"),
    "sex": ("sex",),
    "site": ("site", "anatom_site_general_challenge", "anatom_site_general"),
    "pixel_spacing_mm": ("pixel_spacing_mm",),
    "external_id": ("external_id",),
    "patient_reference": ("patient_reference",),
    "encounter_reference": ("encounter_reference",),
}

NO_FILE_COLUMN = "no file column; name it 'filename' (or ISIC's 'image_name')"


def column_map(header: Iterable[str]) -> dict[str, str]:
    """Field name → the header's column for it, for the fields the header has. The caller
    refuses a manifest without ``filename`` (``NO_FILE_COLUMN``)."""
    present = {h.strip().lower(): h for h in header if h}
    columns = {}
    for name, candidates in COLUMNS.items():
        for candidate in candidates:
            if candidate in present:
                columns[name] = present[candidate]
                break
    return columns


def external_id_from(stem: str) -> str:
    """A name made into an external id the API accepts (what a row without one is called)."""
    return re.sub(r"[^A-Za-z0-9._:\-]", "_", stem)[:200].lstrip("-") or "image"
