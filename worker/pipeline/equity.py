"""Equity Engine: skin tone as ITA (Individual Typology Angle) from the skin around the lesion.

ITA = atan((L* - 50) / b*) in degrees, from the mean CIELAB L* and b* of skin pixels. Skin
pixels are those outside the lesion *and* outside a margin around it, so the lesion's blurred
rim and surrounding halo do not darken the estimate (the original averaged every non-lesion
pixel). Groups and the bias warning follow the original (rules in shared.clinical): darker
skin (ITA <= 10 degrees) is under-represented in ISIC training data, so predictions there
deserve extra scrutiny.
"""

import math
from dataclasses import dataclass

import cv2
import numpy as np

from shared.clinical import BIAS_WARNING_MAX_ITA, bias_warning, skin_group
from worker.pipeline.colour import lightness_and_b_star

__all__ = ["BIAS_WARNING_MAX_ITA", "SkinTone", "estimate_skin_tone", "ita_from_lab", "skin_group", "skin_pixels"]

_MARGIN_FRACTION = 0.03  # of the frame's longer side
_MIN_SKIN_PIXELS = 64


@dataclass(frozen=True)
class SkinTone:
    ita_degrees: float
    skin_group: str
    bias_warning: bool

    def as_dict(self) -> dict:
        return {"ita_degrees": self.ita_degrees, "skin_group": self.skin_group, "bias_warning": self.bias_warning}


def ita_from_lab(lightness: float, b_star: float) -> float:
    # Skin always has b* > 0; the floor only keeps a degenerate grey image from dividing by 0.
    return math.degrees(math.atan((lightness - 50.0) / max(b_star, 1e-6)))


def skin_pixels(mask: np.ndarray, margin_px: int | None = None) -> np.ndarray:
    """Boolean map of skin: outside the lesion dilated by a margin (shrunk if nothing is left)."""
    mask = mask.astype(np.uint8)
    margin = margin_px if margin_px is not None else max(2, round(_MARGIN_FRACTION * max(mask.shape)))
    while margin > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
        skin = cv2.dilate(mask, kernel) == 0
        if skin.sum() >= _MIN_SKIN_PIXELS:
            return skin
        margin //= 2
    skin = mask == 0
    if skin.sum() >= _MIN_SKIN_PIXELS:
        return skin
    # The lesion fills the frame: the outermost ring of pixels is the best skin guess left.
    ring = np.zeros_like(skin)
    ring[[0, -1], :] = True
    ring[:, [0, -1]] = True
    return ring


def estimate_skin_tone(image: np.ndarray, mask: np.ndarray, margin_px: int | None = None) -> SkinTone:
    skin = skin_pixels(mask, margin_px)
    lightness, b_star = lightness_and_b_star(image[skin])
    ita = ita_from_lab(float(lightness.mean()), float(b_star.mean()))
    return SkinTone(ita_degrees=ita, skin_group=skin_group(ita), bias_warning=bias_warning(ita))
