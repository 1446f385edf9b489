"""Reading a folder and its manifest into rows to upload and bad rows (no services needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.batch import idempotency_key
from cli.manifest import plan_batch
from worker.pipeline.synthetic import encode_jpeg, encode_png, make_lesion


def _image(folder: Path, name: str, seed: int) -> None:
    picture = make_lesion(seed=seed, size=(48, 64)).image
    (folder / name).write_bytes(encode_png(picture) if name.endswith(".png") else encode_jpeg(picture))


def _manifest(folder: Path, text: str) -> Path:
    path = folder / "manifest.csv"
    path.write_text(text)
    return path


def test_our_columns_with_bad_rows_reported_by_line(tmp_path):
    for n in range(4):
        _image(tmp_path, f"case{n}.jpg", n)
    _image(tmp_path, "same-as-case0.jpg", 0)
    manifest = _manifest(tmp_path, (
        "filename,age,sex,site,external_id\n"
        "case0.jpg,61,male,torso,visit-1\n"
        "case1.jpg,150,female,torso,visit-2\n"
        "missing.jpg,40,male,torso,visit-3\n"
        "case2.jpg,30,F,elbow pit,visit-4\n"
        "case3.jpg,,,,\n"
        "same-as-case0.jpg,61,male,torso,visit-6\n"
        "case3.jpg,12,male,torso,again\n"
    ))
    plan = plan_batch(tmp_path, manifest)
    assert [(r.path.name, r.fields) for r in plan.rows] == [
        ("case0.jpg", {"age": 61, "sex": "male", "site": "torso", "external_id": "visit-1"}),
        ("case3.jpg", {"age": None, "sex": "unknown", "site": "unknown", "external_id": "case3"}),
    ]
    bad = {b.where.split(" (")[0]: b.reason for b in plan.bad}
    assert set(bad) == {"line 3", "line 4", "line 5", "line 7", "line 8"}
    assert "impossible age 150" in bad["line 3"]
    assert "missing file" in bad["line 4"]
    assert "unknown site 'elbow pit'" in bad["line 5"]
    assert "same image as line 2" in bad["line 7"]
    assert "listed on line 6" in bad["line 8"]
    assert plan.unlisted == 0


def test_isic_columns_names_without_extension_and_sites(tmp_path):
    _image(tmp_path, "ISIC_0000001.jpg", 1)
    _image(tmp_path, "ISIC_0000002.JPG", 2)
    _image(tmp_path, "ISIC_0000003.png", 3)
    _image(tmp_path, "ISIC_0000004.jpg", 4)
    _image(tmp_path, "not-listed.jpg", 5)
    manifest = _manifest(tmp_path, (
        "\ufeffimage_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis\n"
        "ISIC_0000001,IP_1,male,45.0,anterior torso,unknown\n"
        "ISIC_0000002,IP_2,female,70.0,upper extremity,nevus\n"
        "ISIC_0000003,IP_3,,,,unknown\n"
        "ISIC_0000004,IP_4,male,47.5,palms/soles,unknown\n"
    ))
    plan = plan_batch(tmp_path, manifest)
    rows = [(r.path.name, *(r.fields[k] for k in ("age", "sex", "site", "external_id"))) for r in plan.rows]
    assert rows == [
        ("ISIC_0000001.jpg", 45, "male", "torso", "ISIC_0000001"),
        ("ISIC_0000002.JPG", 70, "female", "upper extremity", "ISIC_0000002"),
        ("ISIC_0000003.png", None, "unknown", "unknown", "ISIC_0000003"),
    ]
    assert [b.where for b in plan.bad] == ["line 5 (ISIC_0000004)"]
    assert "whole years" in plan.bad[0].reason
    assert plan.unlisted == 1


def test_folder_without_manifest_takes_every_image(tmp_path):
    _image(tmp_path, "b lesion.png", 1)
    _image(tmp_path, "a.jpg", 2)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.jpg").write_text("not a jpeg either")
    plan = plan_batch(tmp_path, None)
    assert [(r.path.name, r.fields["external_id"]) for r in plan.rows] == [("a.jpg", "a"), ("b lesion.png", "b_lesion")]
    assert [(b.where, b.reason) for b in plan.bad] == [("fake.jpg", "not a JPEG or PNG image")]


def test_manifest_without_a_file_column_is_a_usage_error(tmp_path):
    import click

    with pytest.raises(click.UsageError, match="image_name"):
        plan_batch(tmp_path, _manifest(tmp_path, "age,sex\n40,male\n"))


def test_idempotency_key_depends_on_batch_and_content_only():
    assert idempotency_key("b1", "ab" * 32) == idempotency_key("b1", "ab" * 32)
    assert idempotency_key("b1", "ab" * 32) != idempotency_key("b2", "ab" * 32)
    assert len(idempotency_key("00000000-0000-0000-0000-000000000000", "f" * 64)) <= 255


def test_rows_use_the_one_vocabulary_and_its_aliases(tmp_path):
    _image(tmp_path, "a.jpg", 1)
    _image(tmp_path, "b.jpg", 2)
    manifest = _manifest(tmp_path, (
        "filename,age,sex,site\n"
        "a.jpg,N/A,M,Head_Neck\n"
        "b.jpg,forty,f,torso\n"
    ))
    plan = plan_batch(tmp_path, manifest)
    assert [r.fields for r in plan.rows] == [{"age": None, "sex": "male", "site": "head/neck", "external_id": "a"}]
    assert [(b.where, b.reason) for b in plan.bad] == [
        ("line 3 (b.jpg)", "age 'forty' is not a number; give whole years 0..120 (leave it empty when unknown)"),
    ]
