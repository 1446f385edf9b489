"""`dermasentinel batch submit` against the real stack: interrupted, resumed, no duplicates."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from shared.tables import Analysis, Batch
from worker.pipeline.synthetic import encode_jpeg, make_lesion

ROOT = Path(__file__).resolve().parents[2]
IMAGES = 30
ISIC_SITES = ("anterior torso", "head/neck", "upper extremity", "lower extremity", "posterior torso", "")


def _folder(tmp_path: Path) -> tuple[Path, Path]:
    """30 valid ISIC-style rows, plus a missing file, an impossible age and an unknown site."""
    folder = tmp_path / "backlog"
    folder.mkdir()
    lines = ["image_name,patient_id,sex,age_approx,anatom_site_general_challenge"]
    for n in range(IMAGES + 2):
        name = f"ISIC_{n:07d}"
        blur = 8.0 if n in (4, 17) else 0.0
        picture = make_lesion(seed=n, size=(120, 160), radius_frac=0.22, ita=55.0 - 3 * n, blur=blur)
        (folder / f"{name}.jpg").write_bytes(encode_jpeg(picture.image))
        if n < IMAGES:
            sex = ("male", "female", "")[n % 3]
            lines.append(f"{name},IP_{n},{sex},{30 + n}.0,{ISIC_SITES[n % len(ISIC_SITES)]}")
    lines.insert(6, "ISIC_9999999,IP_x,male,40.0,torso")  # line 7: no such file
    lines.append(f"ISIC_{IMAGES:07d},IP_y,female,150.0,torso")  # line 33: impossible age
    lines.append(f"ISIC_{IMAGES + 1:07d},IP_z,male,50.0,elbow pit")  # line 34: unknown site
    manifest = tmp_path / "metadata.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return folder, manifest


def _command(folder: Path, manifest: Path, api_url: str, key: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cli.main", "batch", "submit", str(folder), "--manifest", str(manifest),
        "--name", "tele-backlog", "--api-url", api_url, "--api-key", key, *extra,
    ]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}
    env["DERMASENTINEL_DATA_DIR"] = str(tmp_path / "no-stack")  # no stack.env to pick up
    env["COLUMNS"] = "120"
    return env


def _rows_in_batches(context, tenant_id) -> int:
    with context.session_factory() as session:
        return session.execute(
            select(func.count()).select_from(Analysis).where(Analysis.tenant_id == tenant_id)
        ).scalar_one()


def test_interrupted_submit_resumes_without_duplicates_and_writes_triage(
    tmp_path, api_url, worker, context, tenant_key
):
    tenant_id, key = tenant_key
    folder, manifest = _folder(tmp_path)
    env = _env(tmp_path)

    first = subprocess.Popen(
        _command(folder, manifest, api_url, key, "--concurrency", "1"),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while _rows_in_batches(context, tenant_id) < 8:
        assert first.poll() is None, first.stdout.read().decode()
        assert time.monotonic() < deadline, "the first run never uploaded 8 images"
        time.sleep(0.01)
    os.killpg(first.pid, signal.SIGSTOP)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    uploaded_before = _rows_in_batches(context, tenant_id)
    assert 8 <= uploaded_before < IMAGES
    with context.session_factory() as session:
        (batch,) = session.execute(select(Batch).where(Batch.tenant_id == tenant_id)).scalars().all()
    assert batch.sealed_at is None, "an interrupted run leaves the batch open"

    out = tmp_path / "triage.csv"
    second = subprocess.run(
        _command(folder, manifest, api_url, key, "--concurrency", "4", "--wait", "--out", str(out)),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    log = second.stdout + second.stderr
    assert second.returncode == 0, log
    # The request in flight at the kill may still commit after it: the rerun sees it too.
    resumed = re.search(r"resuming \((\d+) items already in it\)", log)
    assert resumed and uploaded_before <= int(resumed.group(1)) <= uploaded_before + 1, log
    assert f"{resumed.group(1)} images are already in the batch; skipped" in log
    assert "line 7 (ISIC_9999999): missing file" in log
    assert f"line 33 (ISIC_{IMAGES:07d}): impossible age 150.0" in log
    assert f"line 34 (ISIC_{IMAGES + 1:07d}): unknown site 'elbow pit'" in log
    assert second.stdout.strip() == str(batch.id)

    with context.session_factory() as session:
        analyses = session.execute(select(Analysis).where(Analysis.tenant_id == tenant_id)).scalars().all()
        batch = session.get(Batch, batch.id)
    assert len(analyses) == IMAGES
    assert {a.batch_id for a in analyses} == {batch.id}
    assert len({a.image_sha256 for a in analyses}) == IMAGES
    by_name = {a.external_id: a for a in analyses}
    assert set(by_name) == {f"ISIC_{n:07d}" for n in range(IMAGES)}
    assert (by_name["ISIC_0000000"].site, by_name["ISIC_0000000"].age, by_name["ISIC_0000000"].sex) == (
        "torso", 30, "male")
    assert by_name["ISIC_0000004"].site == "torso", "posterior torso is torso"
    assert (by_name["ISIC_0000005"].site, by_name["ISIC_0000005"].sex) == ("unknown", "unknown")
    assert batch.sealed_at is not None and batch.completed_at is not None

    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == IMAGES
    assert {r["external_id"] for r in rows} == set(by_name)
    assert [r["rank"] for r in rows] == [str(n) for n in range(1, IMAGES + 1)]
    statuses = [r["status"] for r in rows]
    assert set(statuses) <= {"succeeded", "rejected"} and statuses.count("rejected") >= 2
    assert statuses == sorted(statuses, key=lambda s: s != "succeeded"), "results first, then retakes"
    scored = [float(r["probability"]) for r in rows if r["status"] == "succeeded"]
    assert scored == sorted(scored, reverse=True)
    retakes = {r["external_id"]: r for r in rows if r["status"] == "rejected"}
    assert {"ISIC_0000004", "ISIC_0000017"} <= set(retakes)
    assert retakes["ISIC_0000004"]["rejection_code"] == "blurry" and retakes["ISIC_0000004"]["retake_advice"]
    assert "Equity summary" in log
    # Untrained weights: every result is a clinician's review, and the summary counts them.
    succeeded = statuses.count("succeeded")
    assert f"dispositions: urgent_referral 0, clinician_review {succeeded}, routine 0" in log

    again = subprocess.run(
        _command(folder, manifest, api_url, key), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert "already completed with 30 items" in again.stderr
    assert _rows_in_batches(context, tenant_id) == IMAGES


def test_direct_submit_sends_the_photos_to_the_store_not_the_api(tmp_path, api_url, worker, context, tenant_key):
    tenant_id, key = tenant_key
    folder = tmp_path / "direct"
    folder.mkdir()
    lines = ["image_name,sex,age_approx,anatom_site_general_challenge"]
    for n in range(6):
        picture = make_lesion(seed=100 + n, size=(120, 160), radius_frac=0.22, blur=8.0 if n == 2 else 0.0)
        (folder / f"D_{n}.jpg").write_bytes(encode_jpeg(picture.image))
        lines.append(f"D_{n},female,{40 + n}.0,torso")
    manifest = tmp_path / "direct.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "direct-triage.csv"

    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "batch", "submit", str(folder), "--manifest", str(manifest),
         "--name", "direct-backlog", "--api-url", api_url, "--api-key", key, "--direct", "--wait", "--out", str(out)],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    with context.session_factory() as session:
        analyses = session.execute(select(Analysis).where(Analysis.tenant_id == tenant_id)).scalars().all()
    assert len(analyses) == 6
    assert all(a.upload_id is not None and a.ingest_requested_at is None for a in analyses), "each went direct"
    assert {a.external_id: (a.age, a.site) for a in analyses}["D_3"] == (43, "torso")
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {r["external_id"]: r["status"] for r in rows}["D_2"] == "rejected"
