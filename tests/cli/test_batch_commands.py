"""`dermasentinel batch list|status|cancel|results` against the real stack (issue 25): what a
user sees of a batch they submitted, canceled apart from completed."""

from __future__ import annotations

import csv
import json

from click.testing import CliRunner
from dermasentinel_client import Client

from cli.main import cli
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def test_list_status_cancel_and_results_of_a_batch(api_url, tenant_key, tmp_path, wait):
    folder = tmp_path / "ward-7"
    folder.mkdir()
    for n in range(2):
        (folder / f"img{n}.jpg").write_bytes(encode_jpeg(make_lesion(seed=n, size=(96, 128)).image))
    with Client(base_url=api_url, api_key=tenant_key[1]) as client:
        batch = client.batches.submit_folder(folder, seal=False,
                                             metadata=lambda path: {"external_id": f"ext-{path.stem}"}).batch
    key = ["--api-url", api_url, "--api-key", tenant_key[1]]

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["batch", *args, *key])
        assert result.exit_code == 0, result.output + result.stderr
        return result.stdout

    listed = run("list", "--name", "ward-7").splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"{batch.id}  open") and listed[0].endswith("ward-7")
    assert f"batch {batch.id} 'ward-7': open" in run("status", str(batch.id))

    assert "items canceled now; " in run("cancel", str(batch.id))
    wait(lambda: json.loads(run("status", str(batch.id), "--json"))["state"] == "canceled", timeout=60,
         message="the batch to end canceled")
    shown = run("status", str(batch.id))
    assert ": canceled, 2 of 2 done" in shown and "was canceled" in shown, "canceled, never 'completed'"

    out = tmp_path / "triage.csv"
    run("results", str(batch.id), "--out", str(out))
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["external_id"] for r in rows) == ["ext-img0", "ext-img1"]
    body = json.loads(run("results", str(batch.id), "--format", "json"))
    assert body["batch"]["state"] == "canceled" and len(body["items"]) == 2

    missing = CliRunner().invoke(cli, ["batch", "status", "00000000-0000-0000-0000-000000000025", *key])
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: HTTP 404")
    refused = CliRunner().invoke(cli, ["batch", "results", str(batch.id), "--out", str(tmp_path / "no/dir.csv"),
                                       *key])
    assert refused.exit_code == 2 and "does not exist" in refused.stderr
