"""A labelled synthetic data set in the ISIC layouts, for tests, demos and benchmarks.

Lesions come from ``worker.pipeline.synthetic``; the label is the generator's own truth:
``target = 1`` for irregular, variegated lesions (the "B" and "C" of ABCD), 0 for round,
uniform ones. Skin tones cycle through every ITA group, so per-group tables have rows for
each. The folder holds ``images/`` and ``masks/`` (ISIC 2018 Task 1 names), ``train.csv``
(ISIC 2020 columns plus ``ita``) and ``dataset.json``, which marks it synthetic so a model
trained on it says ``weights: synthetic``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from worker.pipeline.synthetic import make_lesion

# One ITA per skin group, lightest first: very light, light, intermediate, tan, brown, dark.
GROUP_ITAS = (62.0, 48.0, 35.0, 19.0, 0.0, -40.0)
SITES = ("torso", "lower extremity", "upper extremity", "head/neck")
CSV_COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "target", "ita")
DATASET_FILE = "dataset.json"
DESCRIPTION = (
    "synthetic lesions from worker.pipeline.synthetic; target = irregular + variegated "
    "(generated images, not clinical data)"
)


def write_synthetic_dataset(
    folder: Path, patients: int = 48, images_per_patient: int = 4, size: int = 96,
    positive_fraction: float = 0.4, seed: int = 0,
) -> Path:
    """Write the data set; returns the CSV path. The same arguments always give the same files."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(patients):
        ita = GROUP_ITAS[patient % len(GROUP_ITAS)]
        sex = ("male", "female")[patient % 2]
        age = int(rng.integers(25, 85))
        for index in range(images_per_patient):
            target = int(rng.random() < positive_fraction)
            if target:
                irregularity, variegation = rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0)
            else:
                irregularity, variegation = rng.uniform(0.0, 0.15), 0.0
            name = f"SYN_{patient:04d}_{index:02d}"
            lesion = make_lesion(
                seed=int(rng.integers(0, 2**31 - 1)), size=(size, size), ita=ita + rng.uniform(-3, 3),
                radius_frac=rng.uniform(0.22, 0.32), irregularity=irregularity, variegation=variegation,
            )
            Image.fromarray(lesion.image).save(folder / "images" / f"{name}.png")
            Image.fromarray((lesion.mask * 255).astype(np.uint8)).save(folder / "masks" / f"{name}_segmentation.png")
            rows.append({
                "image_name": name, "patient_id": f"SYNP_{patient:04d}", "sex": sex, "age_approx": age,
                "anatom_site_general_challenge": SITES[(patient + index) % len(SITES)], "target": target,
                "ita": round(ita, 1),
            })
    csv_path = folder / "train.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (folder / DATASET_FILE).write_text(json.dumps({"synthetic": True, "description": DESCRIPTION, "seed": seed}))
    return csv_path
