"""Issue 25: `batch submit --out` is checked before anything is uploaded (it used to upload and
wait for the whole batch, then fail writing the file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from devstack import free_port
from worker.pipeline.synthetic import encode_jpeg, make_lesion


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "lesion.jpg").write_bytes(encode_jpeg(make_lesion(seed=1, size=(64, 64)).image))
    return photos


def submit(folder: Path, *extra: str):
    # Nothing listens at the API URL: a command that reached for it would say so instead.
    api = f"http://127.0.0.1:{free_port()}"
    return CliRunner().invoke(cli, ["batch", "submit", str(folder), "--api-url", api, "--api-key", "dsk_x", *extra])


def test_an_out_file_in_a_missing_folder_is_refused_at_once(folder, tmp_path):
    result = submit(folder, "--out", str(tmp_path / "missing" / "dir" / "triage.csv"))
    assert result.exit_code == 2, result.output
    assert f"the folder {tmp_path / 'missing' / 'dir'} does not exist" in result.output
    assert "cannot reach the API" not in result.output, "refused before contacting the API"
    assert "Traceback" not in result.output


def test_an_out_path_that_is_a_folder_is_refused(folder, tmp_path):
    result = submit(folder, "--out", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in result.output
    assert "cannot reach the API" not in result.output


def test_a_writable_out_goes_ahead_to_the_api(folder, tmp_path):
    result = submit(folder, "--out", str(tmp_path / "triage.csv"))
    assert result.exit_code == 1 and "cannot reach the API" in result.output


def test_without_wait_no_file_is_written_so_none_is_checked(folder, tmp_path):
    result = submit(folder)
    assert result.exit_code == 1 and "cannot reach the API" in result.output
