"""Patient metadata encoding for the Fusion model's 11 metadata inputs.

    index  meaning                        value
    0      age                            (age - 50) / 20, the original's scaling; 0.0 when the
                                          age is not given (i.e. imputed as 50 years)
    1      sex = male                     one-hot
    2      sex = female                   one-hot
    3      sex = unknown                  one-hot (also used when sex is not given)
    4      site = head/neck               one-hot
    5      site = upper extremity         one-hot
    6      site = lower extremity         one-hot
    7      site = torso                   one-hot
    8      site = palms/soles             one-hot
    9      site = oral/genital            one-hot
    10     site = unknown                 one-hot (also used when site is not given)

The original server filled only index 0 and left sex and site at zero although its model has
these inputs; here every input is filled. Values are matched case-insensitively; ISIC's finer
torso labels (anterior/posterior/lateral torso) map to ``torso``. The vocabularies and their
order are shared.clinical's, the one list the API validates against.
"""

import numpy as np

from shared.clinical import AGE_RANGE, SEXES, SITE_ALIASES, SITES
from worker.pipeline.errors import MetadataError

METADATA_SIZE = 11  # the Fusion model's input width: 1 age + one-hot sex + one-hot site
_AGE_CENTRE = 50.0
_AGE_SCALE = 20.0


def encode_metadata(age: int | float | None, sex: str | None = "unknown", site: str | None = "unknown") -> np.ndarray:
    vector = np.zeros(METADATA_SIZE, dtype=np.float32)
    if age is not None:
        if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
            raise MetadataError(f"age {age} is outside {AGE_RANGE[0]}..{AGE_RANGE[1]}")
        vector[0] = (float(age) - _AGE_CENTRE) / _AGE_SCALE
    sex_key = (sex or "unknown").strip().lower()
    if sex_key not in SEXES:
        raise MetadataError(f"sex {sex!r} is not one of {', '.join(SEXES)}")
    site_key = (site or "unknown").strip().lower()
    site_key = SITE_ALIASES.get(site_key, site_key)
    if site_key not in SITES:
        raise MetadataError(f"site {site!r} is not one of {', '.join(SITES)}")
    vector[1 + SEXES.index(sex_key)] = 1.0
    vector[1 + len(SEXES) + SITES.index(site_key)] = 1.0
    return vector
