"""Items 2 and 3: models built once, eval/channels_last/inference_mode, provenance, segmenter choice."""

import hashlib
import json

import numpy as np
import pytest
import torch

from worker.pipeline.errors import ModelConfigError
from worker.pipeline.model_set import ModelSet
from worker.pipeline.pipeline import Finding, LesionInput, Pipeline
from worker.pipeline.synthetic import encode_png, make_lesion


def test_without_checkpoints_provenance_says_classical_and_untrained(classical_registry):
    provenance = classical_registry.provenance().model_dump(mode="json", exclude_unset=True)  # as rows store it
    assert provenance == {
        "segmenter": "classical",
        "weights": "untrained",
        "backend": "torch-cpu",
        "precision": "fp32",
        "scalpel": None,
        "fusion": {"name": "fusion-efficientnet-b3-meta", "version": "untrained-seed-0", "sha256": None, "seed": 0},
        "version": "untrained-seed-0",
        # No rule-out threshold calibrated: null, and the clinical default applies (docs/CLINICAL_RULES.md).
        "operating_point": {"threshold": 0.5, "temperature": 1.0, "target_sensitivity": None, "chosen_on": "default",
                            "rule_out_threshold": None, "rule_out_sensitivity": None},
    }
    assert json.loads(json.dumps(provenance)) == provenance
    assert classical_registry.device == torch.device("cpu")


def test_with_checkpoints_provenance_records_hashes_and_versions(unet_registry, checkpoint_dir):
    provenance = unet_registry.provenance()
    scalpel, fusion = provenance.scalpel, provenance.fusion
    assert scalpel is not None and fusion is not None
    assert provenance.segmenter == "unet" and provenance.weights == "trained"
    assert scalpel.name == "scalpel-unet-resnet34"
    assert scalpel.sha256 == hashlib.sha256((checkpoint_dir / "scalpel.pth").read_bytes()).hexdigest()
    assert scalpel.version == "sha256-" + scalpel.sha256[:12]
    assert fusion.version == "test-1"  # the checkpoint's own version entry
    assert fusion.seed is None
    assert fusion.sha256 == hashlib.sha256((checkpoint_dir / "fusion.pth").read_bytes()).hexdigest()


def test_unet_requested_without_scalpel_checkpoint_fails_clearly(tmp_path):
    expected = r"segmenter 'unet' needs a Scalpel checkpoint \(scalpel\.pth or best_scalpel\.pth\)"
    with pytest.raises(ModelConfigError, match=expected):
        ModelSet.load(tmp_path, device="cpu", segmenter="unet")
    with pytest.raises(ModelConfigError, match="MODEL_DIR"):
        ModelSet.load(None, device="cpu", segmenter="unet")


def test_classical_can_be_forced_even_with_a_scalpel_checkpoint(checkpoint_dir):
    registry = ModelSet.load(checkpoint_dir, device="cpu", segmenter="classical")
    assert registry.segmenter == "classical" and registry.scalpel is None
    assert registry.provenance().scalpel is None and registry.provenance().weights == "trained"


@pytest.mark.parametrize("kwargs", [{"segmenter": "otsu"}, {"device": "tpu"}, {"device": "not a device"}])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ModelConfigError):
        ModelSet.load(None, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_requested_without_gpu_is_a_config_error():
    with pytest.raises(ModelConfigError, match="no CUDA GPU"):
        ModelSet.load(None, device="cuda")


def test_untrained_fusion_is_seeded_and_leaves_global_rng_alone(classical_registry):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = ModelSet.load(None, device="cpu", seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    other = ModelSet.load(None, device="cpu", seed=1)
    weight = "head.0.weight"
    assert torch.equal(again.fusion.state_dict()[weight], classical_registry.fusion.state_dict()[weight])
    assert not torch.equal(other.fusion.state_dict()[weight], classical_registry.fusion.state_dict()[weight])
    assert other.provenance().fusion.seed == 1


def test_models_are_eval_frozen_channels_last(unet_registry):
    for model in (unet_registry.scalpel, unet_registry.fusion):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
        assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)


def test_both_gates_run_in_inference_mode_on_channels_last_batches(
    unet_registry, classical_registry, small_options, forward_calls
):
    image = encode_png(make_lesion(0, (160, 160)).image)
    scalpel_calls = forward_calls(unet_registry.scalpel)
    Pipeline(unet_registry, small_options).run([LesionInput(image)])
    assert scalpel_calls and all(c["inference_mode"] and c["channels_last"] for c in scalpel_calls)

    fusion_calls = forward_calls(classical_registry.fusion)
    finding = Pipeline(classical_registry, small_options).run([LesionInput(image)])[0]
    assert isinstance(finding, Finding)
    assert fusion_calls and all(c["inference_mode"] and c["channels_last"] for c in fusion_calls)
    assert finding.model == classical_registry.provenance()


def test_same_seed_same_untrained_probability_across_registries(small_options):
    image = encode_png(make_lesion(3, (160, 160)).image)
    # On torch: the seed makes the weights; that OpenVINO runs them alike is test_backends' job.
    first, second = (
        Pipeline(ModelSet.load(None, device="cpu", seed=7, backend="torch"), small_options).run([LesionInput(image)])[0]
        for _ in range(2)
    )
    assert first.result.tta_probabilities == second.result.tta_probabilities
    assert np.isfinite(first.result.probability)
