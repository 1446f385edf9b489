"""Item 7: ABCD concepts on drawn shapes with known answers."""

import cv2
import numpy as np
import pytest

from worker.pipeline.abcd import (
    asymmetry,
    border_irregularity,
    colour_variegation,
    compute_concepts,
    max_feret_diameter,
)

SHAPE = (400, 500)


def disk(center, radius):
    mask = np.zeros(SHAPE, np.uint8)
    cv2.circle(mask, center, radius, 1, -1)
    return mask.astype(bool)


def ellipse(center, axes, angle):
    mask = np.zeros(SHAPE, np.uint8)
    cv2.ellipse(mask, center, axes, angle, 0, 360, 1, -1)
    return mask.astype(bool)


def irregular_star(center, seed, points=9):
    rng = np.random.default_rng(seed)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 2 * points))
    radii = np.where(np.arange(2 * points) % 2 == 0, rng.uniform(80, 120, 2 * points), rng.uniform(25, 50, 2 * points))
    polygon = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)
    mask = np.zeros(SHAPE, np.uint8)
    cv2.fillPoly(mask, [polygon.astype(np.int32)], 1)
    return mask.astype(bool)


def original_asymmetry(mask):
    """The original's measure: mirror (rotate 180 degrees) about the image centre."""
    rotated = np.rot90(mask, 2)
    return 1 - (mask & rotated).sum() / (mask | rotated).sum()


@pytest.mark.parametrize(
    "mask",
    [
        disk((250, 200), 90), disk((70, 60), 45), disk((440, 330), 50),
        ellipse((300, 120), (110, 45), 30), ellipse((120, 280), (60, 25), -70),
    ],
    ids=["centred-disk", "corner-disk", "other-corner-disk", "tilted-ellipse", "small-ellipse"],
)
def test_disks_and_ellipses_anywhere_are_symmetric_and_smooth(mask):
    assert asymmetry(mask) < 0.03
    assert border_irregularity(mask) < 0.03


def test_position_no_longer_fakes_asymmetry():
    off_centre = disk((70, 60), 45)
    assert original_asymmetry(off_centre) > 0.9  # the original's weakness
    assert asymmetry(off_centre) < 0.03


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_irregular_stars_score_clearly_higher(seed):
    star = irregular_star((250, 200), seed)
    assert asymmetry(star) > 0.2
    assert border_irregularity(star) > 0.3


def test_scores_rise_with_irregularity():
    smooth, wobbly, spiky = ellipse((250, 200), (100, 70), 10), None, irregular_star((250, 200), 4)
    wobbly = smooth.copy()
    cv2.circle(wobbly.view(np.uint8), (340, 200), 40, 0, -1)  # a bite out of one side
    assert border_irregularity(smooth) < border_irregularity(wobbly) < border_irregularity(spiky)
    assert asymmetry(smooth) < asymmetry(wobbly)


def _painted(mask, colours, noise=6.0, seed=0):
    rng = np.random.default_rng(seed)
    image = np.empty(SHAPE + (3,), np.float64)
    image[...] = (200, 160, 140)
    lesion_colour = np.zeros(SHAPE + (3,))
    lesion_colour[...] = colours[0]
    if len(colours) > 1:
        lesion_colour[:, SHAPE[1] // 2 :] = colours[1]
    image[mask] = lesion_colour[mask]
    return np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)


def test_single_colour_lesion_scores_near_zero_colour():
    mask = disk((250, 200), 100)
    assert colour_variegation(_painted(mask, [(90, 60, 45)]), mask) < 0.05


def test_two_tone_lesion_scores_high_colour():
    mask = disk((250, 200), 100)
    single = colour_variegation(_painted(mask, [(90, 60, 45)]), mask)
    two_tone = colour_variegation(_painted(mask, [(90, 60, 45), (40, 40, 70)]), mask)
    # Half brown, half blue-grey: channel stds 25, 10, 12.5 -> 15.8 / 60.
    assert two_tone == pytest.approx(0.26, abs=0.03)
    assert two_tone > 5 * single


def test_diameter_in_pixels_and_millimetres():
    assert max_feret_diameter(disk((250, 200), 60)) == pytest.approx(121, abs=2)
    assert max_feret_diameter(ellipse((250, 200), (110, 40), 35)) == pytest.approx(221, abs=2)
    mask = disk((250, 200), 60)
    image = _painted(mask, [(90, 60, 45)])
    # The frame is a half-size copy of the upload: diameters come back in upload pixels.
    concepts = compute_concepts(image, mask, pixels_per_input_pixel=0.5, pixel_spacing_mm=0.02)
    assert concepts.diameter_px == pytest.approx(242, abs=4)
    assert concepts.diameter_mm == pytest.approx(concepts.diameter_px * 0.02)
    assert compute_concepts(image, mask).diameter_mm is None


def test_concepts_use_the_largest_component_only():
    mask = disk((250, 200), 60) | disk((30, 30), 8)
    assert compute_concepts(_painted(mask, [(90, 60, 45)]), mask).asymmetry < 0.03
