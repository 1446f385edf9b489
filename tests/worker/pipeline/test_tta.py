"""Item 9: deterministic dihedral TTA on the device; probability, uncertainty, risk band."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from worker.pipeline.decision import diagnosis, risk_band
from worker.pipeline.pipeline import Finding, LesionInput, Pipeline, PipelineOptions
from worker.pipeline.synthetic import encode_jpeg, make_lesion
from worker.pipeline.tta import DIHEDRAL_VIEWS, classify_with_tta, expand_views, view_names

NUMPY_VIEWS = {
    "identity": lambda a: a,
    "hflip": lambda a: a[..., ::-1],
    "vflip": lambda a: a[..., ::-1, :],
    "rot90": lambda a: np.rot90(a, 1, axes=(-2, -1)),
    "rot180": lambda a: np.rot90(a, 2, axes=(-2, -1)),
    "rot270": lambda a: np.rot90(a, 3, axes=(-2, -1)),
    "transpose": lambda a: np.swapaxes(a, -2, -1),
    "antitranspose": lambda a: np.rot90(np.swapaxes(a, -2, -1), 2, axes=(-2, -1)),
}


def test_views_are_the_eight_distinct_dihedral_transforms():
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    outputs = []
    for name, view in DIHEDRAL_VIEWS.items():
        np.testing.assert_array_equal(view(image).numpy(), NUMPY_VIEWS[name](image.numpy()))
        outputs.append(view(image).numpy().tobytes())
    assert len(set(outputs)) == 8
    assert view_names(5) == ["identity", "hflip", "vflip", "rot90", "rot180"]
    for bad in (0, 9):
        with pytest.raises(ValueError):
            view_names(bad)


def test_expand_views_is_item_major_and_channels_last():
    images = torch.randn(3, 3, 8, 8)
    expanded = expand_views(images, 4)
    assert expanded.shape == (12, 3, 8, 8) and expanded.is_contiguous(memory_format=torch.channels_last)
    for item in range(3):
        for v, name in enumerate(view_names(4)):
            torch.testing.assert_close(expanded[item * 4 + v], DIHEDRAL_VIEWS[name](images[item]))


class QuadrantModel(nn.Module):
    """A view-sensitive stand-in for Fusion: logit = top-left brightness - the rest, + age."""

    def forward(self, image, metadata):
        half = image.shape[-1] // 2
        top_left = image[:, :, :half, :half].mean(dim=(1, 2, 3))
        return (4 * (top_left - image.mean(dim=(1, 2, 3))) + metadata[:, 0]).unsqueeze(1)


def test_probability_is_the_mean_and_uncertainty_the_std_of_fixed_views(classical_registry):
    registry = dataclasses.replace(classical_registry, fusion=QuadrantModel())
    pipeline = Pipeline(registry, PipelineOptions(seg_size=128, cls_size=128, min_image_side=32, tta_views=8))
    lesion = make_lesion(2, (200, 200), center=(60.0, 60.0), radius_frac=0.2)  # lesion top-left
    finding = pipeline.run([LesionInput(encode_jpeg(lesion.image), age=50)])[0]
    result = finding.result
    views = np.array(result.tta_probabilities)
    assert len(views) == 8 and np.ptp(views) > 0.05  # views really differ
    assert result.probability == pytest.approx(views.mean(), abs=1e-12)
    assert result.uncertainty == pytest.approx(views.std(), abs=1e-12)
    # The identity view sees the dark lesion top-left; the 180-degree rotation moves it away.
    identity, rot180 = views[0], views[4]
    assert identity < rot180


def test_same_image_same_probability_every_call_and_in_any_batch(classical_pipeline):
    image = encode_jpeg(make_lesion(6, (200, 240), irregularity=0.5).image)
    other = encode_jpeg(make_lesion(7, (200, 240)).image)
    first = classical_pipeline.run([LesionInput(image, age=60)])[0].result
    second = classical_pipeline.run([LesionInput(image, age=60)])[0].result
    assert first.tta_probabilities == second.tta_probabilities
    assert first.probability == second.probability
    in_batch = classical_pipeline.run([LesionInput(other), LesionInput(image, age=60)])[1].result
    np.testing.assert_allclose(in_batch.tta_probabilities, first.tta_probabilities, atol=1e-5)


def test_gate2_is_one_forward_over_n_times_views(classical_registry, forward_calls):
    calls = forward_calls(classical_registry.fusion)
    pipeline = Pipeline(classical_registry, PipelineOptions(seg_size=128, cls_size=128, min_image_side=32, tta_views=3))
    items = [LesionInput(encode_jpeg(make_lesion(i, (160, 160)).image)) for i in range(4)]
    outcomes = pipeline.run(items)
    assert all(isinstance(o, Finding) for o in outcomes)
    assert [c["batch"] for c in calls] == [12]
    assert all(len(o.result.tta_probabilities) == 3 for o in outcomes)
    # The views are the identity batch transformed on the tensor, not re-decoded images.
    fed = calls[0]["inputs"][0]
    torch.testing.assert_close(fed[1], torch.flip(fed[0], dims=(-1,)))
    torch.testing.assert_close(fed[2], torch.flip(fed[0], dims=(-2,)))


def test_large_gate2_batches_are_split_without_changing_results():
    model = QuadrantModel()
    images = torch.randn(5, 3, 16, 16)
    metadata = torch.zeros(5, 11)
    whole = classify_with_tta(model, images, metadata, views=5, max_batch=1000)
    split = classify_with_tta(model, images, metadata, views=5, max_batch=7)
    np.testing.assert_allclose(whole, split, atol=1e-7)
    assert whole.shape == (5, 5)


@pytest.mark.parametrize(
    "probability, label, band",
    [(0.0, "benign", "low"), (0.5, "benign", "low"), (0.5001, "melanoma", "medium"), (0.8, "melanoma", "medium"),
     (0.8001, "melanoma", "high"), (1.0, "melanoma", "high")],
)
def test_diagnosis_and_risk_band_thresholds(probability, label, band):
    assert diagnosis(probability) == label and risk_band(probability) == band
