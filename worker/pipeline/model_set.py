"""Model registry: Scalpel and Fusion built once per process, with provenance for every result.

torch is imported only where a torch module is built (issue 27): a CPU worker whose OpenVINO IR
is cached (``ModelSet.load(..., ir_cache_dir=...)``) learns all it needs of its checkpoints from
their bytes and the IR cache's records (``worker.pipeline.weights``) and never imports torch,
timm or segmentation-models-pytorch; the modules are built on demand if a backend must convert.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from shared.clinical import MELANOMA_THRESHOLD, UNTRAINED
from shared.model_registry import Calibration, ModelCard
from shared.schemas.analyses import Checkpoint, ModelInfo
from worker.pipeline.backends import WeightKeys, resolve_backend
from worker.pipeline.errors import ModelConfigError
from worker.pipeline.weights import (
    FUSION_NAME,
    SCALPEL_NAME,
    CheckpointInfo,
    file_sha256,
    read_checkpoint_meta,
    write_checkpoint_meta,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from shared.model_registry import ActiveModel

SCALPEL_FILES = ("scalpel.pth", "best_scalpel.pth")
FUSION_FILES = ("fusion.pth", "best_fusion.pth")
SEGMENTER_CHOICES = ("auto", "unet", "classical")


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint file chosen by the model registry (docs/MODELS.md), with what the registry
    knows about it: its row id, version, model card and calibration."""

    path: Path
    registry_id: str | None = None
    version: str | None = None
    card: dict | None = None
    threshold: float | None = None
    temperature: float | None = None

    @classmethod
    def registered(cls, model: ActiveModel, path: Path) -> ModelSource:
        """A registered model whose checkpoint is at ``path`` (``model_registry.cached_checkpoint``)."""
        return cls(path=path, registry_id=str(model.id), version=model.version, card=model.card,
                   threshold=model.threshold, temperature=model.temperature)


@dataclass(frozen=True)
class OperatingPoint:
    """How Gate 2's probability becomes a decision: temperature scaling, then the threshold;
    and the rule-out threshold below which a result may be ``routine`` (None: not calibrated,
    ``shared.clinical.disposition.DEFAULT_RULE_OUT_THRESHOLD`` applies)."""

    threshold: float = MELANOMA_THRESHOLD
    temperature: float = 1.0
    target_sensitivity: float | None = None
    chosen_on: str = "default"  # "validation" when chosen by training, "default" otherwise
    rule_out_threshold: float | None = None
    rule_out_sensitivity: float | None = None  # the sensitivity the rule-out threshold was chosen for

    @classmethod
    def from_card(
        cls, card: ModelCard | None, threshold: float | None = None, temperature: float | None = None
    ) -> OperatingPoint:
        """The card's calibration, unless the registry's row gives ``threshold``/``temperature``;
        the design's default when neither says anything. The rule-out threshold is the card's
        only (the registry's row has no column for it)."""
        calibration = (card.calibration if card is not None else None) or Calibration()
        threshold = threshold if threshold is not None else calibration.threshold
        temperature = temperature if temperature is not None else calibration.temperature
        rule_out = calibration.rule_out_threshold
        rule_out_sensitivity = calibration.rule_out_sensitivity if rule_out is not None else None
        if threshold is None and temperature is None:
            return cls(rule_out_threshold=rule_out, rule_out_sensitivity=rule_out_sensitivity)
        return cls(
            threshold=float(threshold) if threshold is not None else MELANOMA_THRESHOLD,
            temperature=float(temperature) if temperature is not None else 1.0,
            target_sensitivity=calibration.target_sensitivity,
            chosen_on=calibration.chosen_on or "validation",
            rule_out_threshold=float(rule_out) if rule_out is not None else None,
            rule_out_sensitivity=rule_out_sensitivity,
        )

    def as_dict(self) -> dict[str, float | str | None]:
        return {
            "threshold": self.threshold,
            "temperature": self.temperature,
            "target_sensitivity": self.target_sensitivity,
            "chosen_on": self.chosen_on,
            "rule_out_threshold": self.rule_out_threshold,
            "rule_out_sensitivity": self.rule_out_sensitivity,
        }


