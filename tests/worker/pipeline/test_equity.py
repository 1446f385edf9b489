"""Item 8: ITA from the skin around the lesion, groups and the bias warning."""

import math

import cv2
import numpy as np
import pytest

from worker.pipeline.colour import lab_to_srgb, srgb_to_lab
from worker.pipeline.equity import estimate_skin_tone, skin_group
from worker.pipeline.synthetic import make_lesion


def _skin_with_lesion(lightness, b_star, halo=True, shape=(300, 400)):
    """Flat skin of known L*, b*; a dark lesion; a dark 4-px halo hugging it outside the mask."""
    rgb = np.rint(lab_to_srgb(np.array([lightness, 12.0, b_star])) * 255).astype(np.uint8)
    image = np.empty(shape + (3,), np.uint8)
    image[...] = rgb
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, (200, 150), 70, 1, -1)
    if halo:
        cv2.circle(image, (200, 150), 74, (60, 40, 30), -1)
    image[mask.astype(bool)] = (50, 30, 20)
    return image, mask.astype(bool)


@pytest.mark.parametrize("lightness, b_star", [(80, 15), (68, 18), (58, 20), (48, 22), (38, 18), (28, 14)])
def test_ita_within_one_degree_of_the_known_skin(lightness, b_star):
    image, mask = _skin_with_lesion(lightness, b_star)
    true_ita = math.degrees(math.atan((lightness - 50) / b_star))
    tone = estimate_skin_tone(image, mask)
    assert tone.ita_degrees == pytest.approx(true_ita, abs=1.0)
    assert tone.skin_group == skin_group(true_ita)


def test_the_margin_keeps_the_lesion_rim_out_of_the_estimate():
    image, mask = _skin_with_lesion(68, 18)
    true_ita = math.degrees(math.atan(18 / 18))
    lab = srgb_to_lab(image[~mask]).mean(axis=0)  # the original: every non-lesion pixel
    original_ita = math.degrees(math.atan((lab[0] - 50) / lab[2]))
    assert abs(original_ita - true_ita) > 1.0
    assert estimate_skin_tone(image, mask).ita_degrees == pytest.approx(true_ita, abs=1.0)


@pytest.mark.parametrize(
    "ita, group",
    [(70, "very light"), (55.01, "very light"), (55, "light"), (41.01, "light"), (41, "intermediate"),
     (28, "tan"), (10.01, "tan"), (10, "brown"), (-29.99, "brown"), (-30, "dark"), (-70, "dark")],
)
def test_groups_follow_the_original_cut_offs(ita, group):
    assert skin_group(ita) == group


@pytest.mark.parametrize("ita, warning", [(60, False), (35, False), (15, False), (5, True), (-20, True), (-45, True)])
def test_bias_warning_for_darker_skin(ita, warning):
    lightness = 50 + 20 * math.tan(math.radians(ita))
    image, mask = _skin_with_lesion(lightness, 20, halo=False)
    tone = estimate_skin_tone(image, mask)
    assert tone.bias_warning is warning
    assert tone.skin_group == skin_group(ita)


@pytest.mark.parametrize("ita", [-50.0, -10.0, 20.0, 35.0, 50.0, 70.0])
def test_synthetic_lesions_on_every_skin_tone(ita):
    lesion = make_lesion(9, (256, 256), ita=ita, irregularity=0.4, variegation=0.5, hair=False)
    tone = estimate_skin_tone(lesion.image, lesion.mask)
    assert tone.ita_degrees == pytest.approx(lesion.params["ita"], abs=1.0)
    assert tone.bias_warning is (lesion.params["ita"] <= 10)


def test_lesion_filling_the_frame_still_gives_a_finite_ita():
    lesion = make_lesion(1, (128, 128), radius_frac=0.7)
    tone = estimate_skin_tone(lesion.image, lesion.mask)
    assert math.isfinite(tone.ita_degrees)
