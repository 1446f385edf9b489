"""One untrained batch, every surface that shows a diagnosis or a risk band: each one says
the weights are untrained (the test stack has no checkpoints, so Fusion is untrained)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pypdf import PdfReader
from standardwebhooks import Webhook

from shared import clinical
from worker.pipeline.synthetic import encode_jpeg, make_lesion

ROOT = Path(__file__).resolve().parents[2]
RANKING_WARNING = "UNTRAINED MODEL — ranking by probability is not meaningful"
LESIONS = ("mole-a", "mole-b")
BLURRED = "mole-blurred"


class Receiver:
    """A loopback endpoint that accepts every webhook and keeps the bodies and headers."""

    def __init__(self):
        self.requests: list[tuple[dict, str]] = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_type(self, type_: str) -> list[tuple[dict, str]]:
        return [(h, b) for h, b in list(self.requests) if json.loads(b)["type"] == type_]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    hook = Receiver()
    yield hook
    hook.close()


def flat(text: str) -> str:
    return " ".join(text.split())


def cli(api_url: str, key: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}
    env["DERMASENTINEL_DATA_DIR"] = str(tmp_path / "no-stack")  # no stack.env to pick up
    env["COLUMNS"] = "200"
    command = [sys.executable, "-m", "cli.main", *args, "--api-url", api_url, "--api-key", key]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.timeout(900)  # a fresh worker converts its networks first: minutes on a busy CPU
def test_every_surface_of_an_untrained_batch_says_untrained(
    api, api_url, worker, wait, wait_final, receiver, tenant_key, tmp_path
):
    endpoint = api.post(
        "/v1/webhook-endpoints",
        json={"url": receiver.url, "events": ["batch.completed", "analysis.succeeded", "analysis.rejected"]},
    )
    assert endpoint.status_code == 201, endpoint.text
    secret = endpoint.json()["secret"]

    folder = tmp_path / "clinic"
    folder.mkdir()
    for seed, name in enumerate(LESIONS):
        picture = make_lesion(seed=70 + seed, size=(160, 200), radius_frac=0.22, irregularity=0.3)
        (folder / f"{name}.jpg").write_bytes(encode_jpeg(picture.image))
    (folder / f"{BLURRED}.jpg").write_bytes(encode_jpeg(make_lesion(seed=79, size=(160, 200), blur=8.0).image))
    triage_file = tmp_path / "triage.csv"

    # CLI batch summary: the warning is printed, with the count per weights status.
    submitted = cli(api_url, tenant_key[1], tmp_path, "batch", "submit", str(folder), "--name", "honesty",
                    "--wait", "--out", str(triage_file))
    batch_id = submitted.stdout.strip()
    printed = flat(submitted.stderr)
    assert RANKING_WARNING in printed, printed
    assert "weights: untrained 2" in printed and "not clinically meaningful" in printed

    # Triage CSV, as the CLI wrote it and as the API serves it: a weights cell on every row.
    for text in (triage_file.read_text(), api.get(f"/v1/batches/{batch_id}/results", params={"format": "csv"}).text):
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [r["weights"] for r in rows] == ["untrained"] * 3
        results = [r for r in rows if r["status"] == "succeeded"]
        assert len(results) == 2 and all(r["risk_band"] and r["diagnosis"] for r in results)
        assert all("weights_not_trained" in r["review_reason"] and r["needs_review"] == "true" for r in results)

    # Triage JSON: every item and the summary.
    body = api.get(f"/v1/batches/{batch_id}/results", params={"format": "json"}).json()
    assert [item["weights"] for item in body["items"]] == ["untrained"] * 3
    summary = body["summary"]
    assert summary["weights"] == {"untrained": 2}
    assert summary["weights_warning"].startswith(RANKING_WARNING) and "2 of 2 results" in summary["weights_warning"]
    rejected = next(item for item in body["items"] if item["status"] == "rejected")
    assert rejected["retake_advice"] == clinical.retake_advice("blurry")

    # batch.completed through a real signed delivery.
    deliveries = wait(lambda: receiver.of_type("batch.completed"), 60, message="batch.completed delivery")
    headers, raw = deliveries[0]
    event = Webhook(secret).verify(raw, headers)
    assert event["data"]["id"] == batch_id
    assert event["data"]["weights"] == {"untrained": 2}
    assert event["data"]["weights_warning"].startswith(RANKING_WARNING)

    # The analysis events and result JSON.
    analyses = api.get("/v1/analyses", params={"batch_id": batch_id}).json()["data"]
    by_name = {a["external_id"]: a for a in analyses}
    assert set(by_name) == {*LESIONS, BLURRED}
    assert [a["weights"] for a in analyses] == ["untrained"] * 3, "the list shows results: it says untrained too"
    for name in LESIONS:
        analysis = api.get(f"/v1/analyses/{by_name[name]['id']}").json()
        assert analysis["status"] == "succeeded" and analysis["result"]["risk_band"]
        assert analysis["model"]["weights"] == "untrained"
        assert analysis["model"]["banner"] == clinical.UNTRAINED_BANNER
        assert analysis["result"]["scribe_note"].startswith(clinical.UNTRAINED_BANNER)
        assert analysis["result"]["uncertainty_level"] in ("low", "moderate", "high")
    blurred = api.get(f"/v1/analyses/{by_name[BLURRED]['id']}").json()
    assert blurred["rejection"]["advice"] == clinical.retake_advice("blurry")
    events = wait(lambda: len(receiver.of_type("analysis.succeeded")) >= 2 and receiver.of_type("analysis.rejected")
                  and receiver, 60, message="analysis events")
    for headers, raw in events.of_type("analysis.succeeded"):
        assert Webhook(secret).verify(raw, headers)["data"]["weights"] == "untrained"
    (headers, raw), *_ = events.of_type("analysis.rejected")
    assert Webhook(secret).verify(raw, headers)["data"]["rejection"]["advice"] == clinical.retake_advice("blurry")

    # PDF and FHIR of a result.
    first = by_name[LESIONS[0]]["id"]
    pdf = wait(lambda: (r := api.get(f"/v1/analyses/{first}/report.pdf")).status_code == 200 and r, 120,
               message="the PDF report")
    pages = [flat(page.extract_text()) for page in PdfReader(io.BytesIO(pdf.content)).pages]
    assert all(clinical.UNTRAINED_WATERMARK in page for page in pages)
    assert f"Model weights: untrained. {clinical.UNTRAINED_BANNER}" in " ".join(pages)
    bundle = api.get(f"/v1/analyses/{first}/fhir").json()
    report = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert report["extension"][0]["valueCode"] == "untrained"
    assert report["conclusion"].startswith(clinical.UNTRAINED_BANNER)

    # `dermasentinel submit`: the printed result carries the status and the banner.
    single = cli(api_url, tenant_key[1], tmp_path, "submit", str(folder / f"{LESIONS[0]}.jpg"))
    printed = json.loads(single.stdout[: single.stdout.index("\n}\n") + 2])
    assert printed["status"] == "succeeded"
    assert printed["model"]["weights"] == "untrained" and printed["model"]["banner"] == clinical.UNTRAINED_BANNER
    assert clinical.UNTRAINED_BANNER in single.stdout.split("\n}\n", 1)[1], "the scribe note leads with the banner"
