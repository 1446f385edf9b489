"""The dual-gate pipeline over a batch: decode -> quality -> Gate 1 -> Gate 2 -> ABCD + ITA.

``Pipeline.run`` takes N lesion images with metadata and returns N outcomes in the same order:
a ``Finding``, a ``Rejection`` (a clinical gate refused the image) or an ``ItemError`` (that
item failed unexpectedly). It is three steps that an engine may overlap across batches:

- ``prepare`` (host): metadata, decode, the resolution and quality gates, network inputs
  (resize + normalise);
- ``infer`` (the networks): Gate 1 masks, the coverage gate, Gate 2 over N x TTA views;
- ``complete`` (host): ABCD, ITA, mask and overlay artifacts, the result and its disposition
  (``shared.clinical.disposition``).

Gate 1 and Gate 2 each run the surviving images as one batch; a failure in either is retried
item by item so that one bad image never fails the others. The networks run on the backend
chosen in the registry (``backends``); nothing else depends on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.clinical import disposition, threshold_of
from shared.clinical.vocabulary import normalise_sex, normalise_site
from shared.schemas.analyses import AnalysisResult, Concepts, Equity, ModelInfo, Quality, Segmentation
from worker.pipeline import abcd, decision, equity, overlay, quality
from worker.pipeline.backends import EngineOptions, NetworkBackend, OpenVinoBackend, TorchBackend
from worker.pipeline.decode import decode_upright
from worker.pipeline.errors import ImageDecodeError, MetadataError
from worker.pipeline.metadata import encode_metadata
from worker.pipeline.model_set import ModelSet
from worker.pipeline.preprocess import network_input
from worker.pipeline.segmentation import make_segmenter
from worker.pipeline.tta import MAX_VIEWS

if TYPE_CHECKING:
    from shared.config import Settings

logger = logging.getLogger(__name__)

STAGE_SEGMENTATION = "segmentation"
STAGE_CLASSIFICATION = "classification"


@dataclass(frozen=True)
class PipelineOptions:
    seg_size: int = 512
    cls_size: int = 512
    tta_views: int = 5
    blur_threshold: float = quality.DEFAULT_BLUR_THRESHOLD
    min_coverage: float = quality.DEFAULT_MIN_COVERAGE
    min_image_side: int = quality.DEFAULT_MIN_IMAGE_SIDE  # shorter side of the upload, else low_resolution
    max_image_pixels: int = 40_000_000
    artifact_max_side: int = 1024  # mask/overlay: input aspect ratio, longer side capped
    max_forward_batch: int = 64  # Gate 2 inputs per forward pass (device-memory bound)
    autocast: str = "off"  # CUDA torch backend: off | fp16 | bf16
    gate1_memory_mb: int = 2048  # Gate 1 activations per forward pass
    ir_cache_dir: Path | None = None  # converted OpenVINO models (None: convert in memory)
    # JPEG DCT-scaled decode when the photo is at least twice every working size. The blur score
    # is measured at a fixed working size (quality.BLUR_WORKING_SIDE) that the reduced decode
    # never goes below, so full and reduced decodes score alike (issue 27): on by default.
    decode_reduced: bool = True
    precision: str = "auto"  # OpenVINO CPU: auto | fp32 | bf16 | int8 (backends.resolve_precision)
    calibration_dir: Path | None = None  # int8 calibration images; None: synthetic lesions
    streams: int = 2  # OpenVINO CPU: Fusion's views side by side on this many streams (EngineOptions)

    def __post_init__(self) -> None:
        if not 1 <= self.tta_views <= MAX_VIEWS:
            raise ValueError(f"tta_views must be 1..{MAX_VIEWS}, not {self.tta_views}")
        if self.seg_size < 32 or self.cls_size < 32 or self.seg_size % 32 or self.cls_size % 32:
            raise ValueError("seg_size and cls_size must be multiples of 32, at least 32")
        if not 0.0 <= self.min_coverage < 1.0:
            raise ValueError("min_coverage must be within 0..1")
        if self.min_image_side < 1:
            raise ValueError(f"min_image_side must be at least 1, not {self.min_image_side}")
        if self.max_image_pixels <= 0 or self.artifact_max_side <= 0 or self.max_forward_batch <= 0:
            raise ValueError("max_image_pixels, artifact_max_side and max_forward_batch must be positive")

    @classmethod
    def from_settings(cls, settings: Settings, device_type: str, **overrides: Any) -> PipelineOptions:
        """The options a GPU worker runs with, from ``settings``; what the settings leave unset
        gets the default for ``device_type`` (``cuda`` or ``cpu``). ``evaluate`` and the
        benchmarks build theirs here too, so they measure what the service answers, changing
        only what they ``override`` (sizes, TTA views, the converted-model cache)."""
        cuda = device_type == "cuda"
        options: dict[str, Any] = {
            "seg_size": settings.seg_size,
            "cls_size": settings.cls_size,
            "tta_views": settings.tta_views,
            "blur_threshold": settings.blur_threshold,
            "min_coverage": settings.min_coverage,
            "min_image_side": settings.min_image_side,
            "max_image_pixels": settings.max_image_pixels,
            # CPU: one input per pass keeps a torch worker under 1.5 GB at 512 (five views per
            # pass peaked at ~1.6 GB) and is no slower per image.
            "max_forward_batch": settings.max_forward_batch or (64 if cuda else 1),
            "autocast": settings.autocast,
            "gate1_memory_mb": settings.gate1_memory_mb or (2048 if cuda else 16),
            # Converted models are cached per DATA_DIR: a restarted worker skips conversion.
            "ir_cache_dir": settings.data_dir / "engine",
            "decode_reduced": settings.decode_reduced,
            "precision": settings.precision,
            "calibration_dir": settings.calibration_dir,
            "streams": settings.cpu_streams,
        }
        return cls(**{**options, **overrides})

    @property
    def engine(self) -> EngineOptions:
        return EngineOptions(autocast=self.autocast, gate1_memory_mb=self.gate1_memory_mb, cache_dir=self.ir_cache_dir,
                             precision=self.precision, calibration_dir=self.calibration_dir, streams=self.streams)


@dataclass(frozen=True)
class LesionInput:
    image: bytes
    age: int | None = None
    sex: str = "unknown"
    site: str = "unknown"
    pixel_spacing_mm: float | None = None


@dataclass(frozen=True)
class Finding:
    result: AnalysisResult
    mask_png: bytes
    overlay_jpeg: bytes
    model: ModelInfo  # the registry's provenance, for convenience


@dataclass(frozen=True)
class Rejection:
    """A clinical gate refused the image: ``detail`` says why, with the score; what to do
    about it is ``shared.clinical.retake_advice(code)``, never restated here."""

    code: str  # low_resolution | blurry | no_lesion | unreadable_image
    detail: str
    scores: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ItemError:
    code: str
    detail: str


Outcome = Finding | Rejection | ItemError


@dataclass
class _Item:
    """Working state of one accepted image between the steps."""

    index: int
    image: np.ndarray  # decoded, upright (possibly DCT-reduced, see ``source_size``)
    metadata: np.ndarray
    pixel_spacing_mm: float | None
    blur_score: float
    source_size: tuple[int, int] | None = None  # (height, width) of the upload as sent
    # The patient's metadata in the vocabulary's words, for the disposition's rules.
    age: int | None = None
    sex: str = "unknown"
    site: str = "unknown"
    seg_input: np.ndarray | None = None
    cls_input: np.ndarray | None = None
    mask: np.ndarray | None = None
    probabilities: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.source_size or (self.image.shape[0], self.image.shape[1])

    def stepped(self, value: np.ndarray | None, step: str) -> np.ndarray:
        """``value`` once the step that sets it has run (a bug in the step order otherwise)."""
        if value is None:
            raise RuntimeError(f"item {self.index} reached a later step before {step}")
        return value


@dataclass
class PreparedBatch:
    """A batch between the steps: outcomes decided so far, and the items still going."""

    outcomes: list
    items: list[_Item]


class Pipeline:
    def __init__(
        self, registry: ModelSet, options: PipelineOptions | None = None, backend: NetworkBackend | None = None
    ) -> None:
        self.options = options or PipelineOptions()
        self.backend = backend or make_backend(registry, self.options)
        if registry.backend == "openvino":
            # The compiled models hold their own weights: drop the torch copies (~150 MB).
            registry = registry.without_modules()
        self.registry = replace(registry, precision=backend_precision(self.backend))
        self.segmenter = make_segmenter(registry.segmenter, self.backend, self.options.seg_size)

    def run(self, items: list[LesionInput], on_stage: Callable[[str], None] | None = None) -> list[Outcome]:
        batch = self.prepare(items)
        self.infer(batch, on_stage)
        return self.complete(batch)

    def prepare(self, items: list[LesionInput], map: Callable = map) -> PreparedBatch:
        """Host work before the networks (safe to run in a thread beside ``infer``); ``map``
        may spread the items over a thread pool."""
        outcomes: list[Outcome | None] = [None] * len(items)
        accepted = []
        admitted = map(lambda pair: _isolated(lambda: self._admit(*pair), "internal_error"), enumerate(items))
        for index, outcome in enumerate(admitted):
            if isinstance(outcome, _Item):
                accepted.append(outcome)
            else:
                outcomes[index] = outcome
        return PreparedBatch(outcomes, accepted)

    def infer(
        self, batch: PreparedBatch, on_stage: Callable[[str], None] | None = None,
        between: Callable[[], None] | None = None,
    ) -> None:
        """The networks: Gate 1, the coverage gate, Gate 2 (sets masks and probabilities).

        With ``between``, each gate runs ``max_forward_batch`` images at a time (the size of one
        forward pass: one image on the CPU), times the backend's ``parallel`` (its streams: two
        images' views fill both streams of a 2-core CPU), and calls ``between()`` before each of those steps;
        the engine may run another batch there (issue 26: an interactive pass preempts a bulk
        one). Without it, each gate runs the whole batch at once."""
        outcomes = batch.outcomes
        _notify(on_stage, STAGE_SEGMENTATION)
        segmented = []
        for item, mask in self._batched(batch.items, self._segment, "segmentation_failed", outcomes, between):
            item.mask, item.seg_input = mask, None
            rejection = self._coverage_gate(item)
            if rejection is None:
                segmented.append(item)
            else:
                outcomes[item.index] = rejection
        _notify(on_stage, STAGE_CLASSIFICATION)
        classified = []
        for item, probabilities in self._batched(segmented, self._classify, "classification_failed", outcomes,
                                                 between):
            item.probabilities, item.cls_input = probabilities, None
            classified.append(item)
        batch.items = classified

    def complete(self, batch: PreparedBatch, map: Callable = map) -> list[Outcome]:
        """Host work after the networks: ABCD, ITA, artifacts and the result of each item."""
        findings = map(lambda item: _isolated(lambda: self._finding(item), "internal_error"), batch.items)
        for item, outcome in zip(batch.items, list(findings), strict=True):
            batch.outcomes[item.index] = outcome
        batch.items = []
        return batch.outcomes

    def _admit(self, index: int, item: LesionInput) -> _Item | Rejection | ItemError:
        """Metadata check, decode, quality gate and network inputs for one upload."""
        try:
            metadata = encode_metadata(item.age, item.sex, item.site)
        except MetadataError as exc:
            return ItemError("invalid_metadata", str(exc))
        sex, site = normalise_sex(item.sex), normalise_site(item.site)  # both valid: encoded above
        if item.pixel_spacing_mm is not None and not item.pixel_spacing_mm > 0:
            return ItemError("invalid_metadata", f"pixel_spacing_mm must be positive, not {item.pixel_spacing_mm}")
        options = self.options
        keep = None
        if options.decode_reduced:
            network = max(options.seg_size, options.cls_size)
            keep = (network, max(network, options.artifact_max_side))
        try:
            image, source_size = decode_upright(item.image, options.max_image_pixels, keep)
        except ImageDecodeError as exc:
            return Rejection("unreadable_image", f"the image could not be read: {exc}", {})
        height, width = source_size
        if quality.too_small(height, width, options.min_image_side):
            # Before the blur score and the networks: nothing is measured on too few pixels.
            return Rejection(
                "low_resolution",
                f"image too small: {width} x {height} pixels; its shorter side must be at least "
                f"{options.min_image_side} pixels",
                {"width": width, "height": height, "min_image_side": options.min_image_side},
            )
        score = quality.blur_score(image)
        if quality.is_blurry(score, options.blur_threshold):
            return Rejection(
                "blurry",
                f"image too blurry: sharpness score {score:.1f} is below the threshold {options.blur_threshold:g}",
                {"blur_score": score, "blur_threshold": options.blur_threshold},
            )
        accepted = _Item(index, image, metadata, item.pixel_spacing_mm, score, source_size, age=item.age, sex=sex,
                         site=site)
        accepted.seg_input = self.segmenter.network_input(image)
        if self.segmenter.kind == "unet" and options.cls_size == options.seg_size:
            accepted.cls_input = accepted.seg_input  # the same resize + normalise: make it once
        else:
            accepted.cls_input = network_input(image, options.cls_size)
        return accepted

    def _coverage_gate(self, item: _Item) -> Rejection | None:
        coverage = float(item.stepped(item.mask, "segmentation").mean())
        if coverage < self.options.min_coverage:
            return Rejection(
                "no_lesion",
                f"no lesion detected: the lesion mask covers {coverage:.2%} of the image, below the "
                f"minimum {self.options.min_coverage:.2%}",
                {"coverage": coverage, "min_coverage": self.options.min_coverage, "blur_score": item.blur_score},
            )
        return None

    def _segment(self, batch: list[_Item]) -> list[np.ndarray]:
        return self.segmenter.segment([item.stepped(item.seg_input, "admission") for item in batch])

    def _classify(self, batch: list[_Item]) -> list[np.ndarray]:
        images = np.stack([item.stepped(item.cls_input, "admission") for item in batch])
        metadata = np.stack([item.metadata for item in batch])
        probabilities = self.backend.classify(images, metadata, self.options.tta_views, self.options.max_forward_batch)
        return list(probabilities)

    def _finding(self, item: _Item) -> Finding:
        """ABCD, ITA and artifacts for one classified image, and its result."""
        height, width = item.size
        mask = item.stepped(item.mask, "segmentation")
        view_probabilities = item.stepped(item.probabilities, "classification")
        # ABCD and ITA run on an aspect-preserving frame at the mask's resolution (longer side
        # SEG_SIZE), so shapes are not squashed and the diameter maps back to the upload's pixels.
        frame_h, frame_w = overlay.artifact_size(height, width, self.options.seg_size)
        frame_image = overlay.resize_image(item.image, frame_h, frame_w)
        frame_mask = overlay.resize_mask(mask, frame_h, frame_w)
        concepts = abcd.compute_concepts(frame_image, frame_mask, frame_w / width, item.pixel_spacing_mm)
        skin = equity.estimate_skin_tone(frame_image, frame_mask)

        art_h, art_w = overlay.artifact_size(height, width, self.options.artifact_max_side)
        art_mask = overlay.resize_mask(mask, art_h, art_w)
        mask_png = overlay.mask_png(art_mask)
        overlay_jpeg = overlay.overlay_jpeg(overlay.resize_image(item.image, art_h, art_w), art_mask)

        probability = float(np.mean(view_probabilities))
        # Population std: the views are the whole fixed set, not a sample of random views.
        uncertainty = float(np.std(view_probabilities))
        coverage = float(mask.mean())
        provenance = self.registry.provenance()
        # A model with a validated operating point records it in its provenance.
        threshold = threshold_of(provenance)
        point = provenance.operating_point
        # What should happen next: the clinical rules applied to the result, the patient's
        # metadata, the model's weights and operating points, and the gates this image passed
        # (a borderline pass is a review reason).
        decided = disposition.decide(disposition.DispositionInputs(
            probability=probability,
            uncertainty=uncertainty,
            ita_degrees=skin.ita_degrees,
            blur_score=item.blur_score,
            coverage=coverage,
            age=item.age,
            sex=item.sex,
            site=item.site,
            weights=provenance.weights,
            threshold=threshold,
            rule_out_threshold=point.rule_out_threshold if point is not None else None,
            blur_threshold=self.options.blur_threshold,
            diameter_mm=concepts.diameter_mm,
            min_coverage=self.options.min_coverage,
        ))
        result = AnalysisResult(
            diagnosis=decision.diagnosis(probability, threshold),
            probability=probability,
            uncertainty=uncertainty,
            tta_probabilities=[float(p) for p in view_probabilities],
            risk_band=decision.risk_band(probability, threshold),
            segmentation=Segmentation(coverage=coverage),
            concepts=Concepts(**concepts.as_dict()),
            equity=Equity(**skin.as_dict()),
            quality=Quality(blur_score=item.blur_score),
            disposition=decided.disposition,
            disposition_reasons=decided.reasons,
            safety_netting=decided.safety_netting,
        )
        return Finding(result=result, mask_png=mask_png, overlay_jpeg=overlay_jpeg, model=provenance)

    def _batched(
        self, batch: list[_Item], step: Callable[[list[_Item]], list[np.ndarray]], error_code: str, outcomes: list,
        between: Callable[[], None] | None = None,
    ) -> list[tuple[_Item, np.ndarray]]:
        """Run ``step`` on the whole batch (with ``between``: on each forward pass's share of it,
        calling ``between()`` before each); if it fails, retry per item to isolate the culprit."""
        if between is not None:
            size = self.options.max_forward_batch * self.backend.parallel
            done = []
            for start in range(0, len(batch), size):
                between()
                done += self._batched(batch[start : start + size], step, error_code, outcomes)
            return done
        if not batch:
            return []
        try:
            return list(zip(batch, step(batch), strict=True))
        except Exception:  # any failure of the batched call: isolate it rather than fail all
            logger.exception("%s for a batch of %d; retrying item by item", error_code, len(batch))
        survivors = []
        for item in batch:
            try:
                survivors.append((item, step([item])[0]))
            except Exception as exc:  # this item alone breaks the step: report it, keep the rest
                logger.exception("%s for item %d", error_code, item.index)
                outcomes[item.index] = ItemError(error_code, f"{type(exc).__name__}: {exc}")
        return survivors


def backend_precision(backend: NetworkBackend) -> str:
    """What the networks compute in, for provenance: the OpenVINO backend's resolved precision,
    the torch backend's CUDA autocast dtype, else fp32."""
    precision = getattr(backend, "precision", None)
    if isinstance(precision, str):
        return precision
    autocast = getattr(backend, "autocast", "off")
    return autocast if autocast != "off" else "fp32"


def make_backend(registry: ModelSet, options: PipelineOptions) -> NetworkBackend:
    """The registry's networks on its engine: torch modules as loaded, or compiled OpenVINO."""
    if registry.backend == "openvino":
        if not registry.has_networks:
            raise ValueError("this registry's torch modules were released; load it again to build a backend")
        # The modules are asked for only to convert (a cached IR needs neither them nor torch).
        return OpenVinoBackend.build(
            (lambda: registry.module("scalpel")) if registry.segmenter == "unet" else None,
            lambda: registry.module("fusion"), options.seg_size, options.cls_size, registry.weight_keys(),
            options.engine,
        )
    if registry.fusion is None:
        raise ValueError("this registry's torch modules were released; load it again to build a backend")
    return TorchBackend(registry.scalpel, registry.fusion, registry.device, options.seg_size, options.engine)


def _isolated(work: Callable[[], object], error_code: str) -> object:
    try:
        return work()
    except Exception as exc:  # an unexpected per-item failure must not fail the batch
        logger.exception("unexpected failure processing one item")
        return ItemError(error_code, f"{type(exc).__name__}: {exc}")


def _notify(on_stage: Callable[[str], None] | None, stage: str) -> None:
    if on_stage is not None:
        on_stage(stage)
