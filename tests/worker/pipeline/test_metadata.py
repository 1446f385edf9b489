"""Item 4: the 11 metadata inputs carry age, sex and site (the original filled only age)."""

import numpy as np
import pytest

from worker.pipeline.errors import MetadataError
from worker.pipeline.metadata import encode_metadata
from worker.pipeline.pipeline import Finding, ItemError, LesionInput, Pipeline
from worker.pipeline.synthetic import encode_png, make_lesion


def test_layout_is_age_then_sex_then_site_one_hot():
    vector = encode_metadata(70, "female", "palms/soles")
    expected = np.zeros(11, dtype=np.float32)
    expected[0] = 1.0  # (70 - 50) / 20
    expected[2] = 1.0  # female
    expected[4 + 4] = 1.0  # palms/soles is the fifth site
    np.testing.assert_array_equal(vector, expected)
    assert vector.dtype == np.float32


def test_missing_values_fall_back_to_unknown_and_the_age_centre():
    vector = encode_metadata(None)
    assert vector[0] == 0.0 and vector[3] == 1.0 and vector[10] == 1.0 and vector.sum() == 2.0
    np.testing.assert_array_equal(encode_metadata(None, None, None), vector)


def test_every_site_has_its_own_input_and_labels_are_case_insensitive():
    sites = ["head/neck", "upper extremity", "lower extremity", "torso", "palms/soles", "oral/genital", "unknown"]
    rows = np.stack([encode_metadata(40, "Male", site.upper()) for site in sites])
    np.testing.assert_array_equal(rows[:, 4:], np.eye(7, dtype=np.float32))
    assert encode_metadata(40, "male", "posterior torso")[7] == 1.0


def test_the_encoder_reads_the_one_vocabulary_and_its_aliases():
    for raw_sex, sex in (("m", "male"), ("F", "female"), ("n/a", "unknown")):
        for raw_site, site in (("head_neck", "head/neck"), ("Lateral Torso", "torso"), ("", "unknown")):
            np.testing.assert_array_equal(encode_metadata(40, raw_sex, raw_site), encode_metadata(40, sex, site))


@pytest.mark.parametrize(
    "age, sex, site", [(-1, "male", "torso"), (121, "male", "torso"), (30, "other", "torso"), (30, "male", "scalp")]
)
def test_out_of_range_values_are_refused(age, sex, site):
    with pytest.raises(MetadataError):
        encode_metadata(age, sex, site)


def test_metadata_reaches_the_fusion_model_for_every_view(classical_registry, small_options, forward_calls):
    calls = forward_calls(classical_registry.fusion.brain)
    image = encode_png(make_lesion(1, (160, 160)).image)
    items = [
        LesionInput(image, age=30, sex="male", site="head/neck"), LesionInput(image, age=80, sex="female", site="torso")
    ]
    outcomes = Pipeline(classical_registry, small_options).run(items)
    assert all(isinstance(o, Finding) for o in outcomes)
    fed = np.concatenate([c["inputs"][0].numpy() for c in calls])
    views = small_options.tta_views
    encoded = np.stack([encode_metadata(30, "male", "head/neck"), encode_metadata(80, "female", "torso")])
    expected = np.repeat(encoded, views, axis=0)
    np.testing.assert_array_equal(fed, expected)


def test_invalid_metadata_fails_only_that_item(classical_pipeline):
    image = encode_png(make_lesion(1, (160, 160)).image)
    outcomes = classical_pipeline.run([LesionInput(image, sex="robot"), LesionInput(image, age=40)])
    assert isinstance(outcomes[0], ItemError) and outcomes[0].code == "invalid_metadata"
    assert "robot" in outcomes[0].detail
    assert isinstance(outcomes[1], Finding)
