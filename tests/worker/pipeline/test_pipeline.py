"""Items 6 and 10: the batch API, result contract, artifacts, and per-item isolation."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from worker.pipeline import abcd
from worker.pipeline.decode import decode_image
from worker.pipeline.pipeline import Finding, ItemError, LesionInput, Pipeline, PipelineOptions, Rejection
from worker.pipeline.synthetic import encode_jpeg, encode_png, make_lesion


def _png_size(data: bytes, format: str = "PNG") -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == format
        return image.height, image.width


def _png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def test_mixed_batch_returns_one_outcome_per_item_in_order(classical_pipeline):
    good = lambda seed: LesionInput(encode_jpeg(make_lesion(seed, (180, 240)).image), age=45)  # noqa: E731
    items = [
        good(1),
        LesionInput(b"not an image"),
        LesionInput(encode_png(make_lesion(2, (180, 240), blur=2.0).image)),
        LesionInput(encode_png(make_lesion(3, (180, 240), radius_frac=0.0).image)),
        LesionInput(encode_png(make_lesion(4, (180, 240)).image), age=200),
        good(5),
    ]
    stages = []
    outcomes = classical_pipeline.run(items, on_stage=stages.append)
    assert stages == ["segmentation", "classification"]
    kinds = [(type(o).__name__, getattr(o, "code", None)) for o in outcomes]
    assert kinds == [
        ("Finding", None),
        ("Rejection", "unreadable_image"),
        ("Rejection", "blurry"),
        ("Rejection", "no_lesion"),
        ("ItemError", "invalid_metadata"),
        ("Finding", None),
    ]
    assert classical_pipeline.run([]) == []


def test_result_has_exactly_the_contract_fields_and_is_json(classical_pipeline):
    lesion = make_lesion(4, (240, 320), irregularity=0.4, variegation=0.5)
    item = LesionInput(encode_jpeg(lesion.image), age=52, sex="female", site="torso", pixel_spacing_mm=0.05)
    finding = classical_pipeline.run([item])[0]
    stored = finding.result.model_dump(mode="json", exclude_unset=True)  # what the pipeline fills in
    assert json.loads(json.dumps(stored)) == stored
    assert set(stored) == {
        "diagnosis", "probability", "uncertainty", "tta_probabilities", "risk_band",
        "segmentation", "concepts", "equity", "quality", "disposition", "disposition_reasons", "safety_netting",
    }
    assert set(stored["segmentation"]) == {"coverage"}
    assert set(stored["concepts"]) == {"asymmetry", "border", "color", "diameter_px", "diameter_mm"}
    assert set(stored["equity"]) == {"ita_degrees", "skin_group", "bias_warning"}
    assert set(stored["quality"]) == {"blur_score"}
    result = finding.result
    assert result.diagnosis in ("melanoma", "benign") and result.risk_band in ("high", "medium", "low")
    assert len(result.tta_probabilities) == 5
    assert 0 <= result.probability <= 1 and result.uncertainty >= 0
    assert result.equity.ita_degrees == pytest.approx(lesion.params["ita"], abs=1.0)
    assert result.concepts.diameter_px == pytest.approx(lesion.params["diameter_px"], rel=0.05)
    assert result.concepts.diameter_mm == pytest.approx(result.concepts.diameter_px * 0.05)
    assert result.quality.blur_score > 100
    assert finding.model.weights == "untrained"
    # Untrained weights: always a clinician's review, for that reason first, never routine.
    assert result.disposition == "clinician_review" and result.disposition_reasons[0] == "weights_not_trained"
    assert result.safety_netting is None


def test_asymmetry_is_low_for_a_round_lesion_off_centre(classical_pipeline):
    lesion = make_lesion(5, (300, 400), radius_frac=0.15, center=(90.0, 110.0))
    concepts = classical_pipeline.run([LesionInput(encode_png(lesion.image))])[0].result.concepts
    assert concepts.asymmetry < 0.08 and concepts.border < 0.08


@pytest.mark.parametrize(
    "size, expected", [((300, 480), (300, 480)), ((1200, 2000), (614, 1024)), ((900, 500), (900, 500))]
)
def test_mask_and_overlay_keep_the_image_aspect_ratio(classical_registry, size, expected):
    # The synthetic lesion is smooth once brought to the blur gate's 1024-px working size (it
    # scores ~65 there at 1200 x 2000; docs/DECISIONS.md, issue 27): the gate is not what this
    # test is about, so it is off here.
    pipeline = Pipeline(classical_registry, PipelineOptions(seg_size=128, cls_size=128, min_image_side=32,
                                                            blur_threshold=0.0))
    lesion = make_lesion(6, size, radius_frac=0.2)
    finding = pipeline.run([LesionInput(encode_jpeg(lesion.image))])[0]
    assert _png_size(finding.mask_png) == expected
    assert _png_size(finding.overlay_jpeg, "JPEG") == expected
    mask = _png_array(finding.mask_png).astype(np.uint8) * 255 > 127  # 1-bit: True/False
    truth = np.asarray(Image.fromarray(lesion.mask).resize(expected[::-1], Image.NEAREST))
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.85
    overlay = _png_array(finding.overlay_jpeg).astype(int)
    inside, outside = overlay[mask & ~np.roll(mask, 8, axis=0)], overlay[~mask]
    # Cyan tint: inside the lesion blue/green rise relative to red compared with the skin.
    assert (inside[:, 2] - inside[:, 0]).mean() > (outside[:, 2] - outside[:, 0]).mean() + 30


def test_one_failing_item_in_postprocessing_fails_alone(classical_pipeline, monkeypatch):
    original = abcd.compute_concepts

    def flaky(image, mask, *args, **kwargs):
        if image.shape[1] / image.shape[0] > 1.6:  # only the 200x333 upload (frames are downscaled)
            raise RuntimeError("boom")
        return original(image, mask, *args, **kwargs)

    monkeypatch.setattr(abcd, "compute_concepts", flaky)
    items = [LesionInput(encode_png(make_lesion(i, (200, w)).image)) for i, w in enumerate((300, 333, 300))]
    outcomes = classical_pipeline.run(items)
    assert isinstance(outcomes[0], Finding) and isinstance(outcomes[2], Finding)
    assert isinstance(outcomes[1], ItemError) and outcomes[1].code == "internal_error" and "boom" in outcomes[1].detail


def test_a_failing_gate2_batch_is_retried_per_item(classical_registry, monkeypatch):
    options = PipelineOptions(seg_size=128, cls_size=128, min_image_side=32, tta_views=1)
    pipeline = Pipeline(classical_registry, options)
    real_classify = pipeline._classify
    batches = []

    def classify(batch):
        batches.append(len(batch))
        if any(item.image.shape[1] == 333 for item in batch):
            raise RuntimeError("device fault on this image")
        return real_classify(batch)

    monkeypatch.setattr(pipeline, "_classify", classify)
    items = [LesionInput(encode_png(make_lesion(i, (200, w)).image)) for i, w in enumerate((300, 333, 300))]
    outcomes = pipeline.run(items)
    assert batches == [3, 1, 1, 1]
    assert [type(o) for o in outcomes] == [Finding, ItemError, Finding]
    assert outcomes[1].code == "classification_failed" and "device fault" in outcomes[1].detail


def test_a_failing_gate1_batch_is_retried_per_item(classical_pipeline, monkeypatch):
    segmenter = classical_pipeline.segmenter
    real_segment = type(segmenter).segment
    items = [LesionInput(encode_png(make_lesion(i, (200, w)).image)) for i, w in enumerate((333, 300))]
    poisoned = segmenter.network_input(decode_image(items[0].image, 40_000_000))

    def segment(self, inputs):
        if any(np.array_equal(x, poisoned) for x in inputs):
            raise MemoryError("out of memory")
        return real_segment(self, inputs)

    monkeypatch.setattr(type(segmenter), "segment", segment)
    outcomes = classical_pipeline.run(items)
    assert isinstance(outcomes[0], ItemError) and outcomes[0].code == "segmentation_failed"
    assert isinstance(outcomes[1], Finding)


@pytest.mark.parametrize(
    "bad", [dict(tta_views=0), dict(tta_views=9), dict(seg_size=100), dict(min_coverage=1.5), dict(min_image_side=0)]
)
def test_invalid_options_are_refused(bad):
    with pytest.raises(ValueError):
        PipelineOptions(**bad)


def test_rejections_and_errors_carry_readable_details(classical_pipeline):
    outcomes = classical_pipeline.run(
        [LesionInput(b""), LesionInput(encode_png(make_lesion(1, (100, 100)).image), pixel_spacing_mm=-1)]
    )
    assert isinstance(outcomes[0], Rejection) and "empty" in outcomes[0].detail
    assert isinstance(outcomes[1], ItemError) and "pixel_spacing_mm" in outcomes[1].detail
