"""Quality gates: the minimum resolution, and the Laplacian-variance blur score (the original's
measure) at a fixed working size.

The score is measured on the image brought down (area averaging) to ``BLUR_WORKING_SIDE`` pixels
on its longer side; smaller images are measured as they are. So the score of a photo does not
depend on whether it was decoded in full or DCT-reduced (``DECODE_REDUCED``), nor on how many
pixels the camera spent on the same scene above that size (issue 27; the recalibration is in
docs/DECISIONS.md, "Issue 27").

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


# The longer side the blur score is measured at: the artifacts' size, which a DCT-reduced decode
# never goes below (pipeline ``_admit``'s ``keep``).
BLUR_WORKING_SIDE = 1024


def blur_score(image: np.ndarray, working_side: int = BLUR_WORKING_SIDE) -> float:
    """Variance of the grayscale Laplacian at the working size (longer side ``working_side``,
    never enlarged); low values mean few sharp edges (a blurry photo)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    height, width = gray.shape
    if max(height, width) > working_side:
        scale = working_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    # The 3x3 Laplacian of 8-bit pixels is an integer within +-1020, so 16-bit holds it exactly and
    # the variance is the same as of a 64-bit float Laplacian (to the last bits of the sum's
    # rounding), in a third of the time: ~1.2 ms against ~4 at 1024 x 768 (issue 27, round 8).
    _, deviation = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))
    return float(deviation[0, 0]) ** 2


def is_blurry(score: float, threshold: float = BLUR_THRESHOLD) -> bool:
    return score < threshold