@dataclass(frozen=True)
class ModelSet:
    """Both models in eval mode, channels_last, on one device; immutable after ``load``."""

    device: Device
    segmenter: str  # "unet" or "classical": which Gate 1 runs
    scalpel: nn.Module | None  # None: classical Gate 1, released, or built on demand (``module``)
    fusion: nn.Module | None  # None once an engine that holds its own copy has taken it, or on demand
    scalpel_checkpoint: CheckpointInfo | None
    fusion_checkpoint: CheckpointInfo | None
    fusion_seed: int | None
    backend: str = "torch"  # "torch" or "openvino": which engine runs the networks
    precision: str = "fp32"  # what the networks compute in: OpenVINO fp32/bf16/int8, CUDA autocast fp16/bf16
    scalpel_source: ModelSource | None = None  # set when the model registry chose the checkpoint
    fusion_source: ModelSource | None = None
    operating_point: OperatingPoint = OperatingPoint()
    # The modules not held are built when a backend asks (``module``): a load with an IR cache
    # that described the checkpoints, for an engine that converts only on a cache miss.
    on_demand: bool = False

    @classmethod
    def load(
        cls,
        model_dir: Path | None,
        device: str = "auto",
        segmenter: str = "auto",
        seed: int = 0,
        backend: str = "auto",
        scalpel_source: ModelSource | None = None,
        fusion_source: ModelSource | None = None,
        ir_cache_dir: Path | None = None,
    ) -> ModelSet:
        """Checkpoints from ``MODEL_DIR``, unless the model registry chose one for a kind
        (``*_source``); a Fusion card's calibration is applied (temperature folded into the
        weights, threshold recorded as the operating point).

        With the OpenVINO engine and ``ir_cache_dir`` (the pipeline's IR cache), a checkpoint
        that an earlier load described there (``weights.read_checkpoint_meta``, keyed by its
        sha256) is not loaded through torch: its module is built only if the backend finds no
        cached IR to compile (``module``). Any other is loaded now, and described there."""
        if segmenter not in SEGMENTER_CHOICES:
            raise ModelConfigError(f"segmenter must be one of {', '.join(SEGMENTER_CHOICES)}, not {segmenter!r}")
        target = resolve_device(device)
        engine = resolve_backend(backend, target)
        model_dir = Path(model_dir) if model_dir is not None else None
        scalpel_path = scalpel_source.path if scalpel_source else _first_existing(model_dir, SCALPEL_FILES)
        fusion_path = fusion_source.path if fusion_source else _first_existing(model_dir, FUSION_FILES)
        cache = Path(ir_cache_dir) if ir_cache_dir is not None and engine == "openvino" else None

        if segmenter == "unet" and scalpel_path is None:
            raise ModelConfigError(
                f"segmenter 'unet' needs a Scalpel checkpoint ({' or '.join(SCALPEL_FILES)}) in "
                f"{model_dir if model_dir is not None else 'MODEL_DIR (not set)'}; add one or use "
                "segmenter 'auto' or 'classical'"
            )
        scalpel = scalpel_checkpoint = None
        if scalpel_path is not None and segmenter != "classical":
            scalpel_checkpoint = _described(scalpel_path, cache)
            if scalpel_checkpoint is None:
                scalpel, scalpel_checkpoint = _loaded("scalpel", scalpel_path, cache)
                scalpel = _prepare(scalpel, target)

        operating_point = OperatingPoint()
        fusion = None
        if fusion_path is not None:
            fusion_checkpoint = _described(fusion_path, cache)
            if fusion_checkpoint is None:
                fusion, fusion_checkpoint = _loaded("fusion", fusion_path, cache)
            fusion_seed = None
            # The registry's row wins; a file given alone is described by the card it embeds.
            card = fusion_source.card if fusion_source is not None and fusion_source.card else fusion_checkpoint.card
            operating_point = OperatingPoint.from_card(
                ModelCard.of(card),
                fusion_source.threshold if fusion_source is not None else None,
                fusion_source.temperature if fusion_source is not None else None,
            )
            _check_temperature(operating_point.temperature)
            if fusion is not None:
                fusion = _prepare(_calibrated(fusion, operating_point.temperature), target)
        else:
            fusion_checkpoint = None
            fusion_seed = seed
            if cache is None:
                fusion = _untrained_fusion(seed, target)
        return cls(
            device=target,
            segmenter="unet" if scalpel_checkpoint is not None else "classical",
            scalpel=scalpel,
            fusion=fusion,
            scalpel_checkpoint=scalpel_checkpoint,
            fusion_checkpoint=fusion_checkpoint,
            fusion_seed=fusion_seed,
            backend=engine,
            scalpel_source=scalpel_source if scalpel_checkpoint is not None else None,
            fusion_source=fusion_source,
            operating_point=operating_point,
            on_demand=cache is not None,
        )

    @property
    def backend_name(self) -> str:
        """Provenance name of the engine: torch-cpu, torch-cuda or openvino-cpu."""
        return f"{self.backend}-{self.device.type}"

    def weight_keys(self) -> WeightKeys:
        """What each network's weights came from, for caches of converted models."""
        fusion = self.fusion_checkpoint.sha256 if self.fusion_checkpoint else f"untrained-seed-{self.fusion_seed}"
        if self.operating_point.temperature != 1.0:  # folded into the weights: another graph
            fusion = f"{fusion}-t{self.operating_point.temperature!r}"
        return WeightKeys(scalpel=self.scalpel_checkpoint.sha256 if self.scalpel_checkpoint else None, fusion=fusion)

    def without_modules(self) -> ModelSet:
        """The same provenance without the torch modules (for engines that hold their own copy)."""
        return replace(self, scalpel=None, fusion=None, on_demand=False)

    @property
    def has_networks(self) -> bool:
        """Whether a backend can still be built from this registry (its modules held or buildable)."""
        return self.fusion is not None or self.on_demand

    def module(self, network: str) -> nn.Module:
        """The torch module of ``network`` (``scalpel`` or ``fusion``): the one held, else (on
        demand) built now from its checkpoint exactly as ``load`` builds it, which imports torch."""
        if network not in ("scalpel", "fusion"):
            raise ValueError(f"network must be scalpel or fusion, not {network!r}")
        held = self.scalpel if network == "scalpel" else self.fusion
        if held is not None:
            return held
        if not self.on_demand:
            raise ValueError("this registry's torch modules were released; load it again to build a backend")
        if network == "fusion" and self.fusion_checkpoint is None and self.fusion_seed is not None:
            return _untrained_fusion(self.fusion_seed, self.device)
        checkpoint = self.scalpel_checkpoint if network == "scalpel" else self.fusion_checkpoint
        if checkpoint is None:
            raise ModelConfigError(f"this registry has no {network} network")
        module, loaded = _loaded(network, checkpoint.path, None)
        if loaded.sha256 != checkpoint.sha256:
            raise ModelConfigError(f"{checkpoint.path} changed since the models were loaded (sha256 "
                                   f"{checkpoint.sha256[:12]} then, {loaded.sha256[:12]} now); restart the worker")
        if network == "fusion":
            module = _calibrated(module, self.operating_point.temperature)
        return _prepare(module, self.device)

    @property
    def fusion_card(self) -> ModelCard | None:
        """The Fusion checkpoint's card: the registry's row, else the one its training embedded;
        None for seeded untrained weights."""
        if self.fusion_checkpoint is None:
            return None
        if self.fusion_source is not None and self.fusion_source.card:
            return ModelCard.of(self.fusion_source.card)
        return ModelCard.of(self.fusion_checkpoint.card)

    @property
    def weights(self) -> str:
        """``untrained`` (seeded), ``synthetic`` (its card says it learnt from generated
        images) or ``trained``."""
        card = self.fusion_card
        return UNTRAINED if card is None else card.weights

    def provenance(self) -> ModelInfo:
        """The networks that ran, as every result records them. Only what applies is set (no
        ``threshold`` at the design's default, no ``training_data`` without a card that says),
        so ``model_dump(exclude_unset=True)`` is the provenance rows have always stored."""
        scalpel = None
        if self.scalpel_checkpoint is not None:
            scalpel = _checkpoint_provenance(SCALPEL_NAME, self.scalpel_checkpoint, self.scalpel_source)
        if self.fusion_checkpoint is not None:
            fusion = _checkpoint_provenance(FUSION_NAME, self.fusion_checkpoint, self.fusion_source)
            fusion = fusion.model_copy(update={"seed": None})
        else:
            fusion = Checkpoint(name=FUSION_NAME, version=f"untrained-seed-{self.fusion_seed}", sha256=None,
                                seed=self.fusion_seed)
        provenance = ModelInfo(
            segmenter=self.segmenter,
            weights=self.weights,
            backend=self.backend_name,
            precision=self.precision,
            scalpel=scalpel,
            fusion=fusion,
            version=fusion.version,  # the classifier's: it makes the diagnosis
            operating_point=self.operating_point.as_dict(),
        )
        if self.operating_point.chosen_on != "default":  # shared.clinical reads the threshold here
            provenance = provenance.model_copy(update={"threshold": self.operating_point.threshold})
        card = self.fusion_card
        if card is not None and card.training_data is not None:
            provenance = provenance.model_copy(update={"training_data": card.training_data.description})
        return provenance


