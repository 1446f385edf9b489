"""Model registry: Scalpel and Fusion built once per process, with provenance for every result."""

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from worker.pipeline.backends import resolve_backend
from worker.pipeline.errors import ModelConfigError
from worker.pipeline.models import FUSION_NAME, SCALPEL_NAME, CheckpointInfo, FusionNet, build_scalpel, load_checkpoint

SCALPEL_FILES = ("scalpel.pth", "best_scalpel.pth")
FUSION_FILES = ("fusion.pth", "best_fusion.pth")
SEGMENTER_CHOICES = ("auto", "unet", "classical")


@dataclass(frozen=True)
class ModelRegistry:
    """Both models in eval mode, channels_last, on one device; immutable after ``load``."""

    device: torch.device
    segmenter: str  # "unet" or "classical": which Gate 1 runs
    scalpel: nn.Module | None
    fusion: nn.Module | None  # None once an engine that holds its own copy has taken it
    scalpel_checkpoint: CheckpointInfo | None
    fusion_checkpoint: CheckpointInfo | None
    fusion_seed: int | None
    backend: str = "torch"  # "torch" or "openvino": which engine runs the networks
    precision: str = "fp32"  # "fp16"/"bf16" when the pipeline runs CUDA autocast

    @classmethod
    def load(
        cls,
        model_dir: Path | None,
        device: str = "auto",
        segmenter: str = "auto",
        seed: int = 0,
        backend: str = "auto",
    ) -> "ModelRegistry":
        if segmenter not in SEGMENTER_CHOICES:
            raise ModelConfigError(f"segmenter must be one of {', '.join(SEGMENTER_CHOICES)}, not {segmenter!r}")
        target = resolve_device(device)
        engine = resolve_backend(backend, target)
        model_dir = Path(model_dir) if model_dir is not None else None
        scalpel_path = _first_existing(model_dir, SCALPEL_FILES)
        fusion_path = _first_existing(model_dir, FUSION_FILES)

        if segmenter == "unet" and scalpel_path is None:
            raise ModelConfigError(
                f"segmenter 'unet' needs a Scalpel checkpoint ({' or '.join(SCALPEL_FILES)}) in "
                f"{model_dir if model_dir is not None else 'MODEL_DIR (not set)'}; add one or use "
                "segmenter 'auto' or 'classical'"
            )
        scalpel = scalpel_checkpoint = None
        if scalpel_path is not None and segmenter != "classical":
            scalpel = build_scalpel()
            scalpel_checkpoint = load_checkpoint(scalpel, scalpel_path)
            scalpel = _prepare(scalpel, target)

        if fusion_path is not None:
            fusion = FusionNet()
            fusion_checkpoint = load_checkpoint(fusion, fusion_path)
            fusion_seed = None
        else:
            # Seeded so that untrained results are at least reproducible across processes,
            # without touching the caller's global RNG state.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                fusion = FusionNet()
            fusion_checkpoint = None
            fusion_seed = seed
        return cls(
            device=target,
            segmenter="unet" if scalpel is not None else "classical",
            scalpel=scalpel,
            fusion=_prepare(fusion, target),
            scalpel_checkpoint=scalpel_checkpoint,
            fusion_checkpoint=fusion_checkpoint,
            fusion_seed=fusion_seed,
            backend=engine,
        )

    @property
    def backend_name(self) -> str:
        """Provenance name of the engine: torch-cpu, torch-cuda or openvino-cpu."""
        return f"{self.backend}-{self.device.type}"

    def weight_keys(self) -> dict[str, str | None]:
        """What each network's weights came from, for caches of converted models."""
        return {
            "scalpel": self.scalpel_checkpoint.sha256 if self.scalpel_checkpoint else None,
            "fusion": self.fusion_checkpoint.sha256 if self.fusion_checkpoint else f"untrained-seed-{self.fusion_seed}",
        }

    def without_modules(self) -> "ModelRegistry":
        """The same provenance without the torch modules (for engines that hold their own copy)."""
        return replace(self, scalpel=None, fusion=None)

    @property
    def weights(self) -> str:
        return "trained" if self.fusion_checkpoint is not None else "untrained"

    def provenance(self) -> dict:
        scalpel = None
        if self.scalpel_checkpoint is not None:
            scalpel = {
                "name": SCALPEL_NAME,
                "version": self.scalpel_checkpoint.version,
                "sha256": self.scalpel_checkpoint.sha256,
            }
        if self.fusion_checkpoint is not None:
            fusion = {
                "name": FUSION_NAME,
                "version": self.fusion_checkpoint.version,
                "sha256": self.fusion_checkpoint.sha256,
                "seed": None,
            }
        else:
            fusion = {"name": FUSION_NAME, "version": f"untrained-seed-{self.fusion_seed}", "sha256": None, "seed": self.fusion_seed}
        return {
            "segmenter": self.segmenter,
            "weights": self.weights,
            "backend": self.backend_name,
            "precision": self.precision,
            "scalpel": scalpel,
            "fusion": fusion,
        }


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelConfigError(f"device must be auto, cpu or cuda[:N], not {device!r}") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ModelConfigError("device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'")
    if target.type not in ("cpu", "cuda"):
        raise ModelConfigError(f"device must be auto, cpu or cuda[:N], not {device!r}")
    return target


def _first_existing(model_dir: Path | None, names: tuple[str, ...]) -> Path | None:
    if model_dir is None:
        return None
    for name in names:
        if (model_dir / name).is_file():
            return model_dir / name
    return None


def _prepare(module: nn.Module, device: torch.device) -> nn.Module:
    module = module.to(device=device, memory_format=torch.channels_last).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
