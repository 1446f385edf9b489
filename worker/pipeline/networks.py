"""Scalpel and Fusion network definitions and checkpoint loading.

Submodule names match the original training code, so its ``best_scalpel.pth`` and
``best_fusion.pth`` load unchanged. Weights are never downloaded. This module is torch itself:
a worker whose OpenVINO IR is cached never imports it (``worker.pipeline.weights`` holds what it
needs of a checkpoint).
"""

from pathlib import Path

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from worker.pipeline.errors import CheckpointMismatchError, ModelConfigError
from worker.pipeline.metadata import METADATA_SIZE
from worker.pipeline.weights import (  # re-exported: their home before issue 27
    FUSION_NAME,
    SCALPEL_NAME,
    CheckpointInfo,
    file_sha256,
    unreadable_checkpoint,
)

__all__ = ["FUSION_NAME", "SCALPEL_NAME", "CheckpointInfo", "FusionNet", "apply_temperature", "build_scalpel",
           "file_sha256", "load_checkpoint", "unreadable_checkpoint"]

IMAGE_FEATURES = 1536
META_FEATURES = 32
# Key prefixes that wrappers add when a whole model is saved (the original's "model.",
# DataParallel's "module.").
_WRAPPER_PREFIXES = ("model.", "module.")


def build_scalpel() -> nn.Module:
    """Gate 1: U-Net with a ResNet-34 encoder, one lesion-logit channel."""
    return smp.Unet(encoder_name="resnet34", encoder_weights=None, in_channels=3, classes=1)


class FusionNet(nn.Module):
    """Gate 2: EfficientNet-B3 image features (``eye``) + metadata MLP (``brain``) -> ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.eye = timm.create_model("tf_efficientnet_b3", pretrained=False, num_classes=0)
        self.brain = nn.Sequential(
            nn.Linear(METADATA_SIZE, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(64, META_FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Linear(IMAGE_FEATURES + META_FEATURES, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Dropout(0.4),
            nn.Linear(512, 1),
        )

    def forward(self, image: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.eye(image), self.brain(metadata)], dim=1))


def load_checkpoint(module: nn.Module, path: Path) -> CheckpointInfo:
    """Load ``path`` into ``module`` exactly, or raise naming every key that does not fit.

    Accepts a bare state_dict or one nested under ``model_state_dict`` (or ``state_dict``),
    with or without a leading ``model.``/``module.`` on every key. The version is the
    checkpoint's own ``version`` entry when it has one, else derived from its hash.
    """
    path = Path(path)
    sha256 = file_sha256(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many unrelated types for unreadable files
        raise ModelConfigError(unreadable_checkpoint(path, exc)) from exc
    state_dict = _unwrap(payload, path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{key} (checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)})"
        for key in set(expected) & set(state_dict)
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(str(path), missing, unexpected, mismatched)
    module.load_state_dict(state_dict, strict=True)
    version = payload.get("version") if isinstance(payload, dict) else None
    card = payload.get("model_card") if isinstance(payload, dict) else None
    return CheckpointInfo(
        path=path, sha256=sha256, version=str(version) if version else f"sha256-{sha256[:12]}",
        card=card if isinstance(card, dict) else None,
    )


def apply_temperature(fusion: FusionNet, temperature: float) -> None:
    """Fold temperature scaling into the last layer: logits / T with no extra work per image.
    Every backend (and a converted OpenVINO graph) then gives calibrated probabilities."""
    if temperature <= 0:
        raise ModelConfigError(f"temperature must be positive, not {temperature}")
    if temperature == 1.0:
        return
    last = fusion.head[-1]
    if not isinstance(last, nn.Linear):
        raise ModelConfigError(f"Fusion's last layer is {type(last).__name__}, not Linear: no temperature to fold in")
    with torch.no_grad():
        last.weight.div_(temperature)
        last.bias.div_(temperature)


def _unwrap(payload: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict):
        for nested in ("model_state_dict", "state_dict"):
            if isinstance(payload.get(nested), dict):
                payload = payload[nested]
                break
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ModelConfigError(f"checkpoint {path} holds no state_dict of tensors")
    for prefix in _WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in payload):
            payload = {key[len(prefix) :]: value for key, value in payload.items()}
    return payload