def _checkpoint_provenance(name: str, checkpoint: CheckpointInfo, source: ModelSource | None) -> Checkpoint:
    if source is None:
        return Checkpoint(name=name, version=checkpoint.version, sha256=checkpoint.sha256)
    return Checkpoint(name=name, version=source.version or checkpoint.version, sha256=checkpoint.sha256,
                      registry_id=source.registry_id)


@dataclass(frozen=True, eq=False)
class Device:
    """Where the torch modules live (``cpu`` or ``cuda[:N]``), known without importing torch:
    ``type``, ``index`` and text as ``torch.device``, and equal to the torch.device of that text."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Device) or (hasattr(other, "type") and hasattr(other, "index")):
            return (self.type, self.index) == (other.type, other.index)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def as_torch(self) -> torch.device:
        import torch

        return torch.device(str(self))


def cuda_possible() -> bool:
    """False only where torch could not use a GPU whatever it is: no CUDA driver library
    (``libcuda.so.1``) to load and no ROCm device. ``DEVICE=auto`` then resolves to the CPU
    without importing torch (~470 MiB of RSS for the CUDA build)."""
    if Path("/dev/kfd").exists():
        return True
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def resolve_device(device: str) -> Device:
    if device == "cpu" or (device == "auto" and not cuda_possible()):
        return Device("cpu")
    import torch

    if device == "auto":
        return Device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelConfigError(f"device must be auto, cpu or cuda[:N], not {device!r}") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ModelConfigError("device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'")
    if target.type not in ("cpu", "cuda"):
        raise ModelConfigError(f"device must be auto, cpu or cuda[:N], not {device!r}")
    return Device(target.type, target.index)


def _first_existing(model_dir: Path | None, names: tuple[str, ...]) -> Path | None:
    if model_dir is None:
        return None
    for name in names:
        if (model_dir / name).is_file():
            return model_dir / name
    return None


def _described(path: Path, cache: Path | None) -> CheckpointInfo | None:
    """The checkpoint as an earlier torch load recorded it in the IR cache (no torch), if it did."""
    if cache is None:
        return None
    return read_checkpoint_meta(cache, Path(path), file_sha256(Path(path)))


def _loaded(network: str, path: Path, cache: Path | None) -> tuple[nn.Module, CheckpointInfo]:
    """A fresh module of ``network`` with the checkpoint at ``path`` loaded (through torch), the
    checkpoint then recorded in ``cache`` for later starts."""
    from worker.pipeline.networks import FusionNet, build_scalpel, load_checkpoint

    module = build_scalpel() if network == "scalpel" else FusionNet()
    info = load_checkpoint(module, path)
    if cache is not None:
        write_checkpoint_meta(cache, info)
    return module, info


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ModelConfigError(f"temperature must be positive, not {temperature}")


def _calibrated(fusion: nn.Module, temperature: float) -> nn.Module:
    from worker.pipeline.networks import FusionNet, apply_temperature

    assert isinstance(fusion, FusionNet)
    apply_temperature(fusion, temperature)
    return fusion


def _untrained_fusion(seed: int, device: Device) -> nn.Module:
    """Seeded so that untrained results are at least reproducible across processes, without
    touching the caller's global RNG state."""
    import torch

    from worker.pipeline.networks import FusionNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fusion = FusionNet()
    return _prepare(fusion, device)


def _prepare(module: nn.Module, device: Device) -> nn.Module:
    import torch

    # Two steps: torch's signatures have no single form with both (the result is the same).
    module = module.to(device=device.as_torch()).to(memory_format=torch.channels_last).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
