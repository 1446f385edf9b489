"""The backend seam: torch and OpenVINO give the same results, cached IR, provenance, GPU knobs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino
import pytest
import torch

from worker.pipeline.backends import EngineOptions, TorchBackend, gate1_chunk, resolve_backend
from worker.pipeline.errors import ModelConfigError
from worker.pipeline.model_set import ModelSet
from worker.pipeline.pipeline import Finding, LesionInput, Pipeline, PipelineOptions
from worker.pipeline.synthetic import encode_jpeg, make_lesion
from worker.pipeline.tta import DIHEDRAL_VIEWS, NUMPY_VIEWS, expand_views, expand_views_numpy

PROBABILITY_FIELDS = {"probability", "uncertainty", "tta_probabilities", "diagnosis", "risk_band"}
ROOT = Path(__file__).resolve().parents[3]
# What a worker whose IR is cached must not import (issue 27: ~560 MiB of RSS between them).
TORCH_SIDE = ("torch", "torchvision", "timm", "segmentation_models_pytorch", "albumentations")


def _lesions(count: int) -> list[LesionInput]:
    return [
        LesionInput(
            encode_jpeg(
                make_lesion(i, (240, 320), radius_frac=0.2 + 0.02 * i, irregularity=0.15 * i, variegation=0.2).image
            ),
            age=40 + 7 * i,
            sex=("male", "female", "unknown")[i % 3],
            site="torso",
        )
        for i in range(count)
    ]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def ir_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engine")


@pytest.fixture(scope="module")
def both(checkpoint_dir, ir_cache):
    """The same checkpoints on torch and on OpenVINO fp32, at the test sizes (bf16 and int8 are
    compared with fp32 within their own bounds in tests/training/test_precision.py)."""
    options = PipelineOptions(seg_size=128, cls_size=128, min_image_side=32, ir_cache_dir=ir_cache, precision="fp32")
    # Loaded as the worker loads them (worker/runtime.py): OpenVINO's first start converts and
    # records the checkpoints beside the IR.
    return {
        name: Pipeline(ModelSet.load(checkpoint_dir, device="cpu", backend=name, ir_cache_dir=ir_cache), options)
        for name in ("torch", "openvino")
    }


def _no_conversion(*args, **kwargs):
    raise AssertionError("converted again despite a cached IR")


def test_openvino_matches_torch_probabilities_and_masks(both):
    items = _lesions(4)
    prepared = {name: pipeline.prepare(items) for name, pipeline in both.items()}
    inputs = np.stack([item.seg_input for item in prepared["torch"].items])
    masks = {name: pipeline.backend.segment(inputs) for name, pipeline in both.items()}
    assert masks["torch"].shape == (4, 128, 128) and masks["torch"].any()
    for torch_mask, ov_mask in zip(masks["torch"], masks["openvino"], strict=True):
        assert _iou(torch_mask, ov_mask) >= 0.99

    results = {name: pipeline.run(items) for name, pipeline in both.items()}
    for torch_outcome, ov_outcome in zip(results["torch"], results["openvino"], strict=True):
        assert isinstance(torch_outcome, Finding) and isinstance(ov_outcome, Finding)
        np.testing.assert_allclose(
            ov_outcome.result.tta_probabilities, torch_outcome.result.tta_probabilities, atol=1e-4
        )
        assert ov_outcome.result.probability == pytest.approx(torch_outcome.result.probability, abs=1e-4)


def test_switching_backend_changes_only_the_backend_name_and_network_bits(both):
    results = {name: pipeline.run(_lesions(3)) for name, pipeline in both.items()}
    for torch_outcome, ov_outcome in zip(results["torch"], results["openvino"], strict=True):
        assert torch_outcome.model.backend == "torch-cpu" and ov_outcome.model.backend == "openvino-cpu"
        assert torch_outcome.model.model_copy(update={"backend": None}) == ov_outcome.model.model_copy(
            update={"backend": None}
        )
        assert torch_outcome.result.model_dump(exclude=PROBABILITY_FIELDS) == ov_outcome.result.model_dump(
            exclude=PROBABILITY_FIELDS
        )
        # Masks from the two engines agree (IoU >= 0.99), so the artifacts are the same pictures.
        assert torch_outcome.mask_png == ov_outcome.mask_png


def test_classical_gate1_results_are_identical_across_backends(tmp_path, monkeypatch):
    options = PipelineOptions(seg_size=128, cls_size=128, min_image_side=32, ir_cache_dir=tmp_path)
    items = _lesions(2)
    outcomes = {
        name: Pipeline(ModelSet.load(None, device="cpu", backend=name, ir_cache_dir=tmp_path), options).run(items)
        for name in ("torch", "openvino")
    }
    for torch_outcome, ov_outcome in zip(outcomes["torch"], outcomes["openvino"], strict=True):
        for field in ("segmentation", "concepts", "equity", "quality"):
            assert getattr(torch_outcome.result, field) == getattr(ov_outcome.result, field)
        assert torch_outcome.overlay_jpeg == ov_outcome.overlay_jpeg

    # The seeded untrained Fusion restarts from its cached IR (key untrained-seed-0) with no
    # torch module built, and the same provenance and results.
    monkeypatch.setattr(openvino, "convert_model", _no_conversion)
    registry = ModelSet.load(None, device="cpu", backend="openvino", ir_cache_dir=tmp_path)
    assert registry.fusion is None and registry.on_demand
    restarted = Pipeline(registry, options).run(items)
    for first, again in zip(outcomes["openvino"], restarted, strict=True):
        assert again.model == first.model and again.model.fusion.version == "untrained-seed-0"
        assert again.result == first.result


def test_openvino_results_are_deterministic_and_batch_independent(both):
    pipeline = both["openvino"]
    items = _lesions(3)
    alone = pipeline.run(items[2:])[0].result
    again = pipeline.run(items[2:])[0].result
    in_batch = pipeline.run(items)[2].result
    assert alone == again
    np.testing.assert_allclose(in_batch.tta_probabilities, alone.tta_probabilities, atol=1e-6)


def test_a_restart_compiles_the_cached_ir_without_converting(both, checkpoint_dir, ir_cache, monkeypatch):
    cached = sorted(path.name for path in ir_cache.iterdir())
    assert len([name for name in cached if name.endswith(".xml")]) == 2  # Scalpel and Fusion
    assert not any("partial" in name for name in cached)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again despite a cached IR")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    restarted = Pipeline(
        ModelSet.load(checkpoint_dir, device="cpu", backend="openvino"),
        PipelineOptions(seg_size=128, cls_size=128, min_image_side=32, ir_cache_dir=ir_cache, precision="fp32"),
    )
    items = _lesions(1)
    assert restarted.run(items)[0].result == both["openvino"].run(items)[0].result


def test_a_cached_start_builds_no_torch_module_and_records_the_same_provenance(both, checkpoint_dir, ir_cache,
                                                                              monkeypatch):
    first = both["openvino"]
    assert len(list(ir_cache.glob("checkpoint-*.json"))) == 2  # the cold start described both checkpoints
    monkeypatch.setattr(openvino, "convert_model", _no_conversion)

    def no_torch_load(*args, **kwargs):
        raise AssertionError("loaded a checkpoint through torch despite the cached IR")

    monkeypatch.setattr(torch, "load", no_torch_load)
    registry = ModelSet.load(checkpoint_dir, device="cpu", backend="openvino", ir_cache_dir=ir_cache)
    assert registry.scalpel is None and registry.fusion is None and registry.on_demand
    restarted = Pipeline(registry, first.options)
    assert restarted.registry.provenance() == first.registry.provenance()
    assert restarted.registry.provenance().model_dump(mode="json", exclude_unset=True)["fusion"]["version"] == "test-1"
    items = _lesions(1)
    for again, before in zip(restarted.run(items), first.run(items), strict=True):
        assert again.model == before.model and again.result == before.result


def test_a_cached_checkpoint_without_ir_at_this_size_is_loaded_and_converted_on_demand(both, checkpoint_dir, ir_cache,
                                                                                       tmp_path):
    # The checkpoints' records and Fusion's IR, not Scalpel's: only the U-Net is built and converted.
    for path in ir_cache.iterdir():
        if not path.name.startswith("scalpel-"):
            shutil.copy(path, tmp_path / path.name)
    registry = ModelSet.load(checkpoint_dir, device="cpu", backend="openvino", ir_cache_dir=tmp_path)
    assert registry.scalpel is None and registry.on_demand
    pipeline = Pipeline(registry, PipelineOptions(seg_size=128, cls_size=128, min_image_side=32, ir_cache_dir=tmp_path,
                                                  precision="fp32"))
    assert len(list(tmp_path.glob("scalpel-*.xml"))) == 1
    items = _lesions(1)
    for again, before in zip(pipeline.run(items), both["openvino"].run(items), strict=True):
        assert again.model == before.model and again.result == before.result


_FRESH_WORKER = """
import json, sys
from pathlib import Path
from worker.pipeline.model_set import ModelSet, cuda_possible
from worker.pipeline.pipeline import LesionInput, Pipeline, PipelineOptions
from worker.pipeline.synthetic import encode_jpeg, make_lesion

