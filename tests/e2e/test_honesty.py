"""Every surface that shows a diagnosis, a risk band or a disposition says when the weights are
not trained, and nothing from them is ever `routine` or `urgent_referral` (issue 21).

One untrained batch through the real worker (the test stack has no checkpoints, so Fusion is
untrained); and seeded results for each weights status, with whatever dispositions were stored
(even ones the rules never give), walked over every API surface."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pypdf import PdfReader
from standardwebhooks import Webhook

from devstack import Receiver
from shared import clinical, lifecycle
from shared.tables import Analysis, Event
from tests.e2e.seeding import result_for, seed_analysis, seed_batch
from worker.pipeline.synthetic import encode_jpeg, make_lesion

ROOT = Path(__file__).resolve().parents[2]
RANKING_WARNING = "UNTRAINED MODEL — ranking by probability is not meaningful"
LESIONS = ("mole-a", "mole-b")
BLURRED = "mole-blurred"


@pytest.fixture
def receiver():
    """A loopback endpoint that accepts every webhook and keeps the bodies and headers."""
    with Receiver() as hook:
        yield hook


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
    # Above the minimum resolution (MIN_IMAGE_SIDE, 256 px): the lesions are analysed, the blurred one
    # is refused by the blur gate.
    for seed, name in enumerate(LESIONS):
        picture = make_lesion(seed=70 + seed, size=(260, 320), radius_frac=0.22, irregularity=0.3)
        (folder / f"{name}.jpg").write_bytes(encode_jpeg(picture.image))
    (folder / f"{BLURRED}.jpg").write_bytes(encode_jpeg(make_lesion(seed=79, size=(260, 320), blur=8.0).image))
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
        assert [r["disposition"] for r in results] == ["clinician_review"] * 2, "untrained: never routine or urgent"
        assert all(r["disposition_reasons"].startswith("weights_not_trained") for r in results)

    # Triage JSON: every item and the summary.
    body = api.get(f"/v1/batches/{batch_id}/results", params={"format": "json"}).json()
    assert [item["weights"] for item in body["items"]] == ["untrained"] * 3
    summary = body["summary"]
    assert summary["weights"] == {"untrained": 2}
    assert summary["dispositions"] == {"urgent_referral": 0, "clinician_review": 2, "routine": 0}
    assert body["batch"]["dispositions"] == summary["dispositions"]
    isic = list(csv.DictReader(io.StringIO(
        api.get(f"/v1/batches/{batch_id}/results", params={"format": "isic"}).text)))
    assert [(r["weights"], r["disposition"]) for r in isic if r["predicted_diagnosis"]] == [
        ("untrained", "clinician_review")] * 2
    assert summary["weights_warning"].startswith(RANKING_WARNING) and "2 of 2 results" in summary["weights_warning"]
    rejected = next(item for item in body["items"] if item["status"] == "rejected")
    assert rejected["retake_advice"] == clinical.retake_advice("blurry")

    # batch.completed through a real signed delivery.
    deliveries = wait(lambda: receiver.of_type("batch.completed"), 60, message="batch.completed delivery")
    headers, raw = deliveries[0].headers, deliveries[0].body
    event = Webhook(secret).verify(raw, headers)
    assert event["data"]["id"] == batch_id
    assert event["data"]["weights"] == {"untrained": 2}
    assert event["data"]["weights_warning"].startswith(RANKING_WARNING)
    assert event["data"]["dispositions"] == {"urgent_referral": 0, "clinician_review": 2, "routine": 0}

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
        assert analysis["result"]["notice"] == clinical.UNTRAINED_BANNER, "beside the diagnosis"
        assert analysis["result"]["disposition"] == "clinician_review"
        assert analysis["result"]["disposition_reasons"][0] == "weights_not_trained"
    for listed in analyses:
        if listed["result"]:
            assert listed["result"]["notice"] == clinical.UNTRAINED_BANNER
            assert listed["result"]["disposition"] == "clinician_review"
    blurred = api.get(f"/v1/analyses/{by_name[BLURRED]['id']}").json()
    assert blurred["rejection"]["advice"] == clinical.retake_advice("blurry")
    events = wait(lambda: len(receiver.of_type("analysis.succeeded")) >= 2 and receiver.of_type("analysis.rejected")
                  and receiver, 60, message="analysis events")
    for delivery in events.of_type("analysis.succeeded"):
        data = Webhook(secret).verify(delivery.body, delivery.headers)["data"]
        assert data["weights"] == "untrained" and data["result"]["disposition"] == "clinician_review"
        assert data["result"]["disposition_reasons"][0] == "weights_not_trained"
    refusal = events.of_type("analysis.rejected")[0]
    refused = Webhook(secret).verify(refusal.body, refusal.headers)
    assert refused["data"]["rejection"]["advice"] == clinical.retake_advice("blurry")

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

    # `Prefer: wait`: the final answer carries the notice beside the diagnosis.
    image = (folder / f"{LESIONS[1]}.jpg").read_bytes()
    waited = api.post("/v1/analyses", files={"image": ("w.jpg", image, "image/jpeg")}, headers={"Prefer": "wait=60"})
    assert waited.status_code == 201, waited.text
    answer = waited.json()
    assert answer["result"]["notice"] == clinical.UNTRAINED_BANNER
    assert answer["result"]["disposition"] == "clinician_review"

    # `dermasentinel submit`: the printed result carries the status and the banner.
    single = cli(api_url, tenant_key[1], tmp_path, "submit", str(folder / f"{LESIONS[0]}.jpg"))
    printed = json.loads(single.stdout[: single.stdout.index("\n}\n") + 2])
    assert printed["status"] == "succeeded"
    assert printed["model"]["weights"] == "untrained" and printed["model"]["banner"] == clinical.UNTRAINED_BANNER
    assert clinical.UNTRAINED_BANNER in single.stdout.split("\n}\n", 1)[1], "the scribe note leads with the banner"


# ---------------------------------------------------------------- every API surface, each weights status

# What was stored with each result, whatever the weights: what the rules give trained weights,
# and a result stored before dispositions existed (None).
STORED = {"urgent": (0.93, "urgent_referral"), "routine": (0.03, "routine"), "review": (0.5, "clinician_review"),
          "legacy": (0.6, None)}
WEIGHTS = ("trained", "synthetic", "untrained", None)  # None: no provenance stored


def _ref(weights: str | None, case: str) -> str:
    return f"{weights or 'unknown'}-{case}"


def _expected(weights: str | None, case: str) -> str | None:
    """The disposition every surface must show."""
    if weights != "trained":
        return "clinician_review"  # never routine or urgent_referral, whatever was stored
    return STORED[case][1]


def test_every_api_surface_for_each_weights_status(api, context, tenant_key):
    tenant_id, _ = tenant_key
    batch_id = seed_batch(context, tenant_id, "every weights status")
    for n, weights in enumerate(WEIGHTS):
        for m, (case, (probability, stored)) in enumerate(STORED.items()):
            seed_analysis(context, tenant_id, result=result_for(probability, disposition=stored), weights=weights,
                          batch_id=batch_id, external_id=_ref(weights, case), seed=4 * n + m)
    seed_analysis(context, tenant_id, status="rejected", batch_id=batch_id, external_id="rejected",
                  rejection={"code": "blurry", "detail": "too blurred"})
    refs = {_ref(w, c): (w, c) for w in WEIGHTS for c in STORED}

    def check(where: str, ref: str, disposition: str | None, weights: str | None) -> None:
        expected_weights, case = refs[ref]
        assert disposition == _expected(expected_weights, case), (where, ref, disposition)
        assert weights == expected_weights, (where, ref, weights)
        if expected_weights != "trained":
            assert disposition not in ("routine", "urgent_referral"), (where, ref)

    # The analysis, one by one and in the list: the notice beside the diagnosis.
    listed = api.get("/v1/analyses", params={"batch_id": str(batch_id), "limit": 50}).json()["data"]
    assert len(listed) == len(refs) + 1
    for summary in listed:
        if summary["status"] != "succeeded":
            assert summary["result"] is None
            continue
        single = api.get(f"/v1/analyses/{summary['id']}").json()
        for where, body in (("list", summary), ("single", single)):
            ref, result = body["external_id"], body["result"]
            check(where, ref, result["disposition"], body["weights"])
            weights = refs[ref][0]
            assert result["notice"] == clinical.weights_banner(weights or clinical.UNKNOWN_WEIGHTS), (where, ref)
            assert (result["notice"] is None) == (weights == "trained"), (where, ref)
            if result["disposition"] == "routine":
                assert result["safety_netting"], (where, ref)
            if weights != "trained":
                assert result["disposition_reasons"][0] == "weights_not_trained", (where, ref)
                assert result["safety_netting"] is None, (where, ref)

    # The analysis event payload (what a webhook receives).
    with context.session_factory() as session:
        rows = session.query(Analysis).filter(Analysis.batch_id == batch_id, Analysis.status == "succeeded").all()
        for row in rows:
            event = lifecycle.event_data(context.settings, row)
            assert event.result is not None
            check("analysis event", row.external_id, event.result.disposition, event.weights)

    # Triage: JSON, CSV and ISIC; a weights cell beside every diagnosis.
    body = api.get(f"/v1/batches/{batch_id}/results", params={"format": "json"}).json()
    items = [i for i in body["items"] if i["status"] == "succeeded"]
    for item in items:
        check("triage json", item["external_id"], item["disposition"], item["weights"])
    order = [i["disposition"] for i in body["items"]]
    assert order == ["urgent_referral"] + ["clinician_review"] * 13 + ["routine"] + [None] * 2
    assert body["items"][-1]["status"] == "rejected", "a rejection has no disposition: last, after the results"
    counts = {"urgent_referral": 1, "clinician_review": 13, "routine": 1}
    assert body["summary"]["dispositions"] == counts == body["batch"]["dispositions"]
    assert body["summary"]["weights_warning"]
    for fmt, diagnosis in (("csv", "diagnosis"), ("isic", "predicted_diagnosis")):
        text = api.get(f"/v1/batches/{batch_id}/results", params={"format": fmt}).text
        for row in csv.DictReader(io.StringIO(text)):
            if row[diagnosis]:
                check(fmt, row["external_id"], row["disposition"] or None, row["weights"] or None)
            else:
                assert row["disposition"] == "" and row["status"] == "rejected"

    # Batch progress and batch.completed.
    assert api.get(f"/v1/batches/{batch_id}").json()["dispositions"] == counts
    assert api.post(f"/v1/batches/{batch_id}/seal").json()["state"] == "completed"
    with context.session_factory() as session:
        (completed,) = [e for e in session.query(Event).filter(Event.type == "batch.completed")
                        if e.payload["data"]["id"] == str(batch_id)]
    assert completed.payload["data"]["dispositions"] == counts
    assert completed.payload["data"]["weights"] == {"trained": 4, "synthetic": 4, "untrained": 4, "unknown": 4}
    assert completed.payload["data"]["weights_warning"]
