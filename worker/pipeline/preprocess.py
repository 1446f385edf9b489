"""Resize and normalise images for the networks (albumentations), as host arrays for any backend."""

import albumentations as A
import numpy as np

# ImageNet statistics: both networks' encoders were trained with them (albumentations defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def network_transform(size: int) -> A.Compose:
    """The original's preprocessing: squash to size x size, ImageNet mean/std."""
    return A.Compose([A.Resize(size, size), A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)])


def network_input(image: np.ndarray, size: int) -> np.ndarray:
    """One image as (size, size, 3) float32 NHWC, ready to stack into a batch."""
    return network_transform(size)(image=image)["image"].astype(np.float32, copy=False)


def network_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """(N, size, size, 3) float32 NHWC host array, ready for any backend."""
    transform = network_transform(size)
    return np.stack([transform(image=image)["image"] for image in images]).astype(np.float32, copy=False)
