"""Issue 21: every report surface (the scribe note, the PDF, the FHIR bundle, the grounded answer
to "what should happen next?") shows the disposition, and nothing from weights that are not
trained is urgent, routine or reassuring anywhere."""

from __future__ import annotations

import io
import json
import re

import pytest
from pypdf import PdfReader

from shared import clinical
from shared.clinical import disposition
from shared.questions import answer_question
from shared.schemas.analyses import AnalysisRecord
from tests.factories import UNTRAINED_MODEL, high_risk_trained, low_risk_untrained, record
from worker.reporting.fhir import BundleLinks, build_fhir_bundle
from worker.reporting.pdf import render_report
from worker.reporting.scribe import build_scribe_note

NOT_SAID_UNTRAINED = (
    "routine",
    "urgent",
    "no concern",
    "no ai-flagged concern",
    "low uncertainty",
    "uncertainty: low",
    "uncertainty low",
)


def routine_trained() -> AnalysisRecord:
    return record(result={"probability": 0.03, "uncertainty": 0.01, "diagnosis": "benign", "risk_band": "low",
                          "concepts": {"diameter_mm": 4.1}})


def untrained_high() -> AnalysisRecord:
    """0.91 from untrained weights: still never an urgent referral."""
    return record(model=UNTRAINED_MODEL)


def synthetic_high() -> AnalysisRecord:
    return record(model={"weights": "synthetic"})


def surfaces(analysis: AnalysisRecord, links: BundleLinks) -> dict[str, str]:
    """Each surface as the text a reader sees (the bundle as its JSON)."""
    pdf = render_report(analysis, None, None)
    pdf_text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    return {
        "note": build_scribe_note(analysis),
        "pdf": re.sub(r"\s+", " ", pdf_text),
        "fhir": json.dumps(build_fhir_bundle(analysis, links), ensure_ascii=False),
        "answer": answer_question("What should happen next?", analysis).text,
    }


def fhir_disposition(analysis: AnalysisRecord, links: BundleLinks) -> tuple[str, str, list[str]]:
    """(report status, disposition code, observation statuses)."""
    bundle = build_fhir_bundle(analysis, links)
    report = bundle["entry"][0]["resource"]
    observations = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    (found,) = [o for o in observations if o["code"]["coding"][0]["code"] == "disposition"]
    return report["status"], found["valueCodeableConcept"]["coding"][0]["code"], [o["status"] for o in observations]


@pytest.mark.parametrize(
    ("case", "expected", "words"),
    [
        (high_risk_trained, "urgent_referral", "Urgent referral"),
        (routine_trained, "routine", "Routine (safety-netting advice)"),
        (low_risk_untrained, "clinician_review", "Clinician review"),
    ],
)
def test_every_surface_shows_the_disposition(case, expected, words, links):
    analysis = case()
    assert analysis.result is not None and analysis.result.disposition == expected
    shown = surfaces(analysis, links)
    assert f"\nDISPOSITION\n- {words}.\n" in shown["note"]
    assert f"Disposition: {words}" in shown["pdf"]
    assert f'"code": "{expected}", "display": "{words}"' in shown["fhir"]
    assert f"What should happen next: {words}" in shown["answer"]
    # The PLAN agrees with the disposition, in the note, FHIR's conclusion and a treatment answer.
    plan = clinical.plan_for(analysis.result, analysis.model)
    assert shown["note"].split("\nPLAN\n")[1].startswith("\n".join(f"- {line}" for line in plan) + "\n\n")
    assert f"Recommended: {' '.join(plan)}" in shown["fhir"]
    assert f"The report's PLAN says: {' '.join(plan)}" in answer_question("Should we treat it?", analysis).text
    if expected == "routine":
        for name, text in shown.items():
            assert disposition.SAFETY_NETTING in text, f"the {name} has no safety netting"


def test_trained_reports_are_final(links):
    for case in (high_risk_trained, routine_trained):
        status, _, observations = fhir_disposition(case(), links)
        assert status == "final" and set(observations) == {"final"}


@pytest.mark.parametrize("case", [low_risk_untrained, untrained_high, synthetic_high])
def test_untrained_is_review_everywhere_and_never_reassures(case, links):
    analysis = case()
    status, code, observations = fhir_disposition(analysis, links)
    assert (status, code) == ("preliminary", "clinician_review")
    assert set(observations) == {"preliminary"}
    shown = surfaces(analysis, links)
    for name, text in shown.items():
        lowered = text.lower()
        for phrase in NOT_SAID_UNTRAINED:
            assert phrase not in lowered, f"the {name} says {phrase!r} under {analysis.weights} weights"
        assert "clinician review" in lowered, f"the {name} does not say clinician review"
    for name in ("note", "pdf", "answer"):
        assert "cannot be assessed" in shown[name], f"the {name} does not say the findings cannot be assessed"
    assert "Clinician review because the model's weights are not trained" in shown["pdf"]
