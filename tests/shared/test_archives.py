"""Reading a batch's archive within bounds (issue 25): rows, members by name, and every guard
(names that leave the archive, links, oversized members, zip bombs, too many entries)."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
import zipfile

import pytest

from shared import archives
from shared.archive_rows import csv_inputs, ndjson_inputs
from shared.archives import ArchiveRefused, ImageArchive, Limits, ManifestRow, RowRefused, ndjson_rows

LIMITS = Limits(max_bytes=10_000_000, max_items=100, max_member_bytes=100_000, max_member_mb=1)
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 200


def make_zip(path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> str:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


def make_tar(path, members: dict[str, bytes], links: dict[str, str] | None = None) -> str:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return str(path)


def refusal(archive: ImageArchive, name: str) -> RowRefused:
    with pytest.raises(RowRefused) as refused:
        archive.read(name)
    return refused.value


def test_a_zip_manifest_in_its_folder_names_images_relative_to_it(tmp_path):
    path = make_zip(tmp_path / "a.zip", {
        "backlog/manifest.csv": b"image_name,age_approx,sex\nIMG_1.jpg,60,male\nISIC_2,,\n",
        "backlog/IMG_1.jpg": JPEG, "backlog/ISIC_2.JPG": JPEG + b"2", "IMG_1.jpg": b"not this one",
    })
    with ImageArchive.open(path, "zip", LIMITS) as archive:
        rows = list(archive.rows())
        assert [(r.row, r.file) for r in rows] == [(1, "IMG_1.jpg"), (2, "ISIC_2")]
        assert rows[0].values == {"age": "60", "sex": "male"}
        assert archive.read("IMG_1.jpg") == JPEG
        assert archive.read("ISIC_2") == JPEG + b"2"  # ISIC names come without their extension
        assert refusal(archive, "IMG_9.jpg").code == "missing_file"


@pytest.mark.parametrize("name", ["../IMG_1.jpg", "/etc/passwd", "a\\..\\b.jpg", "C:evil.jpg", "x/../../y.jpg",
                                  "bad\x00.jpg"])
def test_names_that_leave_the_archive_are_refused_never_read(tmp_path, name):
    path = make_zip(tmp_path / "a.zip", {"sub/manifest.csv": b"filename\nx.jpg\n", "sub/x.jpg": JPEG,
                                         "IMG_1.jpg": JPEG, "../IMG_1.jpg": JPEG})
    with ImageArchive.open(path, "zip", LIMITS) as archive:
        assert refusal(archive, name).code == "invalid_file_name"


def test_a_tar_link_is_never_followed(tmp_path):
    path = make_tar(tmp_path / "a.tar.gz", {"./manifest.csv": b"filename\nok.jpg\nlink.jpg\n", "./ok.jpg": JPEG},
                    links={"link.jpg": "/etc/passwd"})
    with ImageArchive.open(path, "tar", LIMITS) as archive:
        assert [r.file for r in archive.rows()] == ["ok.jpg", "link.jpg"]
        assert archive.read("ok.jpg") == JPEG
        assert refusal(archive, "link.jpg").code == "invalid_file_name"


def test_an_oversized_member_is_refused_by_its_declared_size(tmp_path):
    bomb = b"\x00" * 5_000_000  # deflates to a few kB
    path = make_zip(tmp_path / "bomb.zip", {"manifest.csv": b"filename\nbomb.jpg\n", "bomb.jpg": bomb})
    assert (tmp_path / "bomb.zip").stat().st_size < 50_000
    with ImageArchive.open(path, "zip", LIMITS) as archive:
        refused = refusal(archive, "bomb.jpg")
    assert (refused.code, refused.status) == ("payload_too_large", 413)
    assert "1 MB limit" in refused.detail


def test_a_member_whose_data_outgrows_its_header_is_never_read_past_it(tmp_path):
    """A zip whose local header lies about the size: reading stops at the declared size and the
    CRC check fails, so at most the member limit is ever read."""
    path = tmp_path / "liar.zip"
    make_zip(path, {"manifest.csv": b"filename\nx.jpg\n", "x.jpg": JPEG * 400}, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    # Shrink x.jpg's declared size in the central directory: the data is longer than it says.
    at = data.rfind(b"x.jpg", 0, len(data) - 22) - 46
    assert data[at:at + 4] == b"PK\x01\x02"
    data[at + 24:at + 28] = (1000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with ImageArchive.open(str(path), "zip", LIMITS) as archive:
        assert refusal(archive, "x.jpg").code in ("unreadable_image", "payload_too_large")


def test_too_many_entries_are_refused_before_the_directory_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "EXTRA_ENTRIES", 2)
    members = {"manifest.csv": b"filename\n", **{f"{n}.jpg": b"" for n in range(10)}}
    few = Limits(max_bytes=10_000_000, max_items=5, max_member_bytes=100_000, max_member_mb=1)
    with pytest.raises(ArchiveRefused, match="11 entries"):
        ImageArchive.open(make_zip(tmp_path / "a.zip", members), "zip", few)
    with pytest.raises(ArchiveRefused, match="more than 7 entries"):
        ImageArchive.open(make_tar(tmp_path / "a.tar", members), "tar", few)


def test_archives_that_cannot_be_read_are_refused_whole(tmp_path):
    not_zip = tmp_path / "x.zip"
    not_zip.write_bytes(b"PK not really a zip at all" * 10)
    with pytest.raises(ArchiveRefused, match="not a readable zip"):
        ImageArchive.open(str(not_zip), "zip", LIMITS)
    with pytest.raises(ArchiveRefused, match="not a readable tar"):
        ImageArchive.open(str(not_zip), "tar", LIMITS)
    with pytest.raises(ArchiveRefused, match="no manifest.csv"):
        ImageArchive.open(make_zip(tmp_path / "b.zip", {"a.jpg": JPEG}), "zip", LIMITS)
    with ImageArchive.open(make_zip(tmp_path / "c.zip", {"manifest.csv": b"photo,age\na.jpg,3\n"}), "zip",
                           LIMITS) as archive, pytest.raises(ArchiveRefused, match="no file column"):
        list(archive.rows())


def test_ndjson_rows_are_numbered_by_line_and_bad_lines_refused(monkeypatch):
    monkeypatch.setattr(archives, "LINE_MAX_BYTES", 100)
    upload = str(uuid.uuid4())
    text = (json.dumps({"upload_id": upload, "age": 40}) + "\n\n" + "[1, 2]\n" + '{"upload_id": "' + "x" * 200
            + '"}\n' + json.dumps({"upload_id": upload}))
    data = text.encode()
    rows = list(ndjson_rows(data[i:i + 7] for i in range(0, len(data), 7)))  # lines cut across chunks
    assert [r.row for r in rows] == [1, 3, 4, 5]
    assert rows[0].file == upload and rows[0].values["age"] == 40 and rows[0].problem is None
    assert "not a JSON object" in rows[1].problem.detail
    assert "longer than" in rows[2].problem.detail
    assert rows[3].problem is None


def test_a_csv_row_is_checked_as_the_api_checks_a_submission():
    batch_id = uuid.uuid4()
    inputs = csv_inputs(ManifestRow(1, "photos/IMG 7.jpg", {"age": "63", "sex": "M", "site": "anterior torso"}),
                        batch_id)
    assert (inputs.age, inputs.sex, inputs.site) == (63, "male", "torso")
    assert inputs.external_id == "IMG_7" and inputs.batch_id == batch_id and inputs.priority == "bulk"

    for values, field in (({"age": "130"}, "age"), ({"site": "elbow-ish"}, "site"),
                          ({"external_id": "../../etc/passwd"}, "external_id"),
                          ({"pixel_spacing_mm": "1e-320"}, "pixel_spacing_mm"),
                          ({"patient_reference": "not a reference"}, "patient_reference")):
        with pytest.raises(RowRefused) as refused:
            csv_inputs(ManifestRow(2, "a.jpg", values), batch_id)
        assert refused.value.code == "unprocessable" and refused.value.status == 422
        assert refused.value.errors[0]["field"] == field, refused.value.detail


def test_an_ndjson_row_needs_an_upload_id_and_json_numbers():
    batch_id, upload_id = uuid.uuid4(), uuid.uuid4()
    got_id, inputs = ndjson_inputs(ManifestRow(1, None, {"upload_id": str(upload_id), "age": 40,
                                                         "external_id": "r-1"}), batch_id)
    assert got_id == upload_id and inputs.age == 40 and inputs.batch_id == batch_id
    for values, field in (({"age": 40}, "upload_id"), ({"upload_id": "nope"}, "upload_id"),
                          ({"upload_id": str(upload_id), "age": True}, "age"),
                          ({"upload_id": str(upload_id), "batch_id": str(uuid.uuid4())}, "batch_id"),
                          ({"upload_id": str(upload_id), "colour": "red"}, "colour")):
        with pytest.raises(RowRefused) as refused:
            ndjson_inputs(ManifestRow(1, None, values), batch_id)
        assert refused.value.errors[0]["field"] == field, refused.value.detail


def test_a_compressed_tar_is_inflated_within_the_archive_limit(tmp_path):
    members = {"manifest.csv": b"filename\nx.jpg\n", "x.jpg": JPEG, "filler.bin": b"\x00" * 300_000}
    path = make_tar(tmp_path / "a.tar.gz", members)
    with ImageArchive.open(path, "tar", LIMITS) as archive:
        assert archive.read("x.jpg") == JPEG
    small = Limits(max_bytes=200_000, max_items=100, max_member_bytes=100_000, max_member_mb=1)
    with pytest.raises(ArchiveRefused, match="inflates to more than"):
        ImageArchive.open(path, "tar", small)
