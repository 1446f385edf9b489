"""Small labelled (or unlabelled) CSVs cut from the synthetic data set."""

from __future__ import annotations

import csv
from pathlib import Path


def write_subset(csv_path: Path, out: Path, step: int, *, drop: tuple[str, ...] = ()) -> list[dict]:
    """Every ``step``-th row of ``csv_path`` written to ``out`` without the ``drop`` columns; the
    rows (all columns) are returned."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))[::step]
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[c for c in rows[0] if c not in drop], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return rows