model_dir, cache = Path(sys.argv[1]), Path(sys.argv[2])
registry = ModelSet.load(model_dir, device="cpu" if cuda_possible() else "auto", ir_cache_dir=cache)
options = PipelineOptions(seg_size=128, cls_size=128, min_image_side=32, ir_cache_dir=cache, precision="fp32")
pipeline = Pipeline(registry, options)
image = make_lesion(0, (240, 320), radius_frac=0.2, irregularity=0.0, variegation=0.2).image
outcome = pipeline.run([LesionInput(encode_jpeg(image), age=40, sex="male", site="torso")])[0]
print(json.dumps({"imported": sorted(set(sys.argv[3:]) & set(sys.modules)),
                  "model": outcome.model.model_dump(mode="json", exclude_unset=True),
                  "result": outcome.result.model_dump(mode="json")}))
"""


def test_a_fresh_worker_with_the_ir_cached_never_imports_torch(both, checkpoint_dir, ir_cache):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", _FRESH_WORKER, str(checkpoint_dir), str(ir_cache), *TORCH_SIDE],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    fresh = json.loads(run.stdout.strip().splitlines()[-1])
    assert fresh["imported"] == []
    expected = both["openvino"].run(_lesions(1))[0]
    assert fresh["model"] == expected.model.model_dump(mode="json", exclude_unset=True)
    assert fresh["result"] == expected.result.model_dump(mode="json")


def test_openvino_pipeline_holds_no_torch_modules(both):
    registry = both["openvino"].registry
    assert registry.scalpel is None and registry.fusion is None
    scalpel = registry.provenance().scalpel
    assert scalpel is not None and scalpel.sha256  # provenance is kept


def test_auto_is_openvino_on_cpu_and_torch_on_cuda():
    assert resolve_backend("auto", torch.device("cpu")) == "openvino"
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ModelConfigError, match="runs on the CPU"):
        resolve_backend("openvino", torch.device("cuda"))
    with pytest.raises(ModelConfigError, match="backend must be one of"):
        resolve_backend("tensorrt", torch.device("cpu"))


def test_numpy_views_are_the_torch_views():
    images = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert list(NUMPY_VIEWS) == list(DIHEDRAL_VIEWS)
    expected = expand_views(torch.from_numpy(images), len(DIHEDRAL_VIEWS)).numpy()
    np.testing.assert_array_equal(expand_views_numpy(images, len(DIHEDRAL_VIEWS)), expected)
    # From an NHWC buffer seen as NCHW (how the OpenVINO backend calls it).
    nhwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(
        expand_views_numpy(nhwc.transpose(0, 3, 1, 2), 5), expected.reshape(2, 8, 3, 6, 6)[:, :5].reshape(10, 3, 6, 6)
    )


def test_gate1_is_chunked_to_the_memory_budget_with_the_same_masks(unet_registry, forward_calls):
    assert gate1_chunk(512, 2048) == 74 and gate1_chunk(512, 2048, "fp16") == 148
    assert gate1_chunk(512, 1) == 1
    budget_for_two = 2 * 128 * 128 * 110 / 2**20
    tight = TorchBackend(unet_registry.scalpel, unet_registry.fusion, torch.device("cpu"), 128,
                         EngineOptions(gate1_memory_mb=budget_for_two))
    roomy = TorchBackend(unet_registry.scalpel, unet_registry.fusion, torch.device("cpu"), 128, EngineOptions())
    batch = np.random.default_rng(1).standard_normal((5, 128, 128, 3)).astype(np.float32)
    calls = forward_calls(unet_registry.scalpel)
    chunked = tight.segment(batch)
    assert [c["batch"] for c in calls] == [2, 2, 1]
    assert all(c["channels_last"] and c["inference_mode"] for c in calls)
    np.testing.assert_array_equal(chunked, roomy.segment(batch))


def test_autocast_applies_on_cuda_only(unet_registry):
    cpu = TorchBackend(
        unet_registry.scalpel, unet_registry.fusion, torch.device("cpu"), 128, EngineOptions(autocast="fp16")
    )
    assert cpu.autocast == "off" and cpu.name == "torch-cpu"
    pipeline = Pipeline(unet_registry, PipelineOptions(
        seg_size=128, cls_size=128, min_image_side=32, autocast="fp16"
    ), backend=cpu)
    assert pipeline.registry.provenance().precision == "fp32"  # provenance says what ran
    tensor = cpu.to_device(np.zeros((2, 8, 8, 3), dtype=np.float32))
    assert tensor.shape == (2, 3, 8, 8) and tensor.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="autocast"):
        EngineOptions(autocast="fp8")


# --- streams (issue 27): several images side by side, one single-request stream each ---------


def _network_inputs(count: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    from worker.pipeline.metadata import METADATA_SIZE

    rng = np.random.default_rng(count)
    images = rng.standard_normal((count, size, size, 3)).astype(np.float32)
    return images, rng.standard_normal((count, METADATA_SIZE)).astype(np.float32)


def _streamed_calls(backend, monkeypatch) -> list[int]:
    """The number of passes each call put on Fusion's streams."""
    calls: list[int] = []
    on_streams = backend._on_streams

    def spy(feeds):
        feeds = list(feeds)
        calls.append(len(feeds))
        return on_streams(feeds)

    monkeypatch.setattr(backend, "_on_streams", spy)
    return calls


