"""Items 3 and 6: which Gate 1 runs, the classical segmenter's accuracy, the coverage gate."""

import pytest

from worker.pipeline.overlay import resize_mask
from worker.pipeline.pipeline import Finding, LesionInput, Pipeline, PipelineOptions, Rejection
from worker.pipeline.segmentation import ClassicalSegmenter
from worker.pipeline.synthetic import encode_jpeg, encode_png, make_lesion

CASES = [
    dict(),
    dict(ita=-50.0),
    dict(ita=70.0),
    dict(irregularity=0.8),
    dict(variegation=1.0),
    dict(hair=True),
    dict(hair=True, irregularity=0.6, variegation=0.7, ita=-20.0),
    dict(radius_frac=0.07),
    dict(radius_frac=0.4),
    dict(center=(150.0, 380.0), radius_frac=0.12),
    dict(size=(480, 640), irregularity=0.5),
    dict(ita=15.0, variegation=1.0, irregularity=1.0),
]


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("case", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "default" for c in CASES])
def test_classical_segmenter_reaches_dice_085_at_the_original_resolution(case):
    lesion = make_lesion(len(str(case)), **case)
    image = lesion.image
    mask = ClassicalSegmenter(512).segment([image])[0]
    assert mask.shape == (512, 512)
    back = resize_mask(mask, *image.shape[:2])
    assert dice(back, lesion.mask) >= 0.85


def test_plain_skin_has_no_lesion():
    skin = make_lesion(3, (300, 300), radius_frac=0.0).image
    assert not ClassicalSegmenter(256).segment([skin])[0].any()


def test_no_lesion_rejection_gives_coverage_and_is_configurable(classical_registry):
    skin = LesionInput(encode_png(make_lesion(3, (200, 200), radius_frac=0.0).image))
    tiny = LesionInput(encode_png(make_lesion(3, (400, 400), radius_frac=0.04).image))  # ~0.5% of the frame
    default = Pipeline(classical_registry, PipelineOptions(seg_size=128, cls_size=128, min_image_side=32))
    outcomes = default.run([skin, tiny])
    assert [o.code for o in outcomes] == ["no_lesion", "no_lesion"]
    assert outcomes[0].scores["coverage"] == 0.0 and "0.00%" in outcomes[0].detail
    assert 0.002 < outcomes[1].scores["coverage"] < 0.01 and "below the minimum 1.00%" in outcomes[1].detail
    lenient = Pipeline(classical_registry, PipelineOptions(
        seg_size=128, cls_size=128, min_image_side=32, min_coverage=0.001
    ))
    assert isinstance(lenient.run([tiny])[0], Finding)


def test_coverage_matches_the_true_lesion_area(classical_pipeline):
    lesion = make_lesion(8, (300, 450), radius_frac=0.25, irregularity=0.3)
    finding = classical_pipeline.run([LesionInput(encode_jpeg(lesion.image))])[0]
    assert finding.result.segmentation.coverage == pytest.approx(lesion.params["coverage"], rel=0.1)


def test_unet_checkpoint_means_unet_gate1_in_one_batch(unet_registry, small_options, forward_calls, monkeypatch):
    calls = forward_calls(unet_registry.scalpel)
    classical_used = []
    monkeypatch.setattr(ClassicalSegmenter, "segment", lambda self, images: classical_used.append(1) or [])
    images = [LesionInput(encode_png(make_lesion(i, (160, 200)).image)) for i in range(3)]
    blurry = LesionInput(encode_png(make_lesion(9, (160, 200), blur=2.0).image))
    outcomes = Pipeline(unet_registry, small_options).run(images[:2] + [blurry] + images[2:])
    assert len(outcomes) == 4 and isinstance(outcomes[2], Rejection)
    assert [c["batch"] for c in calls] == [3]  # one forward for all images that passed quality
    assert calls[0]["inputs"][0].shape[-2:] == (128, 128)
    assert not classical_used


def test_classical_gate1_when_no_scalpel(classical_registry, small_options):
    assert Pipeline(classical_registry, small_options).segmenter.kind == "classical"
