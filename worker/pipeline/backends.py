"""Gate 1 and Gate 2 networks behind one small interface: torch (CPU, CUDA) or OpenVINO (CPU).

Both backends take host-prepared batches (NHWC float32, already resized and normalised, see
``preprocess.network_batch``) and return numpy: boolean lesion masks from Gate 1 and per-view
melanoma probabilities from Gate 2. Everything else in the pipeline is the same whichever
backend runs, so switching backend changes only ``model.backend`` and the last bits of the
network outputs.

OpenVINO models are converted in-process from the loaded torch modules (nothing is
downloaded) and cached as IR under ``DATA_DIR/engine``, keyed by what determines the graph and
its weights (see ``ir_cache_key``), so a restarted worker compiles the cached IR without
converting again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from worker.pipeline.errors import ModelConfigError
from worker.pipeline.metadata import METADATA_SIZE
from worker.pipeline.tta import classify_with_tta, expand_views_numpy

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "torch", "openvino")
AUTOCAST_CHOICES = ("off", "fp16", "bf16")
# Bump when the conversion itself changes (pre/post-processing baked into the IR, input names).
IR_FORMAT = 1
# Gate 1 activation bytes per input pixel, U-Net r34 forward in fp32 (peak minus weights,
# measured on CPU at 128..512: ~110 bytes per pixel); halved under fp16/bf16 autocast.
GATE1_BYTES_PER_PIXEL = 110


class NetworkBackend(Protocol):
    name: str  # provenance: "torch-cpu", "torch-cuda", "openvino-cpu"

    def segment(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 -> (N, S, S) bool lesion masks."""
        ...

    def classify(self, batch: np.ndarray, metadata: np.ndarray, views: int, max_batch: int) -> np.ndarray:
        """(N, C, C, 3) float32 images, (N, M) float32 metadata -> (N, views) float64 probabilities."""
        ...


class WeightKeys(NamedTuple):
    """What each network's weights came from: the key of its converted-model cache entry."""

    scalpel: str | None  # None: no Scalpel (classical Gate 1)
    fusion: str


@dataclass(frozen=True)
class EngineOptions:
    autocast: str = "off"  # CUDA only: fp16 or bf16 autocast for both networks
    gate1_memory_mb: int = 2048  # Gate 1 activations per forward pass (chunks bigger batches)
    cache_dir: Path | None = None  # OpenVINO IR cache; None converts in memory every start

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_CHOICES:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_CHOICES)}, not {self.autocast!r}")
        if self.gate1_memory_mb <= 0:
            raise ValueError("gate1_memory_mb must be positive")


def resolve_backend(choice: str, device: torch.device) -> str:
    """``torch`` or ``openvino``: auto is torch on CUDA, OpenVINO on CPU."""
    if choice not in BACKEND_CHOICES:
        raise ModelConfigError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, not {choice!r}")
    if choice == "auto":
        return "torch" if device.type == "cuda" else "openvino"
    if choice == "openvino" and device.type != "cpu":
        raise ModelConfigError("backend 'openvino' runs on the CPU; use device 'cpu' (or backend 'torch' on CUDA)")
    return choice


