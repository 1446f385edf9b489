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


# ---------------------------------------------------------------- DICOM attributes (issue 23)

# PatientSex (0010,0040): M, F or O. ``O`` (other) has no place in the model's layout: unknown.
DICOM_SEXES: dict[str, str] = {"M": "male", "F": "female", "O": "unknown"}
# PatientAge (0010,1010) is ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``: days per unit, to years.
DICOM_AGE_UNITS: dict[str, float] = {"D": 1.0, "W": 7.0, "M": 30.4375, "Y": 365.25}
# What an AnatomicRegionSequence code meaning (SNOMED CT's "… structure" names, with the word
# "structure" dropped) or a BodyPartExamined defined term (PS3.16 Annex L, upper case, spaces
# for underscores) means in our layout. Words not here (SKIN, EXTREMITY, WHOLEBODY) say nothing
# about the site: unknown. The foot and hand are extremities unless the palm or sole is named,
# as ISIC labels them.
_DICOM_SITE_TERMS: dict[str, tuple[str, ...]] = {
    "head/neck": (
        "head", "neck", "head and neck", "headneck", "face", "scalp", "ear", "external ear", "nose", "cheek",
        "forehead", "chin", "eyelid", "skin of head", "skin of face", "skin of neck",
    ),
    "upper extremity": (
        "upper limb", "upr limb", "upper extremity", "arm", "upper arm", "forearm", "elbow", "wrist", "hand",
        "finger", "thumb", "shoulder", "axilla", "skin of upper limb",
    ),
    "lower extremity": (
        "lower limb", "lwr limb", "lower extremity", "leg", "lower leg", "thigh", "knee", "ankle", "foot", "toe",
        "hip", "buttock", "skin of lower limb",
    ),
    "torso": (
        "trunk", "torso", "chest", "thorax", "thoracic", "breast", "abdomen", "back", "upper back", "lower back",
        "flank", "pelvis", "skin of trunk", "chest abdomen",
    ),
    "palms/soles": ("palm", "palm of hand", "sole", "sole of foot", "palms soles"),
    "oral/genital": (
        "oral cavity", "mouth", "lip", "tongue", "genital", "genitalia", "vulva", "penis", "scrotum", "perineum",
        "oral genital",
    ),
}
_DICOM_SITE_ALIASES: dict[str, str] = {term: site for site, terms in _DICOM_SITE_TERMS.items() for term in terms}


def sex_from_dicom(raw: object) -> str | None:
    """PatientSex in our vocabulary; None when absent or not M, F or O."""
    return DICOM_SEXES.get(str(raw or "").strip().upper())


def age_from_dicom(raw: object) -> int | None:
    """Whole years from PatientAge (``061Y``, ``018M``, ``003W``, ``010D``); None when absent,
    malformed or outside ``AGE_RANGE``."""
    text = str(raw or "").strip().upper()
    if len(text) < 2 or not text[:-1].isdigit() or text[-1] not in DICOM_AGE_UNITS:
        return None
    years = int(int(text[:-1]) * DICOM_AGE_UNITS[text[-1]] // 365.25)
    return years if AGE_MIN <= years <= AGE_MAX else None


def site_from_dicom(raw: object) -> str | None:
    """One of ``SITES`` (but ``unknown``) from an anatomic region's code meaning or a body
    part's defined term; None when the text names no site we distinguish."""
    if is_missing(raw):
        return None
    key = " ".join(_key(raw).replace("/", " ").replace(",", " ").split())
    for prefix in ("structure of ", "entire "):
        key = key.removeprefix(prefix)
    key = key.removesuffix(" structure")
    site = _DICOM_SITE_ALIASES.get(key) or SITE_ALIASES.get(key) or (key if key in SITES else None)
    return site if site != "unknown" else None