def _latency_only(checkpoint_dir, ir_cache) -> Pipeline:
    """CPU_STREAMS=1: both networks on the LATENCY hint, every pass spread over all the cores."""
    options = PipelineOptions(seg_size=128, cls_size=128, min_image_side=32, ir_cache_dir=ir_cache, precision="fp32",
                              streams=1)
    return Pipeline(ModelSet.load(checkpoint_dir, device="cpu", backend="openvino", ir_cache_dir=ir_cache), options)


def test_fusion_views_side_by_side_on_streams_give_what_the_latency_network_gives(both, checkpoint_dir, ir_cache,
                                                                                  monkeypatch):
    """Every Fusion call runs its passes (an image's views) on the THROUGHPUT-compiled streams,
    one image's five views as well as several images'; Scalpel stays on its LATENCY-compiled
    network. The same computation as CPU_STREAMS=1, so fp32 gives the same numbers, in order."""
    backend = both["openvino"].backend
    assert backend.parallel == backend.streams == min(2, os.cpu_count() or 1)
    if backend.parallel < 2:
        pytest.skip("one CPU: no streams side by side")
    calls = _streamed_calls(backend, monkeypatch)
    images, metadata = _network_inputs(3)
    alone = [backend.classify(images[i : i + 1], metadata[i : i + 1], 5, 1) for i in range(3)]
    together = backend.classify(images, metadata, 5, 1)
    masks = backend.segment(images)
    assert calls == [5, 5, 5, 15]  # each call's views on the streams; segmentation never
    latency = _latency_only(checkpoint_dir, ir_cache).backend
    assert latency.streams == latency.parallel == 1
    reference = latency.classify(images, metadata, 5, 1)
    assert calls == [5, 5, 5, 15]  # CPU_STREAMS=1 runs nothing on streams
    np.testing.assert_array_equal(together, reference)
    np.testing.assert_array_equal(np.concatenate(alone), reference)
    np.testing.assert_array_equal(masks, latency.segment(images))
    assert together.shape == (3, 5) and masks.shape == (3, 128, 128)


