"""What the client commands print of the API's answers, read as the SDK types them (no services needed)."""

from __future__ import annotations

import json

from dermasentinel_client.models import AnalysisOut, DispositionCounts

from cli.render import demo_problem, demo_summary, disposition, disposition_counts, model_version, printable
from shared.clinical import weights_banner
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


def test_the_demo_prints_the_result_line_with_its_disposition_then_the_note():
    lines = demo_summary(AnalysisOut.model_validate(_answer(result={"scribe_note": NOTE})))
    assert lines == [
        "demo: melanoma p=0.913±0.042 risk=high coverage=0.184 ITA=38.6° (light) segmenter=unet weights=trained "
        "disposition=urgent_referral (high_probability, diameter_over_6mm)",
        "\n" + NOTE,
    ]


def test_the_demo_says_untrained_output_cannot_be_assessed_and_gives_routine_safety_netting():
    # Untrained, as the API answers it: the notice beside the diagnosis, always a clinician's review.
    untrained = _answer(model=UNTRAINED_MODEL, result={"notice": weights_banner("untrained")})
    lines = demo_summary(AnalysisOut.model_validate(untrained))
    assert "weights=untrained disposition=clinician_review (weights_not_trained, " in lines[0]
    assert lines[1] == f"demo: {weights_banner('untrained')}"
    routine = AnalysisOut.model_validate(_answer(
        result={"probability": 0.02, "tta_probabilities": [0.02] * 5, "uncertainty": 0.0, "diagnosis": "benign",
                "risk_band": "low", "concepts": {"diameter_mm": 3.0}},
        model={"operating_point": {"threshold": 0.5, "temperature": 1.0, "target_sensitivity": 0.95,
                                   "chosen_on": "validation", "rule_out_threshold": 0.05}},
    ))
    assert disposition(routine) == "routine (below_rule_out)"
    assert any(line.startswith("demo: safety netting: No feature met") for line in demo_summary(routine))


def test_the_disposition_as_sent_or_why_there_is_none():
    old = _answer(result={"disposition": None, "disposition_reasons": []})
    assert disposition(AnalysisOut.model_validate(old)) == "not recorded"
    rejected = _answer(status="rejected", rejection={"code": "low_resolution", "detail": "image too small"})
    rejected["result"] = None
    assert disposition(AnalysisOut.model_validate(rejected)) == "none"


def test_batch_summaries_count_each_disposition_most_urgent_first():
    counts = DispositionCounts(urgent_referral=2, clinician_review=5, routine=3)
    assert disposition_counts(counts) == "urgent_referral 2, clinician_review 5, routine 3"


def test_the_demo_says_why_an_analysis_did_not_succeed():
    sent = _answer(status="rejected", rejection={"code": "blurry", "detail": "too blurry"})
    sent["result"] = None
    assert demo_problem(AnalysisOut.model_validate(sent)) == "demo: {'code': 'blurry', 'detail': 'too blurry'}"
