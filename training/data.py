"""Labelled data from local folders: ISIC 2020 (classification) and ISIC 2018 Task 1
(segmentation) layouts, the patient-grouped split, augmentations and the data fingerprint."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from shared.clinical.vocabulary import VocabularyError, normalise_age, normalise_sex, normalise_site
from worker.pipeline.metadata import encode_metadata
from worker.pipeline.preprocess import IMAGENET_MEAN, IMAGENET_STD, network_transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = "_segmentation.png"
ISIC_2020_COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "target")
DATASET_FILE = "dataset.json"


class DataError(ValueError):
    """The folder or CSV does not hold what training or evaluation needs (says what is wrong)."""


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    patient_id: str
    target: int | None = None
    age: int | None = None  # whole years, as the API takes them
    sex: str = "unknown"
    site: str = "unknown"
    mask: Path | None = None

    @property
    def metadata(self) -> np.ndarray:
        return encode_metadata(self.age, self.sex, self.site)


def find_image(images: Path, name: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = images / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(f"no image {name}.jpg/.jpeg/.png in {images}")


# Training reads the metadata as the API would accept it (shared.clinical.vocabulary), so the
# model learns from the values it will be given; what the API would refuse (ISIC's NaN, a site
# outside the vocabulary, an impossible or fractional age) counts as not given.


def _age(value: str | None) -> int | None:
    try:
        return normalise_age(value)
    except VocabularyError:
        return None


def _sex(value: str | None) -> str:
    try:
        return normalise_sex(value)
    except VocabularyError:
        return "unknown"


def _site(value: str | None) -> str:
    try:
        return normalise_site(value)
    except VocabularyError:
        return "unknown"


def read_labelled_csv(
    csv_path: Path, images: Path, masks: Path | None = None, need_target: bool = True, hint: str = ""
) -> list[Sample]:
    """Rows of an ISIC 2020 style CSV whose images exist (a missing image is an error);
    ``hint`` ends the message when a needed column is missing."""
    with Path(csv_path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        needed = {"image_name"} | ({"target"} if need_target else set())
        if not needed <= columns:
            raise DataError(f"{csv_path} needs the columns {', '.join(sorted(needed))} (ISIC 2020 layout); "
                            f"it has {', '.join(sorted(columns))}{hint}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{csv_path} has no rows")
    samples = []
    for row in rows:
        name = row["image_name"].strip()
        target = row.get("target")
        if target not in (None, "") and target.strip() not in ("0", "1"):
            raise DataError(f"{csv_path}: target of {name} must be 0 or 1, not {target!r}")
        mask = None
        if masks is not None and (masks / f"{name}{MASK_SUFFIX}").is_file():
            mask = masks / f"{name}{MASK_SUFFIX}"
        samples.append(Sample(
            name=name,
            image=find_image(images, name),
            patient_id=(row.get("patient_id") or name).strip(),
            target=int(target) if target not in (None, "") else None,
            age=_age(row.get("age_approx")),
            sex=_sex(row.get("sex")),
            site=_site(row.get("anatom_site_general_challenge")),
            mask=mask,
        ))
    return samples


def read_segmentation_folder(images: Path, masks: Path) -> list[Sample]:
    """ISIC 2018 Task 1: ``images/ISIC_x.jpg`` with ``masks/ISIC_x_segmentation.png``."""
    samples = []
    for mask in sorted(Path(masks).glob(f"*{MASK_SUFFIX}")):
        name = mask.name[: -len(MASK_SUFFIX)]
        samples.append(Sample(name=name, image=find_image(Path(images), name), patient_id=name, mask=mask))
    if not samples:
        raise DataError(f"no masks named *{MASK_SUFFIX} in {masks} (ISIC 2018 Task 1 layout)")
    return samples


def describe_dataset(folder: Path) -> dict:
    """``dataset.json`` beside the data, if any: whether it is synthetic and what it is."""
    path = Path(folder) / DATASET_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def fingerprint(samples: list[Sample], extra: Sequence[Path] = ()) -> str:
    """sha256 over every file's name and content (images, masks, CSV): the exact data."""
    digest = hashlib.sha256()
    paths = sorted({p for s in samples for p in (s.image, s.mask) if p is not None} | set(extra))
    for path in paths:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def patient_split(samples: list[Sample], n_splits: int, fold: int, seed: int) -> tuple[list[int], list[int]]:
    """The original's "Iron Curtain": StratifiedGroupKFold grouped by patient, stratified by
    target (GroupKFold when there is no target), so no patient is on both sides."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    if not 0 <= fold < n_splits:
        raise DataError(f"fold must be within 0..{n_splits - 1}")
    groups = [s.patient_id for s in samples]
    if len(set(groups)) < n_splits:
        raise DataError(f"{len(set(groups))} patients cannot fill {n_splits} folds; use fewer --folds")
    index = np.arange(len(samples))
    if all(s.target is not None for s in samples):
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        folds = list(splitter.split(index, [s.target for s in samples], groups))
    else:
        folds = list(GroupKFold(n_splits=n_splits).split(index, groups=groups))
    train, val = folds[fold]
    return sorted(train.tolist()), sorted(val.tolist())


def train_augmentations(size: int, seed: int | None = None) -> A.Compose:
    """Geometry freely (lesions have no up); colour gently, since colour is a finding.
    Seeded: albumentations keeps its own random generator."""
    return A.Compose([
        A.Resize(size, size),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-20, 20), p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0),
    ], seed=seed)


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def load_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return (np.asarray(image.convert("L")) > 127).astype(np.float32)


class LesionDataset(Dataset):
    """Images (CHW float32, normalised as the pipeline does), metadata, target, and mask."""

    def __init__(self, samples: list[Sample], size: int, train: bool, with_masks: bool = False,
                 seed: int | None = None) -> None:
        self.samples = samples
        self.with_masks = with_masks
        self.transform = train_augmentations(size, seed) if train else network_transform(size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = load_rgb(sample.image)
        item = {}
        if self.with_masks:
            if sample.mask is None:
                raise DataError(f"{sample.image.name} has no mask")
            mask = load_mask(sample.mask)
            out = self.transform(image=image, mask=mask)
            item["mask"] = torch.from_numpy(np.ascontiguousarray(out["mask"], dtype=np.float32))[None]
        else:
            out = self.transform(image=image)
        item["image"] = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1), dtype=np.float32))
        item["metadata"] = torch.from_numpy(sample.metadata)
        item["target"] = torch.tensor(float(sample.target if sample.target is not None else 0))
        return item
