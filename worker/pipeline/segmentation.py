"""Gate 1: lesion masks at SEG_SIZE x SEG_SIZE, from the Scalpel U-Net or a classical segmenter.

Each segmenter turns a decoded image (any size) into its input on the host
(``network_input``, run off the network thread), and a list of inputs into one boolean mask
per image on the squashed SEG_SIZE x SEG_SIZE grid (``segment``); the pipeline maps masks back
to each image's own aspect ratio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
from scipy import ndimage

from worker.pipeline.abcd import largest_component
from worker.pipeline.colour import srgb_to_lab
from worker.pipeline.preprocess import network_input

if TYPE_CHECKING:
    from worker.pipeline.backends import NetworkBackend

MASK_THRESHOLD = 0.5
# Below this colour difference (CIELAB delta E) between the candidate lesion and the skin, the
# classical segmenter reports no lesion rather than outlining skin texture.
MIN_LESION_CONTRAST = 8.0


class Segmenter(Protocol):
    kind: str

    def network_input(self, image: np.ndarray) -> np.ndarray: ...

    def segment(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...


class UnetSegmenter:
    """Scalpel on the backend: the batch in as few forward passes as the memory budget allows;
    sigmoid > 0.5 is lesion (as the original)."""

    kind = "unet"

    def __init__(self, backend: NetworkBackend, size: int) -> None:
        self.backend = backend
        self.size = size

    def network_input(self, image: np.ndarray) -> np.ndarray:
        return network_input(image, self.size)

    def segment(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if not inputs:
            return []
        return list(self.backend.segment(np.stack(inputs)))


class ClassicalSegmenter:
    """Colour-contrast lesion segmentation for when no Scalpel checkpoint is configured.

    Hair is removed (black-hat + inpainting), each pixel's CIELAB distance from the skin colour
    (median of the image's outer ring) is thresholded with Otsu, then the largest connected
    component is kept with its holes filled. Darker-than-skin differences count fully; lighter
    ones only through chroma, so specular highlights are not taken for lesion.
    """

    kind = "classical"

    def __init__(self, size: int) -> None:
        self.size = size

    def network_input(self, image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)

    def segment(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [self.segment_one(image) for image in inputs]

    def segment_one(self, image: np.ndarray) -> np.ndarray:
        size = self.size
        small = image if image.shape[:2] == (size, size) else self.network_input(image)
        small = _remove_hair(small)
        small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(1.0, size / 256))
        lab = srgb_to_lab(small)

        ring_width = max(2, size // 20)
        ring = np.ones((size, size), dtype=bool)
        ring[ring_width:-ring_width, ring_width:-ring_width] = False
        skin_reference = np.median(lab[ring], axis=0)
        difference = lab - skin_reference
        darker = np.maximum(-difference[..., 0], 0.0)
        contrast = np.sqrt(darker**2 + difference[..., 1] ** 2 + difference[..., 2] ** 2)

        scale = max(float(np.percentile(contrast, 99.5)), 1e-6)
        contrast_u8 = np.clip(contrast / scale * 255.0, 0, 255).astype(np.uint8)
        threshold, _ = cv2.threshold(contrast_u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        candidate = contrast_u8 > threshold

        opening = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        candidate = cv2.morphologyEx(candidate.astype(np.uint8), cv2.MORPH_OPEN, opening).astype(bool)
        if not candidate.any():
            return candidate
        lesion = ndimage.binary_fill_holes(largest_component(candidate))
        closing = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
        lesion = ndimage.binary_fill_holes(cv2.morphologyEx(lesion.astype(np.uint8), cv2.MORPH_CLOSE, closing))
        if lesion.sum() == 0 or float(np.median(contrast[lesion])) < MIN_LESION_CONTRAST:
            return np.zeros((size, size), dtype=bool)
        return lesion


def make_segmenter(kind: str, backend: NetworkBackend, size: int) -> Segmenter:
    if kind == "unet":
        return UnetSegmenter(backend, size)
    return ClassicalSegmenter(size)


def _remove_hair(image: np.ndarray) -> np.ndarray:
    """DullRazor-style: thin dark lines found by a black-hat filter are inpainted over."""
    side = image.shape[0]
    kernel_size = max(3, (side // 64) | 1)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    blackhat = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, kernel)
    hair = (blackhat > 20).astype(np.uint8)
    if not hair.any():
        return image
    return cv2.inpaint(image, cv2.dilate(hair, np.ones((3, 3), np.uint8)), 3, cv2.INPAINT_TELEA)
