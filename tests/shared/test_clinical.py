"""The clinical rules: one home, the documented numbers, and every surface agreeing with it."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from shared import clinical
from shared.schemas import SEXES as API_SEXES
from shared.schemas import SITES as API_SITES
from shared.schemas import AnalysisInputs, Diagnosis, RiskBand, Sex, Site, WeightsStatus
from tests.factories import model, result

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_rules_pulls_in_no_torch_numpy_web_or_database():
    code = (
        "import sys, shared.clinical; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'fastapi', 'sqlalchemy', 'celery')]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("probability", "diagnosis", "band"),
    [(0.0, "benign", "low"), (0.5, "benign", "low"), (0.5001, "melanoma", "medium"),
     (0.8, "melanoma", "medium"), (0.8001, "melanoma", "high"), (1.0, "melanoma", "high")],
)
def test_design_thresholds(probability, diagnosis, band):
    assert clinical.diagnosis(probability) == diagnosis
    assert clinical.risk_band(probability) == band


def test_an_operating_threshold_moves_the_decision_and_medium_band_but_not_high():
    assert clinical.diagnosis(0.35, threshold=0.3) == "melanoma"
    assert clinical.risk_band(0.35, threshold=0.3) == "medium"
    assert clinical.risk_band(0.79, threshold=0.3) == "medium" and clinical.risk_band(0.81, threshold=0.3) == "high"
    # Above 0.8 the high band starts at the threshold: no melanoma call is ever "low".
    assert clinical.risk_band(0.85, threshold=0.9) == "low" and clinical.risk_band(0.95, threshold=0.9) == "high"
    assert clinical.risk_band_ranges(0.3) == {"high": "> 0.80", "medium": "0.30–0.80", "low": "0.30 or below"}
    assert [zone for _, _, zone in clinical.risk_zones(0.9)] == ["low", "high"]


@pytest.mark.parametrize("threshold", [None, 0.05, 0.3, 0.5, 0.8, 0.9, 0.99])
def test_bands_above_low_are_exactly_the_melanoma_calls(threshold):
    for step in range(1001):
        p = step / 1000
        assert (clinical.risk_band(p, threshold) != "low") == (clinical.diagnosis(p, threshold) == "melanoma"), p


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1])
def test_an_impossible_threshold_is_refused(bad):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        clinical.diagnosis(0.5, threshold=bad)


def test_threshold_comes_from_the_model_provenance():
    assert clinical.threshold_of(None) is None and clinical.threshold_of(model()) is None
    assert clinical.threshold_of(model(threshold=0.35)) == 0.35
    assert clinical.THRESHOLD_KEY in model(threshold=0.35).model_dump(exclude_none=True), "triage reads it by this key"


def test_weights_status_of_typed_and_stored_provenance():
    assert clinical.weights_status(None) is None
    assert clinical.weights_status(model(weights="synthetic")) == "synthetic"
    assert clinical.weights_status(model(weights="synthetic").model_dump(mode="json")) == "synthetic"
    assert clinical.shows_weights_warning(None, has_result=True)
    assert not clinical.shows_weights_warning(None, has_result=False)
    assert not clinical.shows_weights_warning("trained", has_result=True)
    assert clinical.shows_weights_warning("synthetic", has_result=False)


def test_review_rule():
    assert clinical.review_reasons(0.2, 0.01, False, weights="trained") == []
    assert clinical.review_reasons(0.2, 0.15, False) == ["high_uncertainty"]
    assert clinical.review_reasons(0.55, 0.0, False) == ["near_threshold"]
    assert clinical.review_reasons(0.55, 0.0, False, threshold=0.3) == []
    assert clinical.review_reasons(0.35, 0.0, False, threshold=0.3) == ["near_threshold"]
    assert clinical.review_reasons(0.9, 0.0, True) == ["bias_warning"]
    for status in ("untrained", "synthetic", "unknown"):
        assert clinical.review_reasons(0.9, 0.0, False, weights=status) == ["weights_not_trained"]
    assert "0.15" in clinical.review_rule_text() and "near_threshold" in clinical.review_rule_text()


def test_uncertainty_levels():
    assert [clinical.uncertainty_level(u) for u in (0.0, 0.0799, 0.08, 0.1499, 0.15)] == [
        "low", "low", "moderate", "moderate", "high",
    ]


def test_bias_warning_by_group_is_the_ita_rule_not_a_restatement():
    assert {"brown", "dark"} == clinical.BIAS_WARNING_GROUPS
    for tenth in range(-900, 901):
        ita = tenth / 10
        assert clinical.group_bias_warning(clinical.skin_group(ita)) == clinical.bias_warning(ita), ita
    assert set(clinical.SKIN_GROUPS) == {name for _, name in clinical.SKIN_GROUP_BOUNDS} | {"very light"}
    assert clinical.SKIN_GROUPS[0] == "very light" and clinical.SKIN_GROUPS[-1] == "dark"


def test_every_rejection_code_has_one_reason_and_one_piece_of_advice():
    from shared.images import ImageRejected

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    gates = {"low_resolution", "blurry", "no_lesion", "unreadable_image"}
    codes = gates | {cls.code for cls in subclasses(ImageRejected)}
    assert codes <= set(clinical.RETAKE_ADVICE) and codes <= set(clinical.REJECTION_REASONS)
    for code in codes:
        advice = clinical.retake_advice(code)
        assert advice.endswith(".") and advice[0].isupper() and advice != clinical.DEFAULT_RETAKE_ADVICE
    assert "focus" in clinical.retake_advice("blurry")
    assert clinical.retake_advice("something_new") == clinical.retake_advice(None) == clinical.DEFAULT_RETAKE_ADVICE


def test_only_trained_weights_are_meaningful():
    assert clinical.weights_banner("trained") is None and clinical.do_not_act("trained") is None
    assert clinical.weights_banner("untrained") == clinical.UNTRAINED_BANNER
    assert clinical.weights_watermark("untrained") == clinical.UNTRAINED_WATERMARK
    for status in ("synthetic", "untrained", "unknown", "experimental"):
        assert not clinical.is_clinically_meaningful(status)
        assert clinical.weights_banner(status).endswith("output is not clinically meaningful")
        assert clinical.weights_watermark(status).endswith("NOT FOR CLINICAL USE")
        assert clinical.do_not_act(status).startswith("Do not act on this output")
    assert "synthetic" in clinical.weights_banner("synthetic").lower()


def test_weights_summary_counts_results_and_warns_unless_all_trained():
    assert clinical.weights_summary({"trained": 3}) == {"weights": {"trained": 3}, "weights_warning": None}
    assert clinical.weights_summary({}) == {"weights": {}, "weights_warning": None}
    summary = clinical.weights_summary({"trained": 1, None: 1, "untrained": 12})
    assert summary["weights"] == {"untrained": 12, "trained": 1, "unknown": 1}
    warning = summary["weights_warning"]
    assert warning.startswith("UNTRAINED MODEL — ranking by probability is not meaningful")
    assert "13 of 14 results" in warning
    synthetic = clinical.weights_summary({"synthetic": 2})["weights_warning"]
    assert "SYNTHETIC" in synthetic and "2 of 2 results" in synthetic


# ---------------------------------------------------------------- vocabularies


def test_the_api_literals_are_the_clinical_lists():
    assert get_args(Sex) == clinical.SEXES and get_args(Site) == clinical.SITES
    assert set(get_args(Diagnosis)) == set(clinical.DIAGNOSES)
    assert set(get_args(RiskBand)) == set(clinical.RISK_BANDS)
    assert set(get_args(WeightsStatus)) == set(clinical.WEIGHTS_STATUSES)


def test_api_vocabularies_equal_the_pipeline_metadata_encoding():
    from worker.pipeline import metadata

    assert API_SEXES == clinical.SEXES == metadata.SEXES
    assert API_SITES == clinical.SITES == metadata.SITES
    assert 1 + len(clinical.SEXES) + len(clinical.SITES) == metadata.METADATA_SIZE
    hot = set()
    for sex in API_SEXES:
        for site in API_SITES:
            inputs = AnalysisInputs.model_validate({"sex": sex, "site": site, "age": 50})
            vector = metadata.encode_metadata(inputs.age, inputs.sex, inputs.site)
            assert vector[1:].sum() == 2.0, (sex, site)
            hot.add(tuple(vector[1:].nonzero()[0]))
    assert len(hot) == len(API_SEXES) * len(API_SITES), "every API value has its own model input"
    for age in clinical.AGE_RANGE:
        AnalysisInputs.model_validate({"age": age})
        metadata.encode_metadata(age)


@pytest.mark.parametrize(("field", "value"), [("sex", "other"), ("site", "elbow"), ("age", 121), ("age", -1)])
def test_what_the_api_refuses_the_pipeline_refuses_too(field, value):
    from worker.pipeline import metadata
    from worker.pipeline.errors import MetadataError

    with pytest.raises(ValidationError):
        AnalysisInputs.model_validate({field: value})
    with pytest.raises(MetadataError):
        metadata.encode_metadata(**{"age": None, **{field: value}})


def test_openapi_enumerations_of_sex_and_site_are_the_vocabularies():
    from api.main import create_app
    from shared.config import Settings

    found = {"sex": [], "site": []}

    def walk(node):
        if isinstance(node, dict):
            for name, schema in (node.get("properties") or {}).items():
                if name in found and isinstance(schema, dict) and "enum" in schema:
                    found[name].append(tuple(schema["enum"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(create_app(Settings(_env_file=None)).openapi())
    assert found["sex"], "the API documents the sex vocabulary"
    assert all(set(e) == set(clinical.SEXES) for e in found["sex"]), found["sex"]
    assert all(set(e) == set(clinical.SITES) for e in found["site"]), found["site"]


# ---------------------------------------------------------------- triage applies the rules


def test_triage_rows_take_the_rules_from_the_one_home():
    from api.services.triage import CSV_COLUMNS, TriageRow, TriageSummary

    def row(status="succeeded", probability=0.3, weights="untrained", code=None, group="tan"):
        found = None
        if probability is not None:
            found = result(
                probability=probability, uncertainty=0.01, risk_band=clinical.risk_band(probability),
                diagnosis=clinical.diagnosis(probability),
                equity={"skin_group": group, "ita_degrees": 20.0, "bias_warning": clinical.group_bias_warning(group)},
            )
        return TriageRow(uuid.uuid4(), None, status, found, model(weights=weights), code, None, None, None, 50,
                         "unknown", "unknown", None)

    rows = [row(), row(probability=0.9, weights="trained"), row(weights="synthetic", group="dark"),
            row("rejected", None, "untrained", "no_lesion", None)]
    items = [r.as_item(rank) for rank, r in enumerate(rows, 1)]
    assert CSV_COLUMNS.index("weights") == CSV_COLUMNS.index("status") + 1
    assert [i.weights for i in items] == ["untrained", "trained", "synthetic", "untrained"]
    assert items[0].review_reason == "weights_not_trained" and items[1].needs_review is False
    assert items[2].review_reason == "bias_warning;weights_not_trained"
    assert items[3].retake_advice == clinical.retake_advice("no_lesion")
    summary = TriageSummary()
    for r, item in zip(rows, items, strict=True):
        summary.add(r, item)
    body = summary.out()
    assert body.weights == {"untrained": 1, "synthetic": 1, "trained": 1}
    assert body.weights_warning.startswith("UNTRAINED MODEL — ranking by probability is not meaningful")
    assert {g.skin_group: g.bias_warning for g in body.equity} == {"tan": False, "dark": True}


# ---------------------------------------------------------------- the PLAN of a disposition (issue 21)


def test_any_import_order_of_the_disposition_rules_works():
    # wording imports the disposition module, which imports the package: no order may break it.
    modules = ("shared.clinical.disposition", "shared.clinical.wording", "shared.schemas.analyses", "shared.clinical")
    for first in modules:
        code = f"import {first}; from shared.clinical import disposition, plan_for; print(disposition.ROUTINE)"
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.strip() == "routine", done.stderr


def test_the_review_lists_name_known_sites_and_groups():
    assert clinical.disposition.WEAKLY_EVIDENCED_SITES.issubset(clinical.SITES)
    assert clinical.disposition.REVIEW_SKIN_GROUPS.issubset(clinical.SKIN_GROUPS)
    assert set(clinical.MODEL_OUTPUT_REASONS) <= set(clinical.disposition.REVIEW_REASON_CODES)


def _plan(disposition: str, weights: str | None = "trained", **changes) -> list[str]:
    values = {"risk_band": "low", "uncertainty": 0.01, "bias_warning": False, "diameter_mm": None}
    return clinical.plan(disposition=disposition, weights=weights, **{**values, **changes})


def test_the_plan_is_a_function_of_the_disposition():
    assert _plan("urgent_referral", risk_band="high") == [clinical.DISPOSITION_PLAN["urgent_referral"]]
    assert _plan("clinician_review") == [clinical.DISPOSITION_PLAN["clinician_review"]]
    assert _plan("routine") == [clinical.DISPOSITION_PLAN["routine"], clinical.disposition.SAFETY_NETTING]
    assert _plan("routine", safety_netting="Come back in 6 weeks.")[1] == "Come back in 6 weeks."
    # Advice that would contradict a routine disposition never joins it.
    assert _plan("routine", diameter_mm=7.0, uncertainty=0.1) == _plan("routine")
    review = _plan("clinician_review", diameter_mm=7.0, uncertainty=0.1, bias_warning=True)
    assert review[1:] == [clinical.MODERATE_UNCERTAINTY_ADVICE, clinical.BIAS_ADVICE, clinical.DIAMETER_ADVICE]


@pytest.mark.parametrize("weights", ["untrained", "synthetic", None, "something-new"])
@pytest.mark.parametrize("disposition", ["urgent_referral", "clinician_review", "routine"])
def test_weights_not_trained_plan_only_clinical_review(weights, disposition):
    plan = _plan(disposition, weights, risk_band="high", uncertainty=0.3, bias_warning=True, diameter_mm=9.0)
    assert plan == [clinical.do_not_act(weights), clinical.NOT_ASSESSABLE]
    assert not any(word in " ".join(plan).lower() for word in ("routine", "urgent", "no concern"))


def test_disposition_of_never_trusts_untrained_output():
    # Even a stored result that claims an urgent referral from untrained weights is shown as review.
    claimed = result(disposition="urgent_referral", disposition_reasons=["high_probability", "near_threshold",
                                                                         "missing_metadata"])
    decision = clinical.disposition_of(claimed, model(weights="untrained"))
    assert decision.disposition == "clinician_review"
    assert decision.reasons == ["weights_not_trained", "missing_metadata"]
    assert decision.safety_netting is None


def test_disposition_of_a_result_stored_before_dispositions():
    assert result().disposition is None  # tests.factories.result() records none
    high = clinical.disposition_of(result(), model())
    assert (high.disposition, high.reasons) == ("urgent_referral", ["high_probability"])
    low = clinical.disposition_of(result(probability=0.01), model())
    assert (low.disposition, low.reasons) == ("clinician_review", [])
    tuned = clinical.disposition_of(result(probability=0.85), model(threshold=0.9))
    assert tuned.disposition == "clinician_review"  # below the model's own high-risk point


def test_a_recorded_routine_always_carries_safety_netting():
    stored = result(probability=0.02, disposition="routine", disposition_reasons=["below_rule_out"])
    decision = clinical.disposition_of(stored, model())
    assert decision.safety_netting == clinical.disposition.SAFETY_NETTING
    assert clinical.disposition_text(decision) == "Routine (safety-netting advice)"
    assert clinical.reason_sentences(decision) == [clinical.disposition.REASON_TEXT["below_rule_out"]]
