"""Issue 21 in the pipeline: the minimum resolution is a gate before the networks, and every
finding carries its disposition, decided from the result, the patient's metadata and the
model's operating points (shared.clinical.disposition)."""

from __future__ import annotations

import torch

from shared.config import Settings
from worker.pipeline import quality
from worker.pipeline.model_set import ModelSet, ModelSource
from worker.pipeline.networks import FusionNet
from worker.pipeline.pipeline import Finding, LesionInput, Pipeline, PipelineOptions, Rejection
from worker.pipeline.synthetic import encode_jpeg, encode_png, make_lesion

from .conftest import SMALL, _seeded


def test_the_minimum_resolution_defaults_to_256_everywhere():
    assert PipelineOptions().min_image_side == quality.DEFAULT_MIN_IMAGE_SIDE == 256
    assert Settings(_env_file=None).min_image_side == 256
    settings = Settings(_env_file=None, min_image_side=300)
    assert PipelineOptions.from_settings(settings, "cpu").min_image_side == 300


def test_with_default_options_24_px_is_rejected_before_the_networks_and_256_px_is_analysed(
    classical_registry, forward_calls
):
    pipeline = Pipeline(classical_registry)  # the defaults: 512 px networks, 5 views, 256 px minimum
    assert pipeline.options == PipelineOptions()
    calls = forward_calls(pipeline.registry.fusion)
    tiny = pipeline.run([LesionInput(encode_png(make_lesion(1, (24, 24)).image), age=50, sex="female")])[0]
    assert isinstance(tiny, Rejection) and tiny.code == "low_resolution"
    assert "24 x 24 pixels" in tiny.detail and "at least 256 pixels" in tiny.detail
    assert tiny.scores == {"width": 24, "height": 24, "min_image_side": 256}
    assert calls == []  # no network ran for it

    ok = pipeline.run([LesionInput(encode_png(make_lesion(2, (256, 256), radius_frac=0.25).image), age=50)])[0]
    assert isinstance(ok, Finding), ok
    assert ok.result.disposition == "clinician_review" and calls  # analysed, by the networks


def test_the_shorter_side_decides_whatever_the_orientation(classical_registry):
    pipeline = Pipeline(classical_registry, PipelineOptions(seg_size=128, cls_size=128, min_image_side=200))
    wide = make_lesion(3, (150, 600)).image  # 600 wide, 150 high: the shorter side is too short
    enough = make_lesion(4, (200, 260)).image
    outcomes = pipeline.run([LesionInput(encode_jpeg(wide)), LesionInput(encode_jpeg(enough))])
    assert isinstance(outcomes[0], Rejection) and outcomes[0].code == "low_resolution"
    assert "600 x 150 pixels" in outcomes[0].detail
    assert isinstance(outcomes[1], Finding)  # exactly the minimum is enough


def _calibrated_fusion(tmp_path, calibration: dict) -> ModelSet:
    """A Fusion checkpoint whose card says trained weights with this calibration."""
    path = tmp_path / "fusion.pth"
    card = {"kind": "fusion", "version": "calibrated-1", "calibration": calibration}
    torch.save({"model_state_dict": _seeded(FusionNet, 12).state_dict(), "version": "calibrated-1",
                "model_card": card}, path)
    return ModelSet.load(None, device="cpu", backend="torch", fusion_source=ModelSource(path))


def test_the_disposition_follows_the_model_s_rule_out_threshold_and_the_patient(tmp_path):
    # A high decision threshold keeps this seeded model's ~0.5 away from "near threshold" and
    # from urgent referral, so only the rule-out threshold and the metadata decide.
    calibrated = _calibrated_fusion(tmp_path, {"threshold": 0.9, "temperature": 1.0, "target_sensitivity": 0.95,
                                               "chosen_on": "validation", "rule_out_threshold": 0.99,
                                               "rule_out_sensitivity": 0.95})
    point = calibrated.provenance().operating_point
    assert point is not None and point.rule_out_threshold == 0.99 and point.rule_out_sensitivity == 0.95
    assert calibrated.weights == "trained"
    image = encode_png(make_lesion(5, (240, 320), radius_frac=0.22).image)
    adult = dict(age=50, sex="female", site="torso")
    pipeline = Pipeline(calibrated, SMALL)
    routine, sole, child, unknown = pipeline.run([
        LesionInput(image, **adult),
        LesionInput(image, age=50, sex="female", site="palms soles"),  # an alias of palms/soles
        LesionInput(image, age=12, sex="female", site="torso"),
        LesionInput(image),
    ])
    for finding in (routine, sole, child, unknown):
        assert isinstance(finding, Finding)
    assert 0.1 < routine.result.probability < 0.8 and routine.result.uncertainty < 0.15
    assert routine.result.disposition == "routine" and routine.result.disposition_reasons == ["below_rule_out"]
    assert routine.result.safety_netting
    assert sole.result.disposition == "clinician_review"
    assert sole.result.disposition_reasons == ["weakly_evidenced_site"]
    assert child.result.disposition_reasons == ["age_under_18"]
    assert unknown.result.disposition_reasons == ["missing_metadata"]

    # Without a calibrated rule-out threshold the conservative default (0.1) applies: review.
    uncalibrated = _calibrated_fusion(tmp_path, {"threshold": 0.9, "temperature": 1.0, "chosen_on": "validation"})
    assert uncalibrated.provenance().operating_point.rule_out_threshold is None
    plain = Pipeline(uncalibrated, SMALL).run([LesionInput(image, **adult)])[0]
    assert isinstance(plain, Finding) and plain.result.disposition == "clinician_review"
    assert plain.result.disposition_reasons == ["above_rule_out"] and plain.result.safety_netting is None


def test_a_borderline_pass_of_a_gate_is_a_review_reason(classical_registry):
    lesion = encode_png(make_lesion(6, (240, 320), radius_frac=0.22).image)
    score = Pipeline(classical_registry, SMALL).run([LesionInput(lesion)])[0]
    assert isinstance(score, Finding)
    # The same photo, against a blur gate it only just passes.
    strict = PipelineOptions(seg_size=128, cls_size=128, min_image_side=32,
                             blur_threshold=score.result.quality.blur_score * 0.9)
    finding = Pipeline(classical_registry, strict).run([LesionInput(lesion, age=40, sex="male", site="torso")])[0]
    assert isinstance(finding, Finding) and "borderline_quality" in finding.result.disposition_reasons
