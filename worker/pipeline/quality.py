"""Quality gate: Laplacian-variance blur score of the full image (the original's measure).

The gates' default thresholds are shared.clinical's (BLUR_THRESHOLD, MIN_COVERAGE), the one
place Settings and PipelineOptions take them from too.
"""

import cv2
import numpy as np

from shared.clinical import BLUR_THRESHOLD, MIN_COVERAGE

# The names PipelineOptions reads its defaults by.
DEFAULT_BLUR_THRESHOLD = BLUR_THRESHOLD
DEFAULT_MIN_COVERAGE = MIN_COVERAGE


def blur_score(image: np.ndarray) -> float:
    """Variance of the grayscale Laplacian; low values mean few sharp edges (a blurry photo)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def is_blurry(score: float, threshold: float = BLUR_THRESHOLD) -> bool:
    return score < threshold
