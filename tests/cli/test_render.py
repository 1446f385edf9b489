"""What the client commands print of the API's answers, read as its typed schemas (no services needed)."""

from __future__ import annotations

import json

from cli.render import demo_problem, demo_summary, model_version, printable
from shared.schemas.analyses import AnalysisOut
from tests.factories import UNTRAINED_MODEL, record_data

NOTE = "DRAFT NOTE (research use only)"


def _answer(**changes: object) -> dict:
    """An analysis as ``GET /v1/analyses/{id}`` answers it (the record, its links and artifacts)."""
    data = record_data(**changes)
    base = f"http://api.test/v1/analyses/{data['id']}"
    data.update(
        updated_at=data["completed_at"],
        links={"self": base, "report": f"{base}/report.pdf", "fhir": f"{base}/fhir"},
        artifacts={"expires_at": "2025-03-14T09:41:55Z"},
        report={"ready": True, "created_at": data["completed_at"]},
        feedback=[],
    )
    return data


def test_submit_prints_the_answer_s_fields_in_order_without_the_note():
    sent = _answer(result={"scribe_note": NOTE})
    printed = printable(AnalysisOut.model_validate(sent))
    assert list(printed) == ["id", "status", "external_id", "result", "rejection", "error", "model", "links"]
    assert printed["result"] == {k: v for k, v in sent["result"].items() if k != "scribe_note"}
    assert printed["model"] == sent["model"] and printed["links"] == sent["links"]
    assert json.loads(json.dumps(printed)) == printed


def test_model_version_names_the_classifier_and_its_weights():
    assert model_version(AnalysisOut.model_validate(_answer())) == "fusion 2.0.1 (trained)"
    untrained = AnalysisOut.model_validate(_answer(model=UNTRAINED_MODEL))
    assert model_version(untrained) == "fusion untrained-seed-1234 (untrained)"
    no_model = _answer()
    no_model["model"] = None
    assert model_version(AnalysisOut.model_validate(no_model)) == "none"


def test_the_demo_prints_the_result_line_then_the_note():
    lines = demo_summary(AnalysisOut.model_validate(_answer(result={"scribe_note": NOTE})))
    assert lines == [
        "demo: melanoma p=0.913±0.042 risk=high coverage=0.184 ITA=38.6° (light) segmenter=unet weights=trained",
        "\n" + NOTE,
    ]


def test_the_demo_says_why_an_analysis_did_not_succeed():
    sent = _answer(status="rejected", rejection={"code": "blurry", "detail": "too blurry"})
    sent["result"] = None
    assert demo_problem(AnalysisOut.model_validate(sent)) == "demo: {'code': 'blurry', 'detail': 'too blurry'}"
