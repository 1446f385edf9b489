"""One vocabulary for patient metadata: sex, anatomic site and age, with every alias we accept.

The API validates against it, CLI manifests and training CSVs are normalised with it, and the
Fusion model's metadata encoder (worker/pipeline/metadata.py) lays out its one-hot inputs in
its order. Matching is case-insensitive; underscores and repeated spaces count as one space.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

# The order is the Fusion model's one-hot layout (worker/pipeline/metadata.py): never reorder.
# Spelt as Literals, the types the API's schemas validate against; the tuples follow from them.
Sex = Literal["male", "female", "unknown"]
Site = Literal[
    "head/neck",
    "upper extremity",
    "lower extremity",
    "torso",
    "palms/soles",
    "oral/genital",
    "unknown",
]
SEXES: tuple[str, ...] = get_args(Sex)
SITES: tuple[str, ...] = get_args(Site)
AGE_MIN, AGE_MAX = 0, 120
AGE_RANGE = (AGE_MIN, AGE_MAX)

# Spellings of "not given" in spreadsheets and ISIC's CSVs.
MISSING: frozenset[str] = frozenset({"", "na", "n/a", "nan", "none", "null"})
SEX_ALIASES: dict[str, str] = {"m": "male", "f": "female", "u": "unknown"}
# ISIC's finer labels that mean one of ours, and our own names written without their slash.
SITE_ALIASES: dict[str, str] = {
    "anterior torso": "torso",
    "posterior torso": "torso",
    "lateral torso": "torso",
    "head neck": "head/neck",
    "palms soles": "palms/soles",
    "oral genital": "oral/genital",
}


class VocabularyError(ValueError):
    """A value outside the vocabulary; the message says which values are accepted."""


def _key(raw: object) -> str:
    return " ".join(str(raw).strip().lower().replace("_", " ").split())


def is_missing(raw: object) -> bool:
    if raw is None:
        return True
    if isinstance(raw, float) and math.isnan(raw):
        return True
    return _key(raw) in MISSING


def normalise_sex(raw: object) -> str:
    """``male``, ``female`` or ``unknown`` (also for a missing value); VocabularyError otherwise."""
    if is_missing(raw):
        return "unknown"
    key = _key(raw)
    value = SEX_ALIASES.get(key, key)
    if value not in SEXES:
        raise VocabularyError(f"unknown sex {raw!r}; use male, female or unknown")
    return value


def normalise_site(raw: object) -> str:
    """One of ``SITES`` (``unknown`` for a missing value), after the aliases; VocabularyError otherwise."""
    if is_missing(raw):
        return "unknown"
    key = _key(raw).replace(" / ", "/")
    value = SITE_ALIASES.get(key, key)
    if value not in SITES:
        raise VocabularyError(
            f"unknown site {raw!r}; use one of: {', '.join(SITES)} (or ISIC's anterior/posterior/lateral torso)"
        )
    return value


def normalise_age(raw: object) -> int | None:
    """Whole years within ``AGE_RANGE``, or None when not given; VocabularyError otherwise."""
    if is_missing(raw):
        return None
    try:
        age = float(str(raw).strip()) if not isinstance(raw, int | float) else float(raw)
    except ValueError:
        raise VocabularyError(f"age {raw!r} is not a number; give whole years {AGE_MIN}..{AGE_MAX}") from None
    if math.isnan(age):
        return None
    if not AGE_MIN <= age <= AGE_MAX or age != int(age):
        raise VocabularyError(f"impossible age {raw}; ages are whole years {AGE_MIN}..{AGE_MAX}")
    return int(age)
