"""Quality gate: Laplacian-variance blur score of the full image (the original's measure)."""

import cv2
import numpy as np

DEFAULT_BLUR_THRESHOLD = 100.0


def blur_score(image: np.ndarray) -> float:
    """Variance of the grayscale Laplacian; low values mean few sharp edges (a blurry photo)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def is_blurry(score: float, threshold: float = DEFAULT_BLUR_THRESHOLD) -> bool:
    return score < threshold
