"""The IR cache's checkpoint records (issue 27): what a cached start reads instead of torch.load."""

import json

import torch

from worker.pipeline.model_set import Device
from worker.pipeline.weights import CheckpointInfo, meta_path, read_checkpoint_meta, write_checkpoint_meta


def test_a_record_gives_back_what_torch_read(tmp_path):
    card = {"weights": "synthetic", "calibration": {"temperature": 1.32, "threshold": 0.26}, "notes": None}
    info = CheckpointInfo(path=tmp_path / "fusion.pth", sha256="ab" * 32, version="v7", card=card)
    write_checkpoint_meta(tmp_path / "engine", info)
    assert read_checkpoint_meta(tmp_path / "engine", info.path, info.sha256) == info
    assert read_checkpoint_meta(tmp_path / "engine", info.path, "cd" * 32) is None  # other bytes: no record
    assert not list((tmp_path / "engine").glob("*partial*"))


def test_what_json_would_change_or_cannot_read_is_never_used(tmp_path):
    odd = CheckpointInfo(path=tmp_path / "f.pth", sha256="01" * 32, version="v1", card={"sizes": (64, 64)})
    write_checkpoint_meta(tmp_path, odd)  # a tuple comes back a list: not recorded, torch loads it
    assert not meta_path(tmp_path, odd.sha256).exists()
    meta_path(tmp_path, "02" * 32).write_text('{"format": 1, "sha256": "0202')  # half a file
    assert read_checkpoint_meta(tmp_path, tmp_path / "g.pth", "02" * 32) is None
    meta_path(tmp_path, "03" * 32).write_text(json.dumps({"format": 999, "sha256": "03" * 32, "version": "v"}))
    assert read_checkpoint_meta(tmp_path, tmp_path / "h.pth", "03" * 32) is None


def test_device_is_what_torch_calls_it():
    assert Device("cpu") == torch.device("cpu") and torch.device("cpu") == Device("cpu")
    assert Device("cuda", 1) == torch.device("cuda:1") and str(Device("cuda", 1)) == "cuda:1"
    assert Device("cpu") != torch.device("cuda") and Device("cpu").as_torch() == torch.device("cpu")
