"""Synthetic dermoscopy-like lesions with known ground truth, for tests, demos and benchmarks.

``make_lesion`` paints skin of a chosen ITA (Individual Typology Angle), one pigmented lesion
of chosen size, shape irregularity and colour variegation, optional hair and blur, and returns
the image with its true mask and true parameters. The same arguments always give the same
pixels. Imports neither torch nor anything else heavy.
"""

import io
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from worker.pipeline.abcd import max_feret_diameter
from worker.pipeline.colour import lab_to_srgb

_SKIN_B_STAR = 18.0
_SKIN_A_STAR = 11.0
_NOISE_STD = 6.0  # sensor-like per-pixel noise, in 8-bit RGB units


@dataclass(frozen=True)
class SyntheticLesion:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool, the true lesion
    params: dict = field(default_factory=dict)


def skin_lab_for_ita(ita: float) -> tuple[float, float, float]:
    """A plausible (L*, a*, b*) whose ITA is ``ita`` degrees; b* is relaxed at the extremes."""
    slope = math.tan(math.radians(ita))
    b_star = _SKIN_B_STAR
    lightness = 50.0 + b_star * slope
    if not 20.0 <= lightness <= 88.0:
        lightness = float(np.clip(lightness, 20.0, 88.0))
        b_star = (lightness - 50.0) / slope
    return lightness, _SKIN_A_STAR, b_star


def make_lesion(
    seed: int,
    size: tuple[int, int] = (512, 512),
    ita: float = 40.0,
    radius_frac: float = 0.2,
    irregularity: float = 0.0,
    variegation: float = 0.0,
    hair: bool = False,
    blur: float = 0.0,
    center: tuple[float, float] | None = None,
) -> SyntheticLesion:
    """Render one lesion on skin.

    ``radius_frac`` is the mean lesion radius as a fraction of the shorter image side;
    ``irregularity`` (0..1) modulates the radius with random harmonics (0 gives a disk);
    ``variegation`` (0..1) is how much of the lesion takes a second and third colour;
    ``blur`` is a Gaussian sigma in pixels; ``center`` is (row, col) in pixels, default the
    image centre.
    """
    if not (0.0 <= irregularity <= 1.0 and 0.0 <= variegation <= 1.0):
        raise ValueError("irregularity and variegation must be within 0..1")
    rng = np.random.default_rng(seed)
    height, width = size
    cy, cx = center if center is not None else ((height - 1) / 2, (width - 1) / 2)
    radius = radius_frac * min(height, width)

    skin_lab = skin_lab_for_ita(ita)
    lab = np.empty((height, width, 3))
    lab[...] = skin_lab
    lab[..., 0] += 2.0 * _smooth_field(rng, height, width, cells=8, centred=True)

    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    dy, dx = rows - cy, cols - cx
    distance = np.hypot(dy, dx)
    boundary = radius * (1.0 + irregularity * _radial_profile(rng, np.arctan2(dy, dx)))
    mask = distance < boundary

    lesion_lab = (max(10.0, skin_lab[0] * 0.5), 14.0, skin_lab[2] + 2.0)
    lesion = np.empty_like(lab)
    lesion[...] = lesion_lab
    lesion[..., 0] -= 4.0 * np.clip(1.0 - distance / np.maximum(boundary, 1e-6), 0.0, 1.0)
    if variegation > 0:
        pattern = _smooth_field(rng, height, width, cells=6, centred=False)
        blue_grey = pattern > 1.0 - 0.5 * variegation
        light_brown = pattern < 0.4 * variegation
        lesion[blue_grey] = (lesion_lab[0] - 8.0, 2.0, -8.0)
        lesion[light_brown] = (lesion_lab[0] + 12.0, 20.0, 20.0)

    edge_alpha = np.clip((boundary - distance) / 1.5 + 0.5, 0.0, 1.0)[..., None]
    rgb = lab_to_srgb(lab) * (1.0 - edge_alpha) + lab_to_srgb(lesion) * edge_alpha
    rgb = rgb * 255.0 + rng.normal(0.0, _NOISE_STD, size=rgb.shape)
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if hair:
        _draw_hair(rng, image)
    if blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=blur)

    params = {
        "seed": seed,
        "size": [height, width],
        "ita": math.degrees(math.atan((skin_lab[0] - 50.0) / skin_lab[2])),
        "skin_lab": list(skin_lab),
        "lesion_lab": list(lesion_lab),
        "center": [float(cy), float(cx)],
        "radius_px": radius,
        "irregularity": irregularity,
        "variegation": variegation,
        "hair": hair,
        "blur": blur,
        "coverage": float(mask.mean()),
        "diameter_px": max_feret_diameter(mask),
    }
    return SyntheticLesion(image=image, mask=mask, params=params)


def encode_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int, centred: bool) -> np.ndarray:
    """Low-frequency noise: zero-mean unit-ish amplitude if ``centred``, else scaled to 0..1."""
    coarse = rng.normal(size=(cells, cells)).astype(np.float32)
    field_ = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    if centred:
        return (field_ - field_.mean()) / (field_.std() + 1e-9)
    return (field_ - field_.min()) / (np.ptp(field_) + 1e-9)


def _radial_profile(rng: np.random.Generator, theta: np.ndarray) -> np.ndarray:
    """Sum of random harmonics of the polar angle, scaled to peak at +-0.5."""
    harmonics = np.arange(2, 17)
    amplitudes = rng.uniform(0.5, 1.0, size=harmonics.size) / harmonics**0.6
    phases = rng.uniform(0, 2 * math.pi, size=harmonics.size)
    dense = np.linspace(-math.pi, math.pi, 4096)
    terms = list(zip(harmonics, amplitudes, phases, strict=True))
    peak = np.abs(sum(a * np.cos(k * dense + p) for k, a, p in terms)).max()
    profile = sum(a * np.cos(k * theta + p) for k, a, p in terms)
    return 0.5 * profile / peak


def _draw_hair(rng: np.random.Generator, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    colour = tuple(int(c) for c in np.clip(lab_to_srgb(np.array([15.0, 3.0, 5.0])) * 255, 0, 255))
    for _ in range(14):
        start = rng.uniform([0, 0], [width, height])
        end = rng.uniform([0, 0], [width, height])
        bend = (start + end) / 2 + rng.normal(0, min(height, width) / 8, size=2)
        t = np.linspace(0, 1, 64)[:, None]
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end
        cv2.polylines(image, [np.rint(curve).astype(np.int32)], False, colour, thickness, cv2.LINE_AA)
