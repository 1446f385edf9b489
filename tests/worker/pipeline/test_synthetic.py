"""Item 11: the synthetic lesion generator is deterministic and honours its parameters."""

import math
import subprocess
import sys

import numpy as np
import pytest

from worker.pipeline.abcd import border_irregularity, colour_variegation
from worker.pipeline.colour import srgb_to_lab
from worker.pipeline.quality import blur_score
from worker.pipeline.synthetic import make_lesion


def test_same_seed_same_pixels_different_seed_different_pixels():
    a = make_lesion(3, (200, 300), irregularity=0.5, variegation=0.5, hair=True)
    b = make_lesion(3, (200, 300), irregularity=0.5, variegation=0.5, hair=True)
    c = make_lesion(4, (200, 300), irregularity=0.5, variegation=0.5, hair=True)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.params == b.params
    assert not np.array_equal(a.mask, c.mask)


def test_shape_size_position_and_true_parameters():
    lesion = make_lesion(0, (300, 400), radius_frac=0.2, center=(100.0, 250.0))
    assert lesion.image.shape == (300, 400, 3) and lesion.image.dtype == np.uint8
    assert lesion.mask.shape == (300, 400) and lesion.mask.dtype == bool
    rows, cols = np.nonzero(lesion.mask)
    assert abs(rows.mean() - 100) < 1 and abs(cols.mean() - 250) < 1
    radius = 0.2 * 300
    assert lesion.mask.sum() == pytest.approx(math.pi * radius**2, rel=0.02)
    assert lesion.params["coverage"] == pytest.approx(lesion.mask.mean())
    assert lesion.params["diameter_px"] == pytest.approx(2 * radius, abs=2)
    assert lesion.params["center"] == [100.0, 250.0]


def test_irregularity_and_variegation_show_in_the_drawing():
    regular, irregular = make_lesion(1), make_lesion(1, irregularity=0.8)
    assert border_irregularity(regular.mask) < 0.02 < 0.15 < border_irregularity(irregular.mask)
    plain, varied = make_lesion(1), make_lesion(1, variegation=0.8)
    assert colour_variegation(varied.image, varied.mask) > 3 * colour_variegation(plain.image, plain.mask)


@pytest.mark.parametrize("ita", [-45.0, 5.0, 30.0, 60.0])
def test_skin_has_the_requested_ita(ita):
    lesion = make_lesion(2, (200, 200), ita=ita, radius_frac=0.1)
    lab = srgb_to_lab(lesion.image[:20, :20].reshape(-1, 3)).mean(axis=0)
    measured = math.degrees(math.atan((lab[0] - 50) / lab[2]))
    assert lesion.params["ita"] == pytest.approx(ita, abs=1e-6)
    assert measured == pytest.approx(ita, abs=1.5)


def test_hair_and_blur_options():
    clean, hairy = make_lesion(5, (256, 256)), make_lesion(5, (256, 256), hair=True)
    dark_pixels = lambda img: (img.mean(axis=2) < 50).sum()  # noqa: E731
    assert dark_pixels(hairy.image) > dark_pixels(clean.image) + 500
    np.testing.assert_array_equal(clean.mask, hairy.mask)
    assert blur_score(make_lesion(5, (256, 256), blur=2.0).image) < blur_score(clean.image) / 10


def test_generator_imports_without_torch():
    code = "import sys, worker.pipeline.synthetic; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
