"""The dual-gate pipeline over a batch: decode -> quality -> Gate 1 -> ABCD + ITA -> Gate 2.

``Pipeline.run`` takes N lesion images with metadata and returns N outcomes in the same order:
a ``Finding``, a ``Rejection`` (a clinical gate refused the image) or an ``ItemError`` (that
item failed unexpectedly). Gate 1 runs the surviving images as one batch and Gate 2 runs them
as one batch of N x TTA views; a failure in either is retried item by item so that one bad
image never fails the others.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from worker.pipeline import abcd, decision, equity, overlay, quality
from worker.pipeline.decode import decode_image
from worker.pipeline.errors import ImageDecodeError, MetadataError
from worker.pipeline.metadata import encode_metadata
from worker.pipeline.preprocess import to_device_batch
from worker.pipeline.registry import ModelRegistry
from worker.pipeline.segmentation import make_segmenter
from worker.pipeline.tta import MAX_VIEWS, classify_with_tta

logger = logging.getLogger(__name__)

STAGE_SEGMENTATION = "segmentation"
STAGE_CLASSIFICATION = "classification"


@dataclass(frozen=True)
class PipelineOptions:
    seg_size: int = 512
    cls_size: int = 512
    tta_views: int = 5
    blur_threshold: float = quality.DEFAULT_BLUR_THRESHOLD
    min_coverage: float = 0.01
    max_image_pixels: int = 40_000_000
    artifact_max_side: int = 1024  # mask/overlay PNGs: input aspect ratio, longer side capped
    max_forward_batch: int = 64  # Gate 2 inputs per forward pass (device-memory bound)

    def __post_init__(self) -> None:
        if not 1 <= self.tta_views <= MAX_VIEWS:
            raise ValueError(f"tta_views must be 1..{MAX_VIEWS}, not {self.tta_views}")
        if self.seg_size < 32 or self.cls_size < 32 or self.seg_size % 32 or self.cls_size % 32:
            raise ValueError("seg_size and cls_size must be multiples of 32, at least 32")
        if not 0.0 <= self.min_coverage < 1.0:
            raise ValueError("min_coverage must be within 0..1")
        if self.max_image_pixels <= 0 or self.artifact_max_side <= 0 or self.max_forward_batch <= 0:
            raise ValueError("max_image_pixels, artifact_max_side and max_forward_batch must be positive")


@dataclass(frozen=True)
class LesionInput:
    image: bytes
    age: int | None = None
    sex: str = "unknown"
    site: str = "unknown"
    pixel_spacing_mm: float | None = None


@dataclass(frozen=True)
class Finding:
    result: dict
    mask_png: bytes
    overlay_png: bytes
    model: dict = field(default_factory=dict)  # the registry's provenance, for convenience


@dataclass(frozen=True)
class Rejection:
    code: str  # blurry | no_lesion | unreadable_image
    detail: str
    scores: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ItemError:
    code: str
    detail: str


Outcome = Finding | Rejection | ItemError


@dataclass
class _Item:
    """Working state of one accepted image between the gates."""

    index: int
    image: np.ndarray
    metadata: np.ndarray
    pixel_spacing_mm: float | None
    blur_score: float
    mask: np.ndarray | None = None
    partial: dict | None = None
    mask_png: bytes = b""
    overlay_png: bytes = b""


class Pipeline:
    def __init__(self, registry: ModelRegistry, options: PipelineOptions | None = None) -> None:
        self.registry = registry
        self.options = options or PipelineOptions()
        self.segmenter = make_segmenter(registry.segmenter, registry.scalpel, registry.device, self.options.seg_size)

    def run(self, items: list[LesionInput], on_stage: Callable[[str], None] | None = None) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(items)
        accepted = []
        for index, item in enumerate(items):
            outcome = _isolated(lambda: self._admit(index, item), "internal_error")
            if isinstance(outcome, _Item):
                accepted.append(outcome)
            else:
                outcomes[index] = outcome

        _notify(on_stage, STAGE_SEGMENTATION)
        masks = self._batched(
            accepted, lambda batch: self.segmenter.segment([it.image for it in batch]), "segmentation_failed", outcomes
        )
        segmented = []
        for item, mask in masks:
            item.mask = mask
            outcome = _isolated(lambda: self._describe(item), "internal_error")
            if outcome is None:
                segmented.append(item)
            else:
                outcomes[item.index] = outcome

        _notify(on_stage, STAGE_CLASSIFICATION)
        for item, probabilities in self._batched(segmented, self._classify, "classification_failed", outcomes):
            outcomes[item.index] = self._finding(item, probabilities)
        return outcomes  # type: ignore[return-value]

    def _admit(self, index: int, item: LesionInput) -> _Item | Rejection | ItemError:
        """Metadata check, decode and quality gate for one upload."""
        try:
            metadata = encode_metadata(item.age, item.sex, item.site)
        except MetadataError as exc:
            return ItemError("invalid_metadata", str(exc))
        if item.pixel_spacing_mm is not None and not item.pixel_spacing_mm > 0:
            return ItemError("invalid_metadata", f"pixel_spacing_mm must be positive, not {item.pixel_spacing_mm}")
        try:
            image = decode_image(item.image, self.options.max_image_pixels)
        except ImageDecodeError as exc:
            return Rejection("unreadable_image", f"the image could not be read: {exc}", {})
        score = quality.blur_score(image)
        if quality.is_blurry(score, self.options.blur_threshold):
            return Rejection(
                "blurry",
                f"image too blurry: sharpness score {score:.1f} is below the threshold "
                f"{self.options.blur_threshold:g}; retake the photo in focus",
                {"blur_score": score, "blur_threshold": self.options.blur_threshold},
            )
        return _Item(index, image, metadata, item.pixel_spacing_mm, score)

    def _describe(self, item: _Item) -> Rejection | None:
        """Coverage gate, ABCD, ITA and artifacts for one segmented image (sets item.partial)."""
        coverage = float(item.mask.mean())
        if coverage < self.options.min_coverage:
            return Rejection(
                "no_lesion",
                f"no lesion detected: the lesion mask covers {coverage:.2%} of the image, below the "
                f"minimum {self.options.min_coverage:.2%}; centre the lesion and fill more of the frame",
                {"coverage": coverage, "min_coverage": self.options.min_coverage, "blur_score": item.blur_score},
            )
        height, width = item.image.shape[:2]
        # ABCD and ITA run on an aspect-preserving frame at the mask's resolution, so shapes are
        # not squashed and the diameter maps back to the uploaded image's pixels.
        frame_h, frame_w = overlay.artifact_size(height, width, self.options.seg_size)
        frame_image = overlay.resize_image(item.image, frame_h, frame_w)
        frame_mask = overlay.resize_mask(item.mask, frame_h, frame_w)
        concepts = abcd.compute_concepts(frame_image, frame_mask, frame_w / width, item.pixel_spacing_mm)
        skin = equity.estimate_skin_tone(frame_image, frame_mask)

        art_h, art_w = overlay.artifact_size(height, width, self.options.artifact_max_side)
        art_mask = overlay.resize_mask(item.mask, art_h, art_w)
        item.mask_png = overlay.mask_png(art_mask)
        item.overlay_png = overlay.overlay_png(overlay.resize_image(item.image, art_h, art_w), art_mask)
        item.partial = {
            "segmentation": {"coverage": coverage},
            "concepts": concepts.as_dict(),
            "equity": skin.as_dict(),
            "quality": {"blur_score": item.blur_score},
        }
        return None

    def _classify(self, batch: list[_Item]) -> list[np.ndarray]:
        device = self.registry.device
        images = to_device_batch([item.image for item in batch], self.options.cls_size, device)
        metadata = torch.from_numpy(np.stack([item.metadata for item in batch])).to(device)
        probabilities = classify_with_tta(
            self.registry.fusion, images, metadata, self.options.tta_views, self.options.max_forward_batch
        )
        return list(probabilities)

    def _finding(self, item: _Item, view_probabilities: np.ndarray) -> Finding:
        probability = float(np.mean(view_probabilities))
        result = {
            "diagnosis": decision.diagnosis(probability),
            "probability": probability,
            # Population std: the views are the whole fixed set, not a sample of random views.
            "uncertainty": float(np.std(view_probabilities)),
            "tta_probabilities": [float(p) for p in view_probabilities],
            "risk_band": decision.risk_band(probability),
            **item.partial,
        }
        return Finding(result=result, mask_png=item.mask_png, overlay_png=item.overlay_png, model=self.registry.provenance())

    def _batched(self, batch: list[_Item], step: Callable[[list[_Item]], list], error_code: str, outcomes: list):
        """Run ``step`` on the whole batch; if it fails, retry per item to isolate the culprit."""
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


def _isolated(work: Callable[[], object], error_code: str) -> object:
    try:
        return work()
    except Exception as exc:  # an unexpected per-item failure must not fail the batch
        logger.exception("unexpected failure processing one item")
        return ItemError(error_code, f"{type(exc).__name__}: {exc}")


def _notify(on_stage: Callable[[str], None] | None, stage: str) -> None:
    if on_stage is not None:
        on_stage(stage)
