"""Resize and normalise images for the networks, as host arrays for any backend.

``network_input`` and ``network_batch`` are OpenCV and numpy, the same arithmetic as the
albumentations transform that training uses (``network_transform``: ``Resize`` is
``cv2.resize(INTER_LINEAR)``, ``Normalize`` on uint8 images is one float32 lookup table per
channel), so the service gives the same arrays to the bit without importing albumentations
(issue 27: ~30 MiB of a worker's memory; tests/worker/pipeline/test_preprocess.py holds them equal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import albumentations as A

# ImageNet statistics: both networks' encoders were trained with them (albumentations defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXEL_VALUE = 255.0
# As albumentations computes them: float32 mean * 255 and reciprocal of float32 std * 255.
_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32) * MAX_PIXEL_VALUE
_SCALE = np.reciprocal(np.array(IMAGENET_STD, dtype=np.float32) * MAX_PIXEL_VALUE)
# uint8 images: (value - mean) * scale for every value, per channel (3, 256) float32.
_LUTS = (np.arange(256, dtype=np.float32) - _MEAN.reshape(-1, 1)) * _SCALE.reshape(-1, 1)


def network_transform(size: int) -> A.Compose:
    """The original's preprocessing as an albumentations transform (training applies it with
    its masks): squash to size x size, ImageNet mean/std."""
    import albumentations as A

    return A.Compose([A.Resize(size, size), A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                                        max_pixel_value=MAX_PIXEL_VALUE)])


def network_input(image: np.ndarray, size: int) -> np.ndarray:
    """One (H, W, 3) image as (size, size, 3) float32 NHWC, ready to stack into a batch:
    ``network_transform(size)``'s result, computed without albumentations."""
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    if image.dtype == np.uint8:
        return cv2.merge([cv2.LUT(image[:, :, channel], _LUTS[channel]) for channel in range(3)])
    return (image.astype(np.float32) - _MEAN) * _SCALE


def network_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """(N, size, size, 3) float32 NHWC host array, ready for any backend."""
    return np.stack([network_input(image, size) for image in images]).astype(np.float32, copy=False)
