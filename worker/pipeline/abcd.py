"""ABCD dermoscopy concepts computed from a lesion mask: Asymmetry, Border, Colour, Diameter.

Every score is in 0..1 except the diameter. Unlike the original (which mirrored the mask about
the image centre and so scored a perfect disk as asymmetric whenever it sat off-centre),
asymmetry is measured about the lesion's own centroid and principal axes, and the border score
measures departure from convexity rather than elongation, so a smooth ellipse scores near 0.
"""

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

# Colour spread (mean RGB channel std) that counts as fully variegated; the original's constant.
_COLOUR_FULL_SCALE = 60.0
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclass(frozen=True)
class Concepts:
    asymmetry: float
    border: float
    color: float
    diameter_px: float
    diameter_mm: float | None

    def as_dict(self) -> dict:
        return {
            "asymmetry": self.asymmetry,
            "border": self.border,
            "color": self.color,
            "diameter_px": self.diameter_px,
            "diameter_mm": self.diameter_mm,
        }


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def asymmetry(mask: np.ndarray) -> float:
    """Mean over both principal axes of 1 - IoU(mask, mask mirrored across that axis)."""
    mask = mask.astype(bool)
    area = int(mask.sum())
    if area < 3:
        return 0.0
    rows, cols = np.nonzero(mask)
    cy, cx = rows.mean(), cols.mean()
    cov = np.cov(np.stack([cols - cx, rows - cy]))
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    major = eigenvectors[:, int(np.argmax(eigenvalues))]
    angle = math.degrees(math.atan2(major[1], major[0]))

    # A canvas big enough for the lesion in any orientation, centred exactly on its centroid,
    # so that flipping the array mirrors about the centroid's principal axes.
    extent = math.hypot(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    side = int(math.ceil(2 * extent)) + 3
    centre = (side - 1) / 2
    rotation = cv2.getRotationMatrix2D((float(cx), float(cy)), angle, 1.0)
    rotation[0, 2] += centre - cx
    rotation[1, 2] += centre - cy
    aligned = cv2.warpAffine(mask.astype(np.float32), rotation, (side, side), flags=cv2.INTER_LINEAR) > 0.5
    scores = [1.0 - _iou(aligned, np.flipud(aligned)), 1.0 - _iou(aligned, np.fliplr(aligned))]
    return float(np.clip(np.mean(scores), 0.0, 1.0))


def border_irregularity(mask: np.ndarray) -> float:
    """1 - convexity * solidity of the outer contour: 0 for convex outlines, towards 1 when ragged.

    convexity = hull perimeter / contour perimeter (notches and ragged edges lengthen the
    contour), solidity = area / hull area (deep indentations). The contour is lightly smoothed
    first so pixel staircases are not mistaken for a ragged edge.
    """
    contour = _outer_contour(mask)
    if contour is None or len(contour) < 8:
        return 0.0
    smooth = _smooth_closed_curve(contour.astype(np.float64), window=5).astype(np.float32)
    perimeter = cv2.arcLength(smooth, closed=True)
    area = cv2.contourArea(smooth)
    hull = cv2.convexHull(smooth)
    hull_perimeter = cv2.arcLength(hull, closed=True)
    hull_area = cv2.contourArea(hull)
    if perimeter <= 0 or hull_area <= 0:
        return 0.0
    convexity = min(1.0, hull_perimeter / perimeter)
    solidity = min(1.0, area / hull_area)
    return float(np.clip(1.0 - convexity * solidity, 0.0, 1.0))


def colour_variegation(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean RGB channel std inside the lesion / 60, capped at 1 (the original's scale).

    Sensor noise and the lesion rim (half skin, half lesion) are not variegation, so the image
    is lightly smoothed and a thin rim is eroded away before measuring.
    """
    mask = mask.astype(bool)
    rim = max(1, round(0.01 * max(mask.shape)))
    # Erosion by the 3x3 cross, ``rim`` times, outside counted as background (as
    # scipy.ndimage.binary_erosion(mask, iterations=rim)), in one OpenCV call.
    core = cv2.erode(mask.astype(np.uint8), _CROSS, iterations=rim, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    if np.count_nonzero(core) < 16:
        core = mask.astype(np.uint8)
    if np.count_nonzero(core) < 2:
        return 0.0
    # Blur only around the lesion (plus the kernel's reach): the same numbers, less work.
    rows, cols = np.nonzero(core.any(axis=1))[0], np.nonzero(core.any(axis=0))[0]
    pad = 8
    top, bottom = max(0, rows[0] - pad), min(mask.shape[0], rows[-1] + 1 + pad)
    left, right = max(0, cols[0] - pad), min(mask.shape[1], cols[-1] + 1 + pad)
    smoothed = cv2.GaussianBlur(np.ascontiguousarray(image[top:bottom, left:right]), (0, 0), sigmaX=1.5)
    _, std = cv2.meanStdDev(smoothed, mask=np.ascontiguousarray(core[top:bottom, left:right]))
    spread = float(std.mean())
    return float(min(1.0, spread / _COLOUR_FULL_SCALE))


def max_feret_diameter(mask: np.ndarray) -> float:
    """Greatest distance between two points of the lesion outline, in pixels of ``mask``."""
    # The hull of the outer boundary pixels is the hull of all pixels, from far fewer points.
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 0.0
    hull = cv2.convexHull(np.concatenate(contours)).reshape(-1, 2).astype(np.float64)
    if len(hull) == 1:
        return 1.0
    distances = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
    # +1: pixel centres span one pixel less than the pixels' outer edges.
    return float(distances.max() + 1.0)


def compute_concepts(
    image: np.ndarray, mask: np.ndarray, pixels_per_input_pixel: float = 1.0, pixel_spacing_mm: float | None = None
) -> Concepts:
    """ABCD on ``image``/``mask`` (same frame); diameters reported in the input image's pixels.

    ``pixels_per_input_pixel`` is how many frame pixels one pixel of the uploaded image spans
    (the frame is usually a downscaled copy); ``pixel_spacing_mm`` is the uploaded image's.
    """
    lesion = largest_component(mask)
    diameter_px = max_feret_diameter(lesion) / pixels_per_input_pixel
    diameter_mm = diameter_px * pixel_spacing_mm if pixel_spacing_mm is not None else None
    return Concepts(
        asymmetry=asymmetry(lesion),
        border=border_irregularity(lesion),
        color=colour_variegation(image, lesion),
        diameter_px=float(diameter_px),
        diameter_mm=None if diameter_mm is None else float(diameter_mm),
    )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _outer_contour(mask: np.ndarray) -> np.ndarray | None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    return max(contours, key=cv2.contourArea).reshape(-1, 2)


def _smooth_closed_curve(points: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    padded = np.concatenate([points[-window:], points, points[:window]])
    smoothed = np.stack([np.convolve(padded[:, i], kernel, mode="same") for i in range(2)], axis=1)
    return smoothed[window:-window]
