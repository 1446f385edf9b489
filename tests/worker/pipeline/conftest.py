"""Shared fixtures for the pipeline tests: small sizes keep EfficientNet-B3 fast on a CPU."""

from pathlib import Path

import pytest
import torch

from worker.pipeline.model_set import ModelSet
from worker.pipeline.networks import FusionNet, build_scalpel
from worker.pipeline.pipeline import Pipeline, PipelineOptions

SMALL = PipelineOptions(seg_size=128, cls_size=128, min_image_side=32)


def _seeded(build, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@pytest.fixture(scope="session")
def small_options() -> PipelineOptions:
    return SMALL


@pytest.fixture(scope="session")
def classical_registry() -> ModelSet:
    """No checkpoints: classical Gate 1, seeded untrained Fusion, on torch (hooks see the calls)."""
    return ModelSet.load(None, device="cpu", backend="torch")


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    """A MODEL_DIR holding Scalpel and Fusion checkpoints under the new file names."""
    directory = tmp_path_factory.mktemp("models")
    torch.save(_seeded(build_scalpel, 11).state_dict(), directory / "scalpel.pth")
    torch.save({"model_state_dict": _seeded(FusionNet, 12).state_dict(), "version": "test-1"}, directory / "fusion.pth")
    return directory


@pytest.fixture(scope="session")
def unet_registry(checkpoint_dir) -> ModelSet:
    return ModelSet.load(checkpoint_dir, device="cpu", backend="torch")


@pytest.fixture(scope="session")
def classical_pipeline(classical_registry) -> Pipeline:
    return Pipeline(classical_registry, SMALL)


@pytest.fixture
def forward_calls():
    """Record every forward call of a module: batch size, inference mode, memory format."""
    handles = []

    def attach(module: torch.nn.Module) -> list[dict]:
        calls: list[dict] = []

        def hook(_module, inputs, _output):
            image = inputs[0]
            calls.append(
                {
                    "batch": image.shape[0],
                    "inference_mode": torch.is_inference_mode_enabled(),
                    "channels_last": image.dim() == 4 and image.is_contiguous(memory_format=torch.channels_last),
                    "inputs": [x.detach().clone() for x in inputs],
                }
            )

        handles.append(module.register_forward_hook(hook))
        return calls

    yield attach
    for handle in handles:
        handle.remove()
