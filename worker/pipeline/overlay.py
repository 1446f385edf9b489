"""Mask and overlay PNG artifacts at the uploaded image's aspect ratio."""

import cv2
import numpy as np

OVERLAY_COLOUR = np.array([0, 255, 255], dtype=np.float32)  # cyan, as the original
OVERLAY_ALPHA = 0.4


def artifact_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) with the same aspect ratio, the longer side capped at ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resample a boolean mask to (height, width) with smooth (not blocky) edges."""
    resized = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return resized > 0.5


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    interpolation = cv2.INTER_AREA if height < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def mask_png(mask: np.ndarray) -> bytes:
    return _png(np.where(mask, 255, 0).astype(np.uint8))


def overlay_png(image: np.ndarray, mask: np.ndarray) -> bytes:
    """Cyan lesion fill at 40% alpha with a solid cyan outline, over the image."""
    blended = image.astype(np.float32)
    blended[mask] = (1 - OVERLAY_ALPHA) * blended[mask] + OVERLAY_ALPHA * OVERLAY_COLOUR
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(mask.shape) / 400))
    cv2.drawContours(blended, contours, -1, tuple(int(c) for c in OVERLAY_COLOUR), thickness, cv2.LINE_AA)
    return _png(blended)


def _png(array: np.ndarray) -> bytes:
    # Fast zlib level: photos barely compress further, and level 6 costs ~3x the time.
    bgr = array[..., ::-1] if array.ndim == 3 else array
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(bgr), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()