def test_a_failed_request_on_the_streams_is_raised_and_the_streams_still_serve(both):
    backend = both["openvino"].backend
    if backend.parallel < 2:
        pytest.skip("one CPU: no streams side by side")
    images, metadata = _network_inputs(2)
    wrong, _ = _network_inputs(2, size=96)  # not the compiled 128 x 128
    first = backend.classify(images, metadata, 5, 1)
    with pytest.raises(Exception):  # noqa: B017 (OpenVINO's own error type for a shape mismatch)
        backend.classify(wrong, metadata, 5, 1)
    np.testing.assert_array_equal(backend.classify(images, metadata, 5, 1), first)


def test_the_worker_steps_a_pass_a_stream_full_at_a_time_with_the_same_results(both, checkpoint_dir, ir_cache):
    """With ``between`` (the worker's bulk passes), each gate takes ``parallel`` images per step
    (two side by side), and ``between`` runs before each step; CPU_STREAMS=1 steps one image at
    a time on the latency-compiled networks alone. Every result is the same."""
    def worker_pipeline(streams: int) -> Pipeline:  # one input per forward pass, as on a CPU worker
        options = PipelineOptions(seg_size=128, cls_size=128, min_image_side=32, ir_cache_dir=ir_cache,
                                  precision="fp32", max_forward_batch=1, streams=streams)
        return Pipeline(ModelSet.load(checkpoint_dir, device="cpu", backend="openvino", ir_cache_dir=ir_cache), options)

    pipeline = worker_pipeline(2)
    items = _lesions(5)

    def stepped_run(pipeline: Pipeline) -> tuple[list[object], dict[str, int], int]:
        steps: dict[str, int] = {}
        stage = [""]
        prepared = pipeline.prepare(items)
        pipeline.infer(prepared, on_stage=lambda name: stage.__setitem__(0, name),
                       between=lambda: steps.__setitem__(stage[0], steps.get(stage[0], 0) + 1))
        classified = len(prepared.items)  # those the coverage gate let through to Gate 2
        return [outcome.result for outcome in pipeline.complete(prepared)], steps, classified

    stepped, steps, classified = stepped_run(pipeline)
    parallel = pipeline.backend.parallel
    assert classified > 0
    # ceil(images / parallel) steps per gate
    assert steps == {"segmentation": -(-5 // parallel), "classification": -(-classified // parallel)}

    single = worker_pipeline(1)
    assert single.backend.parallel == single.backend.streams == 1
    single_results, steps, _ = stepped_run(single)
    assert steps == {"segmentation": 5, "classification": classified}
    assert single_results == stepped
    assert [outcome.result for outcome in pipeline.run(items)] == stepped
    assert [outcome.result for outcome in both["openvino"].run(items)] == stepped


def test_cpu_streams_reaches_the_engine_options():
    from shared.config import Settings

    options = PipelineOptions.from_settings(Settings(cpu_streams=3), "cpu")
    assert options.streams == 3 and options.engine.streams == 3
    with pytest.raises(ValueError, match="streams"):
        EngineOptions(streams=0)
