"""The networks' inputs without albumentations are the albumentations transform's, to the bit."""

import numpy as np
import pytest

from worker.pipeline.preprocess import network_batch, network_input, network_transform
from worker.pipeline.synthetic import make_lesion


@pytest.mark.parametrize(
    ("shape", "size"),
    [((240, 320), 128), ((480, 640), 256), ((128, 128), 128), ((50, 70), 96), ((333, 301), 64)],
)
def test_network_input_is_the_albumentations_transform_bit_for_bit(shape, size):
    rng = np.random.default_rng(size)
    pictures = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8), make_lesion(3, shape).image]
    for picture in pictures:
        expected = network_transform(size)(image=picture)["image"].astype(np.float32, copy=False)
        ours = network_input(picture, size)
        assert ours.dtype == np.float32 and ours.shape == (size, size, 3)
        np.testing.assert_array_equal(ours, expected)
    batch = network_batch(pictures, size)
    transform = network_transform(size)
    np.testing.assert_array_equal(batch, np.stack([transform(image=p)["image"] for p in pictures]))


def test_float_images_normalise_as_albumentations_does():
    picture = np.random.default_rng(0).uniform(0, 255, (40, 60, 3)).astype(np.float32)
    np.testing.assert_array_equal(network_input(picture, 32), network_transform(32)(image=picture)["image"])
