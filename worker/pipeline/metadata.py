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
these inputs; here every input is filled. Sex and site are read with the one vocabulary
(shared.clinical.vocabulary: its aliases, e.g. ISIC's anterior/posterior/lateral torso, and its
order, the one list the API validates against), so the API, CLI manifests, training data and
this encoder accept the same values.
"""

import numpy as np

from shared.clinical.vocabulary import AGE_MAX, AGE_MIN, SEXES, SITES, VocabularyError, normalise_sex, normalise_site
from worker.pipeline.errors import MetadataError

METADATA_SIZE = 11  # the Fusion model's input width: 1 age + one-hot sex + one-hot site
_AGE_CENTRE = 50.0
_AGE_SCALE = 20.0


def encode_metadata(age: int | float | None, sex: str | None = "unknown", site: str | None = "unknown") -> np.ndarray:
    """The 11 inputs for one lesion; MetadataError for a value outside the vocabulary."""
    vector = np.zeros(METADATA_SIZE, dtype=np.float32)
    if age is not None:
        # Any number within the range: training data may carry fractional ages.
        if not AGE_MIN <= age <= AGE_MAX:
            raise MetadataError(f"age {age} is outside {AGE_MIN}..{AGE_MAX}")
        vector[0] = (float(age) - _AGE_CENTRE) / _AGE_SCALE
    try:
        sex_key, site_key = normalise_sex(sex), normalise_site(site)
    except VocabularyError as exc:
        raise MetadataError(str(exc)) from exc
    vector[1 + SEXES.index(sex_key)] = 1.0
    vector[1 + len(SEXES) + SITES.index(site_key)] = 1.0
    return vector
