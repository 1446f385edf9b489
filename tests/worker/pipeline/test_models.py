"""Item 1: the original's checkpoints load unchanged and give the original's outputs."""

import hashlib

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from worker.pipeline.errors import CheckpointMismatchError, ModelConfigError
from worker.pipeline.model_set import ModelSet
from worker.pipeline.networks import load_checkpoint


class OriginalFusion(nn.Module):
    """The original training code's Fusion module, written as it was (classifier swapped out)."""

    def __init__(self):
        super().__init__()
        self.eye = timm.create_model("tf_efficientnet_b3", pretrained=False)
        self.eye.classifier = nn.Identity()
        self.brain = nn.Sequential(
            nn.Linear(11, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 32), nn.ReLU()
        )
        self.head = nn.Sequential(
            nn.Linear(1568, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.4), nn.Linear(512, 1)
        )

    def forward(self, image, meta):
        return self.head(torch.cat([self.eye(image), self.brain(meta)], dim=1))


def _trained_looking(module: nn.Module, seed: int) -> nn.Module:
    """Perturb every tensor, BN statistics included, as training would (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.8 + 0.4 * torch.rand(tensor.shape, generator=generator))
            elif name.endswith("running_mean"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif tensor.numel() > 1:
                tensor.add_(0.1 * tensor.std() * torch.randn(tensor.shape, generator=generator))
    return module.eval()


@pytest.fixture(scope="module")
def original_models(tmp_path_factory):
    torch.manual_seed(5)
    scalpel = _trained_looking(smp.Unet(encoder_name="resnet34", encoder_weights=None, in_channels=3, classes=1), 1)
    fusion = _trained_looking(OriginalFusion(), 2)
    with torch.no_grad():
        fusion.head[4].weight.mul_(100.0)  # spread the logits so a wrong load cannot hide
    directory = tmp_path_factory.mktemp("original")
    # The original's formats: Scalpel a bare state_dict with "model." keys, Fusion nested.
    torch.save({f"model.{k}": v for k, v in scalpel.state_dict().items()}, directory / "best_scalpel.pth")
    torch.save({"epoch": 14, "model_state_dict": fusion.state_dict()}, directory / "best_fusion.pth")
    return scalpel, fusion, directory


def test_original_checkpoints_load_and_match_original_outputs(original_models):
    scalpel, fusion, directory = original_models
    registry = ModelSet.load(directory, device="cpu", segmenter="auto")

    image = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    meta = torch.zeros(2, 11)
    meta[:, 0] = torch.tensor([1.0, -1.0])
    with torch.inference_mode():
        expected_mask_logits, ours_mask_logits = scalpel(image), registry.scalpel(image)
        expected_logits, ours_logits = fusion(image, meta), registry.fusion(image, meta)
    # channels_last kernels round differently from NCHW; the tolerances are far below any
    # difference a wrong or partial load makes (asserted below).
    torch.testing.assert_close(ours_mask_logits, expected_mask_logits, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ours_logits, expected_logits, rtol=1e-4, atol=1e-4)
    assert float((expected_logits[0] - expected_logits[1]).abs()) > 1e-2
    untrained = ModelSet.load(None, device="cpu")
    with torch.inference_mode():
        assert float((untrained.fusion(image, meta) - expected_logits).abs().max()) > 1e-2

    provenance = registry.provenance()
    assert provenance.scalpel is not None and provenance.fusion is not None
    assert provenance.segmenter == "unet" and provenance.weights == "trained"
    assert provenance.scalpel.sha256 == hashlib.sha256((directory / "best_scalpel.pth").read_bytes()).hexdigest()
    assert provenance.fusion.sha256 == hashlib.sha256((directory / "best_fusion.pth").read_bytes()).hexdigest()


def _tiny():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}, "epoch": 3},
        lambda sd: {f"model.{k}": v for k, v in sd.items()},
        lambda sd: {"model_state_dict": {f"model.{k}": v for k, v in sd.items()}},
    ],
    ids=["bare", "nested", "prefixed", "nested+prefixed"],
)
def test_checkpoint_layouts_all_load_the_same_weights(tmp_path, wrap):
    source = _tiny()
    torch.save(wrap(source.state_dict()), tmp_path / "ckpt.pth")
    target = _tiny()
    info = load_checkpoint(target, tmp_path / "ckpt.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert len(info.sha256) == 64 and info.version


def test_missing_and_unexpected_keys_are_named_and_nothing_is_loaded(tmp_path):
    state = _tiny().state_dict()
    state["2.bias_extra"] = state.pop("2.bias")
    torch.save(state, tmp_path / "bad.pth")
    target = _tiny()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as caught:
        load_checkpoint(target, tmp_path / "bad.pth")
    message = str(caught.value)
    assert "missing keys (1): 2.bias" in message
    assert "unexpected keys (1): 2.bias_extra" in message
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), "a failed load must not change any weight"


def test_shape_mismatch_is_named(tmp_path):
    other = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 1))
    torch.save(other.state_dict(), tmp_path / "bad.pth")
    mismatch = r"shape mismatches .*0\.weight \(checkpoint \(5, 3\), model \(4, 3\)\)"
    with pytest.raises(CheckpointMismatchError, match=mismatch):
        load_checkpoint(_tiny(), tmp_path / "bad.pth")


def test_registry_refuses_a_checkpoint_for_another_architecture(tmp_path):
    torch.save(smp.Unet("resnet18", encoder_weights=None, classes=1).state_dict(), tmp_path / "scalpel.pth")
    missing = r"scalpel\.pth does not fit the model: missing keys \(96\)"
    with pytest.raises(CheckpointMismatchError, match=missing) as caught:
        ModelSet.load(tmp_path, device="cpu")
    assert "encoder.layer1.2.conv1.weight" in caught.value.missing


def test_unreadable_checkpoint_is_a_config_error(tmp_path):
    (tmp_path / "fusion.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelConfigError, match="is not a PyTorch checkpoint"):
        ModelSet.load(tmp_path, device="cpu")
