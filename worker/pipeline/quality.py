"""Quality gates: the minimum resolution, and the Laplacian-variance blur score of the full
image (the original's measure).

The gates' default thresholds are shared.clinical's (BLUR_THRESHOLD, MIN_COVERAGE), the one
place Settings and PipelineOptions take them from too; the minimum resolution's default is
``DEFAULT_MIN_IMAGE_SIDE`` (setting ``MIN_IMAGE_SIDE``).
"""

import cv2
import numpy as np

from shared.clinical import BLUR_THRESHOLD, MIN_COVERAGE, MIN_IMAGE_SIDE

# The names PipelineOptions reads its defaults by.
DEFAULT_BLUR_THRESHOLD = BLUR_THRESHOLD
DEFAULT_MIN_COVERAGE = MIN_COVERAGE
# The shorter side of an upload, in pixels, below which it is rejected ``low_resolution``: the
# networks work at 512 px, and a lesion that fills a third of a smaller photo is a few dozen
# pixels across, too few to read its border or colours. The same value as Settings' default.
DEFAULT_MIN_IMAGE_SIDE = MIN_IMAGE_SIDE


def too_small(height: int, width: int, min_side: int) -> bool:
    """Whether an upload of ``height`` x ``width`` pixels has a shorter side below ``min_side``."""
    return min(height, width) < min_side


def blur_score(image: np.ndarray) -> float:
    """Variance of the grayscale Laplacian; low values mean few sharp edges (a blurry photo)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def is_blurry(score: float, threshold: float = BLUR_THRESHOLD) -> bool:
    return score < threshold
