"""Resize and normalise images for the networks (albumentations), and batch them on the device."""

import albumentations as A
import numpy as np
import torch

# ImageNet statistics: both networks' encoders were trained with them (albumentations defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def network_transform(size: int) -> A.Compose:
    """The original's preprocessing: squash to size x size, ImageNet mean/std."""
    return A.Compose([A.Resize(size, size), A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)])


def to_device_batch(images: list[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """(N, 3, size, size) float32 channels_last tensor on ``device``.

    Stacking NHWC arrays and permuting gives channels_last memory without a copy, so the only
    transfer is one contiguous block per batch.
    """
    transform = network_transform(size)
    stacked = np.stack([transform(image=image)["image"] for image in images]).astype(np.float32, copy=False)
    batch = torch.from_numpy(stacked).permute(0, 3, 1, 2)
    return batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
