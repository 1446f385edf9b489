"""Gate 1 and Gate 2 networks behind one small interface: torch (CPU, CUDA) or OpenVINO (CPU).

Both backends take host-prepared batches (NHWC float32, already resized and normalised, see
``preprocess.network_batch``) and return numpy: boolean lesion masks from Gate 1 and per-view
melanoma probabilities from Gate 2. Everything else in the pipeline is the same whichever
backend runs, so switching backend changes only ``model.backend`` and the last bits of the
network outputs.

OpenVINO models are converted in-process from the loaded torch modules (nothing is
downloaded) and cached as IR under ``DATA_DIR/engine``, keyed by what determines the graph and
its weights (see ``ir_cache_key``), so a restarted worker compiles the cached IR without
converting again, and without importing torch: the modules are asked for only on a cache miss,
and the OpenVINO backend's own code here is numpy (issue 27).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from worker.pipeline.errors import ModelConfigError
from worker.pipeline.metadata import METADATA_SIZE
from worker.pipeline.tta import classify_with_tta, expand_views_numpy

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "torch", "openvino")
AUTOCAST_CHOICES = ("off", "fp16", "bf16")
# PRECISION (issue 27, docs/ENGINE.md "Precision"): what the OpenVINO CPU networks compute in.
# auto: bf16 where the CPU computes bf16 natively (OpenVINO's OPTIMIZATION_CAPABILITIES lists
# BF16) -- measured within the bounds below on the synthetic-trained model -- else fp32. int8:
# NNCF post-training quantization of both networks, opt-in.
PRECISION_CHOICES = ("auto", "fp32", "bf16", "int8")
# The agreement with fp32 each precision is held to (|probability difference| at the 95th
# percentile, share of equal dispositions): tests/worker/pipeline/test_precision.py and
# benchmarks/precision.py measure against these.
PRECISION_BOUNDS = {"bf16": (0.005, 0.995), "int8": (0.02, 0.98)}
# Images the int8 calibration runs per network when no CALIBRATION_DIR is given (synthetic lesions).
CALIBRATION_IMAGES = 64
# Bump when the conversion itself changes (pre/post-processing baked into the IR, input names).
IR_FORMAT = 1
# Gate 1 activation bytes per input pixel, U-Net r34 forward in fp32 (peak minus weights,
# measured on CPU at 128..512: ~110 bytes per pixel); halved under fp16/bf16 autocast.
GATE1_BYTES_PER_PIXEL = 110


class NetworkBackend(Protocol):
    name: str  # provenance: "torch-cpu", "torch-cuda", "openvino-cpu"
    # Images a forward step takes at once when the pipeline steps image by image (``between``):
    # one per stream of a backend that runs several inputs side by side, else 1.
    parallel: int

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
    precision: str = "auto"  # OpenVINO: auto | fp32 | bf16 | int8 (see PRECISION_CHOICES)
    calibration_dir: Path | None = None  # int8: the operator's images; None: synthetic lesions
    # OpenVINO CPU: Fusion's passes run on this many single-request streams (issue 27,
    # "Streams"); 1: every pass on LATENCY-compiled networks, spread over all the cores.
    streams: int = 2

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_CHOICES:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_CHOICES)}, not {self.autocast!r}")
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {self.precision!r}")
        if self.gate1_memory_mb <= 0:
            raise ValueError("gate1_memory_mb must be positive")
        if self.streams < 1:
            raise ValueError("streams must be at least 1")


class _Device(Protocol):
    @property
    def type(self) -> str: ...


def resolve_backend(choice: str, device: _Device) -> str:
    """``torch`` or ``openvino``: auto is torch on CUDA, OpenVINO on CPU."""
    if choice not in BACKEND_CHOICES:
        raise ModelConfigError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, not {choice!r}")
    if choice == "auto":
        return "torch" if device.type == "cuda" else "openvino"
    if choice == "openvino" and device.type != "cpu":
        raise ModelConfigError("backend 'openvino' runs on the CPU; use device 'cpu' (or backend 'torch' on CUDA)")
    return choice


def native_bf16(core: Any = None) -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (AVX512_BF16 or AMX): it then
    lists BF16 among the CPU's OPTIMIZATION_CAPABILITIES."""
    import openvino as ov

    try:
        capabilities = (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:  # no CPU plugin property: treat as not native
        return False
    return "BF16" in [str(capability).upper() for capability in capabilities]


def resolve_precision(choice: str, core: Any = None) -> str:
    """``fp32``, ``bf16`` or ``int8`` for the OpenVINO CPU networks: ``auto`` is bf16 where the
    CPU runs it natively, else fp32; ``bf16`` asked for on a CPU without it is refused (OpenVINO
    would quietly emulate or fall back, and provenance would say what did not run)."""
    if choice not in PRECISION_CHOICES:
        raise ModelConfigError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {choice!r}")
    if choice == "auto":
        return "bf16" if native_bf16(core) else "fp32"
    if choice == "bf16" and not native_bf16(core):
        raise ModelConfigError("precision 'bf16' needs a CPU that computes bf16 natively (AVX512_BF16 or AMX), "
                               "which this one does not; use PRECISION=auto or fp32")
    return choice


def gate1_chunk(seg_size: int, memory_mb: int, autocast: str = "off") -> int:
    """How many Gate 1 images one forward pass may hold within ``memory_mb`` of activations."""
    per_image = seg_size * seg_size * GATE1_BYTES_PER_PIXEL / (2 if autocast != "off" else 1)
    return max(1, int(memory_mb * 2**20 // per_image))


class TorchBackend:
    """Eager torch: channels_last, inference_mode; on CUDA pinned host memory, non-blocking
    copies, cudnn.benchmark and optional fp16/bf16 autocast."""

    parallel = 1

    def __init__(
        self, scalpel: nn.Module | None, fusion: nn.Module, device: Any, seg_size: int, options: EngineOptions
    ) -> None:
        import torch

        self.scalpel = scalpel
        self.fusion = fusion
        self.device = torch.device(str(device))  # a torch.device or model_set.Device
        self.name = f"torch-{device.type}"
        self.cuda = device.type == "cuda"
        if options.precision in ("bf16", "int8"):
            raise ModelConfigError(f"PRECISION={options.precision} is for the OpenVINO CPU backend; torch runs fp32 "
                                   "(on CUDA, AUTOCAST chooses fp16 or bf16)")
        # PRECISION=fp32 turns CUDA autocast off; auto leaves it to AUTOCAST.
        self.autocast = options.autocast if self.cuda and options.precision != "fp32" else "off"
        self.gate1_max_batch = gate1_chunk(seg_size, options.gate1_memory_mb, self.autocast)
        if self.cuda:
            # Fixed input shapes: let cuDNN pick the fastest kernels once per shape.
            torch.backends.cudnn.benchmark = True

    def to_device(self, batch: np.ndarray) -> torch.Tensor:
        """NHWC host array -> NCHW channels_last tensor on the device (a view, no extra copy)."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.cuda:
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        import torch

        if self.autocast == "off":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.autocast == "fp16" else torch.bfloat16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def segment(self, batch: np.ndarray) -> np.ndarray:
        if self.scalpel is None:
            raise ModelConfigError("this backend has no Scalpel network (classical Gate 1)")
        import torch

        masks = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(batch), self.gate1_max_batch):
                logits = self.scalpel(self.to_device(batch[start : start + self.gate1_max_batch]))
                masks.append((torch.sigmoid(logits.float())[:, 0] > 0.5).cpu().numpy())
        return np.concatenate(masks) if masks else np.zeros((0,) + batch.shape[1:3], dtype=bool)

    def classify(self, batch: np.ndarray, metadata: np.ndarray, views: int, max_batch: int) -> np.ndarray:
        import torch

        images = self.to_device(batch)
        meta = torch.from_numpy(np.ascontiguousarray(metadata, dtype=np.float32)).to(self.device, non_blocking=True)
        with self._autocast():
            return classify_with_tta(self.fusion, images, meta, views, max_batch)


class OpenVinoBackend:
    """OpenVINO on the CPU, at the precision ``PRECISION`` resolves to (``resolve_precision``):
    fp32 (INFERENCE_PRECISION_HINT f32), bf16 (hint bf16, CPUs that compute it natively), or
    int8 (NNCF-quantized IR, the layers it leaves in float at f32).

    Both networks are compiled for one input per pass (static shapes): on the CPU that is as
    fast per image as five per pass, and the activation memory is ~400 MB smaller at 512, which
    keeps a worker holding both models under 1.5 GB. The cached IR keeps a dynamic batch; the
    static shape is applied at load time.

    Streams (issue 27): Fusion is compiled with the THROUGHPUT hint and ``streams``
    single-request streams (the cores split between them), and every call runs its passes (an
    image's views, one per pass) one per stream at a time, results in order. Scalpel is compiled
    once, with the LATENCY hint: its pass spreads over all the cores. On a host whose other
    processes take a core now and then, a pass spread over all cores waits at each layer for its
    slowest thread; passes on separate streams do not wait for each other (measured in
    docs/ENGINE.md "Streams"). Each network is compiled once: a second, THROUGHPUT copy of
    Scalpel and a LATENCY copy of Fusion cost ~350 MiB at 512 (their weights and each request's
    activations) for no measured gain ("Streams: one compile per network"). The results are the
    same computation either way: fp32 the same numbers, bf16 within 1e-5, each stable from run
    to run; int8, whose results on streams were not, compiles Fusion with the LATENCY hint.
    """

    name = "openvino-cpu"
    PASS = 1  # inputs per forward pass

    def __init__(self, scalpel: Any, fusion: Any, precision: str = "fp32", streams: int = 1) -> None:
        self.scalpel = scalpel  # openvino.CompiledModel (untyped library), LATENCY hint, or None
        self.fusion = fusion  # THROUGHPUT hint with ``streams`` streams when streams > 1, else LATENCY
        self.precision = precision  # provenance: fp32 | bf16 | int8
        self.streams = streams
        # Images per step of a bulk pass (Pipeline._batched): one per stream, so a call's views
        # fill every stream to the end (two images' ten views, not one image's five).
        self.parallel = streams
        self._queue: Any = None  # Fusion's request queue, made on first use
        self._queue_lock = threading.Lock()  # one call on the streams at a time

    @classmethod
    def build(
        cls,
        scalpel: Callable[[], nn.Module] | None,
        fusion: Callable[[], nn.Module],
        seg_size: int,
        cls_size: int,
        keys: WeightKeys,
        options: EngineOptions,
    ) -> OpenVinoBackend:
        """Compile both networks, converting from the torch modules only on a cache miss.

        ``scalpel`` and ``fusion`` give each torch module (``ModelSet.module``), called only when
        its IR must be converted (so a worker whose IR is cached never imports torch); no
        ``scalpel``: classical Gate 1. ``keys`` names what the weights came from
        (``ModelSet.weight_keys``): each checkpoint's sha256, or the seed of untrained Fusion
        weights.
        """
        import openvino as ov

        core = ov.Core()
        precision = resolve_precision(options.precision, core)
        # int8: the layers NNCF leaves in float run at f32, like the fp32 path.
        hint = "bf16" if precision == "bf16" else "f32"
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        # int8 stays on a latency-compiled Fusion: its requests on separate streams gave results
        # that differed from run to run (up to 6e-4 in a probability); fp32 and bf16 are bit-stable.
        streams = 1 if precision == "int8" else min(options.streams, os.cpu_count() or 1)
        streamed = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams}
        compiled_scalpel = None
        if scalpel is not None:
            build_scalpel = scalpel

            def convert_scalpel() -> Any:
                import torch

                return ov.convert_model(build_scalpel(), example_input=torch.zeros(1, 3, seg_size, seg_size),
                                        input=[ov.PartialShape([-1, 3, seg_size, seg_size])])

            def scalpel_ir() -> Any:
                return _cached_ir("scalpel", ir_cache_key("scalpel", keys.scalpel, (seg_size,)), options.cache_dir,
                                  convert_scalpel)

            if precision == "int8":
                model = _quantized("scalpel", scalpel_ir, keys.scalpel, (seg_size,), options)
            else:
                model = scalpel_ir()
            model.reshape([cls.PASS, 3, seg_size, seg_size])
            compiled_scalpel = core.compile_model(model, "CPU", config)
            del model

        def convert_fusion() -> Any:
            import torch

            return ov.convert_model(fusion(), example_input=(torch.zeros(2, 3, cls_size, cls_size),
                                                             torch.zeros(2, METADATA_SIZE)),
                                    input=[ov.PartialShape([-1, 3, cls_size, cls_size]),
                                           ov.PartialShape([-1, METADATA_SIZE])])

        def fusion_ir() -> Any:
            return _cached_ir("fusion", ir_cache_key("fusion", keys.fusion, (cls_size,)), options.cache_dir,
                              convert_fusion)

        if precision == "int8":
            model = _quantized("fusion", fusion_ir, keys.fusion, (cls_size,), options)
        else:
            model = fusion_ir()
        model.reshape({0: [cls.PASS, 3, cls_size, cls_size], 1: [cls.PASS, METADATA_SIZE]})
        compiled_fusion = core.compile_model(model, "CPU", streamed if streams > 1 else config)
        del model
        log.info("engine: OpenVINO CPU networks compiled at %s (PRECISION=%s); %s", precision, options.precision,
                 f"Fusion's views on {streams} streams" if streams > 1 else "no streams")
        return cls(compiled_scalpel, compiled_fusion, precision, streams)

    def segment(self, batch: np.ndarray) -> np.ndarray:
        if self.scalpel is None:
            raise ModelConfigError("this backend has no Scalpel network (classical Gate 1)")
        masks = [self.scalpel([_nchw(batch[start : start + self.PASS])])[0][:, 0] > 0.0
                 for start in range(0, len(batch), self.PASS)]
        return np.concatenate(masks) if masks else np.zeros((0,) + batch.shape[1:3], dtype=bool)

    def classify(self, batch: np.ndarray, metadata: np.ndarray, views: int, max_batch: int) -> np.ndarray:
        """``max_batch`` is the torch knob; the compiled shape decides here (see the class)."""
        repeated = np.repeat(np.ascontiguousarray(metadata, dtype=np.float32), views, axis=0)

        def feeds() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for index in range(len(batch)):
                # One image's views at a time (one copy, NCHW), so memory does not grow with N.
                expanded = expand_views_numpy(batch[index : index + 1].transpose(0, 3, 1, 2), views)
                metadata = repeated[index * views :]
                for start in range(0, views, self.PASS):
                    yield expanded[start : start + self.PASS], metadata[start : start + self.PASS]

        if self.streams > 1:
            outputs = self._on_streams(feeds())
        else:
            outputs = [self.fusion(list(feed))[0] for feed in feeds()]
        logits = np.concatenate([output[:, 0] for output in outputs]).astype(np.float32)
        return sigmoid_float32(logits).reshape(len(batch), views)

    def _on_streams(self, feeds: Iterable[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        """Each feed as one request on Fusion's streams (as many requests as streams, each
        started as one frees); the first output of each, in the feeds' order. A request's failure
        is raised here, after the others finished."""
        import openvino as ov

        outputs: dict[int, np.ndarray] = {}

        def done(request: Any, index: int) -> None:
            outputs[index] = request.get_output_tensor(0).data.copy()  # the request's buffer is reused

        count = 0
        with self._queue_lock:
            if self._queue is None:
                self._queue = ov.AsyncInferQueue(self.fusion, self.streams)
            self._queue.set_callback(done)
            try:
                for feed in feeds:
                    self._queue.start_async(dict(enumerate(feed)), count)
                    count += 1
            finally:
                self._queue.wait_all()
        missing = [index for index in range(count) if index not in outputs]
        if missing:
            raise RuntimeError(f"OpenVINO Fusion: {len(missing)} of {count} requests returned no output")
        return [outputs[index] for index in range(count)]


def sigmoid_float32(logits: np.ndarray) -> np.ndarray:
    """The torch path's probabilities without torch: float32 logits -> sigmoid rounded to
    float32 (computed in float64, so correctly rounded; torch's own float32 sigmoid is within
    one float32 ulp of it), then float64 for the statistics."""
    exact = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    return exact.astype(np.float32).astype(np.float64)


def _nchw(batch: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def ir_cache_key(network: str, weights: str | None, sizes: tuple[int, ...]) -> str:
    """What the converted graph depends on: the weights, the input size, the batch-shape policy
    (dynamic batch, static spatial size), the converter and the libraries that define the graph.
    The torch, timm and smp versions are their installed distributions' (``importlib.metadata``):
    reading them does not import them (issue 27)."""
    import openvino as ov

    described = {
        "network": network,
        "weights": weights,
        "sizes": list(sizes),
        "batch": "dynamic",
        "ir_format": IR_FORMAT,
        "openvino": ov.__version__,
        "torch": _installed("torch"),
        "timm": _installed("timm"),
        "smp": _installed("segmentation-models-pytorch"),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]


def _installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def calibration_images(size: int, folder: Path | None, count: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """The int8 calibration set as network inputs ((size, size, 3) float32 NHWC, the pipeline's
    own preprocessing): the images in ``folder`` (JPEG/PNG/..., sorted by name, at most
    ``count``), or, with no folder, ``count`` synthetic lesions of varied shape, colour and
    skin tone."""
    from worker.pipeline.preprocess import network_input

    pictures: list[np.ndarray] = []
    if folder is not None:
        from PIL import Image

        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp",
                                                                                 ".tif", ".tiff", ".webp"})
        if not files:
            raise ModelConfigError(f"CALIBRATION_DIR {folder} holds no images (.jpg, .png, ...)")
        for path in files[:count]:
            with Image.open(path) as image:
                pictures.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    else:
        from worker.pipeline.synthetic import make_lesion

        for i in range(count):
            pictures.append(make_lesion(seed=1000 + i, size=(256, 320), radius_frac=0.16 + 0.02 * (i % 6),
                                        irregularity=0.15 * (i % 7), variegation=0.15 * (i % 6),
                                        ita=-40 + 13 * (i % 8), hair=i % 3 == 0).image)
    return [network_input(picture, size) for picture in pictures]


def calibration_fingerprint(folder: Path | None, count: int = CALIBRATION_IMAGES) -> str:
    """What the calibration set is, for the int8 cache key: the folder's files (names, sizes,
    modification times) or the synthetic set's size."""
    if folder is None:
        return f"synthetic-{count}"
    entries = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(folder).iterdir() if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def _quantized(
    network: str, fp32_ir: Callable[[], Any], weights: str | None, sizes: tuple[int, ...], options: EngineOptions
) -> Any:
    """The fp32 IR (``fp32_ir``, read or converted only on a cache miss) quantized to int8 by
    NNCF (post-training, mixed preset: symmetric weights, asymmetric activations), cached beside
    the fp32 IR under a key that adds the calibration set and the NNCF version."""
    import nncf

    fingerprint = calibration_fingerprint(options.calibration_dir)
    key = hashlib.sha256(
        f"{ir_cache_key(network, weights, sizes)}|int8|{nncf.__version__}|{fingerprint}".encode()
    ).hexdigest()[:20]

    def quantize() -> Any:
        size = sizes[0]
        images = calibration_images(size, options.calibration_dir)
        if network == "scalpel":
            samples: list[Any] = [image.transpose(2, 0, 1)[None] for image in images]
        else:
            from worker.pipeline.metadata import encode_metadata

            ages, sexes = (25, 40, 55, 70, 85), ("male", "female", "unknown")
            sites = ("torso", "lower extremity", "upper extremity", "head/neck", "unknown")
            samples = [
                (image.transpose(2, 0, 1)[None],
                 encode_metadata(ages[i % 5], sexes[i % 3], sites[i % 5])[None].astype(np.float32))
                for i, image in enumerate(images)
            ]
        log.info("engine: quantizing %s to int8 on %d calibration images (cached as %s-int8-%s)",
                 network, len(samples), network, key)
        return nncf.quantize(fp32_ir(), nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED,
                             subset_size=len(samples))

    return _cached_ir(f"{network}-int8", key, options.cache_dir, quantize)


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