def gate1_chunk(seg_size: int, memory_mb: int, autocast: str = "off") -> int:
    """How many Gate 1 images one forward pass may hold within ``memory_mb`` of activations."""
    per_image = seg_size * seg_size * GATE1_BYTES_PER_PIXEL / (2 if autocast != "off" else 1)
    return max(1, int(memory_mb * 2**20 // per_image))


class TorchBackend:
    """Eager torch: channels_last, inference_mode; on CUDA pinned host memory, non-blocking
    copies, cudnn.benchmark and optional fp16/bf16 autocast."""

    def __init__(
        self, scalpel: nn.Module | None, fusion: nn.Module, device: torch.device, seg_size: int, options: EngineOptions
    ) -> None:
        self.scalpel = scalpel
        self.fusion = fusion
        self.device = device
        self.name = f"torch-{device.type}"
        self.cuda = device.type == "cuda"
        self.autocast = options.autocast if self.cuda else "off"
        self.gate1_max_batch = gate1_chunk(seg_size, options.gate1_memory_mb, self.autocast)
        if self.cuda:
            # Fixed input shapes: let cuDNN pick the fastest kernels once per shape.
            torch.backends.cudnn.benchmark = True

    def to_device(self, batch: np.ndarray) -> torch.Tensor:
        """NHWC host array -> NCHW channels_last tensor on the device (a view, no extra copy)."""
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.cuda:
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.autocast == "off":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.autocast == "fp16" else torch.bfloat16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def segment(self, batch: np.ndarray) -> np.ndarray:
        if self.scalpel is None:
            raise ModelConfigError("this backend has no Scalpel network (classical Gate 1)")
        masks = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(batch), self.gate1_max_batch):
                logits = self.scalpel(self.to_device(batch[start : start + self.gate1_max_batch]))
                masks.append((torch.sigmoid(logits.float())[:, 0] > 0.5).cpu().numpy())
        return np.concatenate(masks) if masks else np.zeros((0,) + batch.shape[1:3], dtype=bool)

    def classify(self, batch: np.ndarray, metadata: np.ndarray, views: int, max_batch: int) -> np.ndarray:
        images = self.to_device(batch)
        meta = torch.from_numpy(np.ascontiguousarray(metadata, dtype=np.float32)).to(self.device, non_blocking=True)
        with self._autocast():
            return classify_with_tta(self.fusion, images, meta, views, max_batch)


class OpenVinoBackend:
    """OpenVINO on the CPU, fp32 inference precision (bf16-capable CPUs would otherwise
    default to bf16 and drift from the torch results).

    Both networks are compiled for one input per pass (static shapes): on the CPU that is as
    fast per image as five per pass, and the activation memory is ~400 MB smaller at 512, which
    keeps a worker holding both models under 1.5 GB. The cached IR keeps a dynamic batch; the
    static shape is applied at load time.
    """

    name = "openvino-cpu"
    PASS = 1  # inputs per forward pass

    def __init__(self, scalpel: Any, fusion: Any) -> None:
        self.scalpel = scalpel  # openvino.CompiledModel (untyped library) or None
        self.fusion = fusion

    @classmethod
    def build(
        cls,
        scalpel: nn.Module | None,
        fusion: nn.Module,
        seg_size: int,
        cls_size: int,
        keys: WeightKeys,
        options: EngineOptions,
    ) -> OpenVinoBackend:
        """Compile both networks, converting from the torch modules only on a cache miss.

        ``keys`` names what the weights came from (``ModelSet.weight_keys``): each checkpoint's
        sha256, or the seed of untrained Fusion weights.
        """
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        compiled_scalpel = None
        if scalpel is not None:
            example = torch.zeros(1, 3, seg_size, seg_size)
            model = _cached_ir(
                "scalpel", ir_cache_key("scalpel", keys.scalpel, (seg_size,)), options.cache_dir,
                lambda: ov.convert_model(scalpel, example_input=example,
                                         input=[ov.PartialShape([-1, 3, seg_size, seg_size])]),
            )
            model.reshape([cls.PASS, 3, seg_size, seg_size])
            compiled_scalpel = core.compile_model(model, "CPU", config)
        fusion_example = (torch.zeros(2, 3, cls_size, cls_size), torch.zeros(2, METADATA_SIZE))
        model = _cached_ir(
            "fusion", ir_cache_key("fusion", keys.fusion, (cls_size,)), options.cache_dir,
            lambda: ov.convert_model(fusion, example_input=fusion_example,
                                     input=[ov.PartialShape([-1, 3, cls_size, cls_size]),
                                            ov.PartialShape([-1, METADATA_SIZE])]),
        )
        model.reshape({0: [cls.PASS, 3, cls_size, cls_size], 1: [cls.PASS, METADATA_SIZE]})
        compiled_fusion = core.compile_model(model, "CPU", config)
        return cls(compiled_scalpel, compiled_fusion)

    def segment(self, batch: np.ndarray) -> np.ndarray:
        if self.scalpel is None:
            raise ModelConfigError("this backend has no Scalpel network (classical Gate 1)")
        masks = [
            self.scalpel(_nchw(batch[start : start + self.PASS]))[0][:, 0] > 0.0
            for start in range(0, len(batch), self.PASS)
        ]
        return np.concatenate(masks) if masks else np.zeros((0,) + batch.shape[1:3], dtype=bool)

    def classify(self, batch: np.ndarray, metadata: np.ndarray, views: int, max_batch: int) -> np.ndarray:
        """``max_batch`` is the torch knob; the compiled shape decides here (see the class)."""
        repeated = np.repeat(np.ascontiguousarray(metadata, dtype=np.float32), views, axis=0)
        parts: list[np.ndarray] = []
        for index in range(len(batch)):
            # One image's views at a time (one copy, NCHW), so memory does not grow with N.
            expanded = expand_views_numpy(batch[index : index + 1].transpose(0, 3, 1, 2), views)
            metadata = repeated[index * views :]
            parts += [
                self.fusion([expanded[start : start + self.PASS], metadata[start : start + self.PASS]])[0][:, 0]
                for start in range(0, views, self.PASS)
            ]
        logits = np.concatenate(parts).astype(np.float64)
        # Same float32 sigmoid as the torch path, then float64 for the statistics.
        probabilities = torch.sigmoid(torch.from_numpy(logits.astype(np.float32))).double().numpy()
        return probabilities.reshape(len(batch), views)


def _nchw(batch: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def ir_cache_key(network: str, weights: str | None, sizes: tuple[int, ...]) -> str:
    """What the converted graph depends on: the weights, the input size, the batch-shape policy
    (dynamic batch, static spatial size), the converter and the libraries that define the graph."""
    import openvino as ov
    import segmentation_models_pytorch as smp
    import timm

    described = {
        "network": network,
        "weights": weights,
        "sizes": list(sizes),
        "batch": "dynamic",
        "ir_format": IR_FORMAT,
        "openvino": ov.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "smp": smp.__version__,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]


def _cached_ir(network: str, key: str, cache_dir: Path | None, convert: Callable[[], Any]) -> Any:
    """The network as an OpenVINO model (an untyped library: ``Any``), read from the cache or converted."""
    import openvino as ov

    if cache_dir is None:
        return convert()
    xml = Path(cache_dir) / f"{network}-{key}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        log.info("engine: loading cached OpenVINO IR %s", xml.name)
        return ov.Core().read_model(xml)
    log.info("engine: converting %s to OpenVINO IR (cached as %s)", network, xml.name)
    model = convert()
    xml.parent.mkdir(parents=True, exist_ok=True)
    # Written under a per-process name, then renamed (.bin before .xml), so a concurrent worker
    # never reads half an IR: the .xml appears last and complete.
    partial = xml.with_name(f"{xml.stem}.{os.getpid()}.partial.xml")
    ov.save_model(model, partial, compress_to_fp16=False)
    os.replace(partial.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(partial, xml)
    return model
