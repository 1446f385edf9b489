"""Gate 2 with deterministic test-time augmentation over the dihedral group D4.

The original built 4 random views per image on the CPU (random flips, rotations, brightness),
so the same image gave a different probability on every call. Here the views are fixed
members of D4 applied to the already-preprocessed tensor on the device: the same image and
model always give the same probabilities, and nothing is re-decoded or re-resized.

torch is imported where a tensor is made: the OpenVINO backend uses the numpy views only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

# Order matters: TTA_VIEWS = k uses the first k. Identity first so one view is the plain image.
# (Tensor methods, the same operations as torch.flip / torch.rot90: no torch import here.)
DIHEDRAL_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(dims=(-1,)),
    "vflip": lambda x: x.flip(dims=(-2,)),
    "rot90": lambda x: x.rot90(1, dims=(-2, -1)),
    "rot180": lambda x: x.rot90(2, dims=(-2, -1)),
    "rot270": lambda x: x.rot90(3, dims=(-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
    "antitranspose": lambda x: x.rot90(2, dims=(-2, -1)).transpose(-2, -1),
}
MAX_VIEWS = len(DIHEDRAL_VIEWS)
# The same views on numpy (N, C, H, W) arrays, for backends that take host arrays.
NUMPY_VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x[..., ::-1],
    "vflip": lambda x: x[..., ::-1, :],
    "rot90": lambda x: np.rot90(x, 1, axes=(-2, -1)),
    "rot180": lambda x: np.rot90(x, 2, axes=(-2, -1)),
    "rot270": lambda x: np.rot90(x, 3, axes=(-2, -1)),
    "transpose": lambda x: x.swapaxes(-2, -1),
    "antitranspose": lambda x: np.rot90(x, 2, axes=(-2, -1)).swapaxes(-2, -1),
}


def view_names(count: int) -> list[str]:
    if not 1 <= count <= MAX_VIEWS:
        raise ValueError(f"TTA views must be between 1 and {MAX_VIEWS}, not {count}")
    return list(DIHEDRAL_VIEWS)[:count]


def expand_views(images: torch.Tensor, count: int) -> torch.Tensor:
    """(N, C, H, W) -> (N * count, C, H, W), item-major: rows i*count .. i*count+count-1 are item i."""
    import torch

    views = [DIHEDRAL_VIEWS[name](images) for name in view_names(count)]
    expanded = torch.stack(views, dim=1).flatten(0, 1)
    return expanded.contiguous(memory_format=torch.channels_last)


def expand_views_numpy(images: np.ndarray, count: int) -> np.ndarray:
    """``expand_views`` on a numpy (N, C, H, W) array (any strides): contiguous float32 output."""
    views = [NUMPY_VIEWS[name](images) for name in view_names(count)]
    stacked = np.stack(views, axis=1).astype(np.float32, copy=False)
    return stacked.reshape((-1,) + stacked.shape[2:])


def classify_with_tta(
    fusion: nn.Module, images: torch.Tensor, metadata: torch.Tensor, views: int, max_batch: int
) -> np.ndarray:
    """Melanoma probability of every view: (N, views) float64.

    All N x views inputs go through the network as one batch, split only when larger than
    ``max_batch`` to bound device memory.
    """
    import torch

    with torch.inference_mode():
        repeated_metadata = metadata.repeat_interleave(views, dim=0)
        logits = []
        total = images.shape[0] * views
        for start in range(0, total, max_batch):
            end = min(total, start + max_batch)
            # Views are built per forward pass, only for the images it covers, so host/device
            # memory follows max_batch rather than N x views.
            first, last = start // views, -(-end // views)
            expanded = expand_views(images[first:last], views)[start - first * views : end - first * views]
            logits.append(fusion(expanded, repeated_metadata[start:end]))
        probabilities = torch.sigmoid(torch.cat(logits)[:, 0].float())
    return probabilities.double().cpu().numpy().reshape(images.shape[0], views)
