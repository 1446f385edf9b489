"""Issue 24 without services: the acceptance file (schema, errors that name the field), the
check of a stored evaluation against it, the record it leaves, and the model card built from a
registry row (CHAI fields, per-group metrics, escaped HTML)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from shared import model_acceptance, model_cards
from shared.model_acceptance import AcceptanceFileError, parse_acceptance
from shared.schemas.evaluation import EvaluationReport
from shared.schemas.models import ModelCardOut
from shared.tables import ModelVersion
from tests.training.reports import GROUPS, synthetic_report

SET_SHA = "b" * 64
MODEL_SHA = "a" * 64


def _report(model_id: uuid.UUID, weaker: str = "brown", images: int = 200) -> EvaluationReport:
    return synthetic_report(model_id, MODEL_SHA, SET_SHA, weaker=weaker, images=images)


def _plan(**changes: object) -> str:
    fields: dict[str, object] = {
        "evaluation_set": f'{{name: holdout, sha256: "{SET_SHA}"}}', "min_auc": 0.8,
        "min_sensitivity_at_rule_out": 0.9, "max_group_gap_points": 30,
    }
    fields.update(changes)
    return "\n".join(f"{key}: {value}" for key, value in fields.items() if value is not None) + "\n"


# ------------------------------------------------------------------------------ the file


def test_a_valid_acceptance_file_parses_with_its_defaults():
    criteria = parse_acceptance("schema: dermasentinel.acceptance/1\n" + _plan())
    assert criteria.evaluation_set.sha256 == SET_SHA and criteria.min_auc == 0.8
    assert criteria.group_gap_metrics == ["auc", "sensitivity_at_rule_out"]
    assert (criteria.min_group_count, criteria.required_groups, criteria.bound_on) == (1, [], "estimate")


@pytest.mark.parametrize(("text", "named"), [
    (_plan(min_auc=1.5), "min_auc: Input should be less than or equal to 1"),
    (_plan(min_auc=None), "min_auc: Field required"),
    (_plan(min_aucc=0.9), "min_aucc: Extra inputs are not permitted"),
    (_plan(evaluation_set="{name: holdout, sha256: abc}"), "evaluation_set.sha256: String should match pattern"),
    (_plan(evaluation_set="{name: holdout, sha256: 1234}"), "evaluation_set.sha256: Input should be a valid string "
                                                            "(quote it in YAML"),
    (_plan(evaluation_set=None), "evaluation_set: Field required"),
    (_plan(required_groups="[purple]"), "required_groups.0: Input should be"),
    (_plan(group_gap_metrics="[auc, auc]"), "group_gap_metrics names a metric twice"),
    (_plan(max_group_gap_points=-1), "max_group_gap_points: Input should be greater than or equal to 0"),
    (_plan(bound_on="median"), "bound_on: Input should be 'estimate' or 'ci_lower'"),
    ("- min_auc: 0.9\n", "an acceptance file is a YAML mapping (field: value), not list"),
    ("min_auc: [0.9\n", "not valid YAML"),
])
def test_a_bad_acceptance_file_is_an_error_naming_the_field(text, named):
    with pytest.raises(AcceptanceFileError) as raised:
        parse_acceptance(text, "plan.yaml")
    assert str(raised.value).startswith("plan.yaml: ") and named in str(raised.value), str(raised.value)


def test_load_acceptance_gives_the_files_sha256(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(_plan())
    criteria, digest = model_acceptance.load_acceptance(path)
    assert criteria.min_auc == 0.8 and len(digest) == 64
    with pytest.raises(AcceptanceFileError, match="cannot read the acceptance file"):
        model_acceptance.load_acceptance(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------ the check


def test_a_passing_evaluation_passes_every_criterion():
    check = model_acceptance.check(parse_acceptance(_plan()), _report(uuid.uuid4()))
    assert check.passed and check.failed == []
    assert {r.criterion for r in check.results} == {"min_auc", "min_sensitivity_at_rule_out", "max_group_gap_points"}
    assert len([r for r in check.results if r.criterion == "max_group_gap_points"]) == 2 * len(GROUPS)


def test_each_failed_criterion_is_listed_with_the_value_measured_and_its_bound():
    report = _report(uuid.uuid4())
    plan = parse_acceptance(_plan(min_auc=0.99, max_group_gap_points=5, required_groups="[dark]"))
    check = model_acceptance.check(plan, report)
    assert not check.passed
    failed = {(r.criterion, r.group, r.metric): r for r in check.failed}
    auc = report.overall.metrics["auc"].value
    assert failed["min_auc", None, "auc"].measured == auc and failed["min_auc", None, "auc"].bound == 0.99
    assert failed["min_auc", None, "auc"].message == f"min_auc: overall AUC {auc:.3f} is below 0.990"
    brown = failed["max_group_gap_points", "brown", "auc"]
    assert brown.bound == 5 and brown.measured > 5 and "brown AUC" in brown.message and "points below" in brown.message
    assert failed["required_groups", "dark", None].message == "required_groups: no image of the dark group was scored"
    assert ("min_sensitivity_at_rule_out", None, "sensitivity_at_rule_out") not in failed
    detail = model_acceptance.audit_detail(check, "clinical lead approved")
    assert detail["acceptance"] == "failed" and detail["override_reason"] == "clinical lead approved"
    assert {"criterion": "min_auc", "metric": "auc", "measured": round(auc, 4), "bound": 0.99} in detail["failed"]


def test_the_ci_lower_end_and_small_groups():
    report = _report(uuid.uuid4())
    auc = report.overall.metrics["auc"]
    between = round((auc.value + auc.ci95[0]) / 2, 4)
    assert model_acceptance.check(parse_acceptance(_plan(min_auc=between)), report).passed
    lower = model_acceptance.check(parse_acceptance(_plan(min_auc=between, bound_on="ci_lower")), report)
    assert [r.criterion for r in lower.failed] == ["min_auc"] and "95% CI lower end" in lower.failed[0].message
    # 40 images per group: with min_group_count 50 no group is judged, and a required one fails.
    small = model_acceptance.check(parse_acceptance(_plan(min_group_count=50, max_group_gap_points=0)), report)
    assert small.passed and all(r.criterion != "max_group_gap_points" for r in small.results)
    required = model_acceptance.check(parse_acceptance(_plan(min_group_count=50, required_groups="[brown]")), report)
    assert [(r.criterion, r.group) for r in required.failed] == [("min_group_count", "brown")]


def test_no_stored_evaluation_on_the_set_fails():
    check = model_acceptance.check(parse_acceptance(_plan()), None)
    assert not check.passed and [r.criterion for r in check.failed] == ["evaluation_set"]
    assert "no stored evaluation on evaluation set holdout" in check.failed[0].message


# ------------------------------------------------------------------------------ the card


def _row(card: dict | None = None) -> ModelVersion:
    model_id = uuid.uuid4()
    row = ModelVersion(
        id=model_id, kind="fusion", version="fusion-7", sha256=MODEL_SHA, object_key="models/fusion/x.pth",
        status="candidate", metrics={}, threshold=0.42, temperature=1.3, created_at=datetime(2026, 5, 1, tzinfo=UTC),
        evaluations={}, governance={},
        card=card if card is not None else {
            "kind": "fusion", "version": "fusion-7",
            "training_data": {"description": "<script>alert('x')</script> clinic photos", "synthetic": False,
                              "images": 960, "patients": 240, "positives": 96, "fingerprint": "f" * 64},
            "split": {"method": "StratifiedGroupKFold by patient_id, stratified by target"},
            "calibration": {"threshold": 0.42, "temperature": 1.3, "target_sensitivity": 0.95,
                            "chosen_on": "validation", "sensitivity": 0.96, "specificity": 0.7,
                            "rule_out_threshold": 0.2, "rule_out_sensitivity": 0.97,
                            "rule_out_sensitivity_reached": 0.98, "rule_out_npv": 0.99},
            "metrics": {"validation": {"auc": 0.91, "loss": 0.31}},
        },
    )
    return row


def _with_evaluation(row: ModelVersion) -> ModelVersion:
    report = _report(row.id)
    row.evaluations = {SET_SHA: {"evaluation_set": report.evaluation_set.model_dump(),
                                 "stored_at": "2026-05-02T10:00:00Z", "report": report.as_json()}}
    return row


def test_a_card_has_the_chai_fields_and_per_group_metrics():
    row = _with_evaluation(_row())
    card = model_cards.build_card(row)
    body = card.model_dump(mode="json", by_alias=True)
    assert body["schema"] == "dermasentinel.applied-model-card/1"
    assert body["model"] == {"id": str(row.id), "kind": "fusion", "version": "fusion-7", "sha256": MODEL_SHA,
                             "status": "candidate", "created_at": "2026-05-01T00:00:00Z", "activated_at": None,
                             "card_url": f"/v1/models/{row.id}/card"}
    assert body["weights"] == "trained" and "not a certified medical device" in body["regulatory_status"].lower()
    chai = body["applied_model_card"]
    assert list(chai) == ["BasicInfo", "ReleaseInfo", "ModelSummary", "UsesAndDirections", "Warnings",
                          "TrustIngredients", "KeyMetrics", "Resources", "Bibliography"]
    assert chai["ReleaseInfo"]["RegulatoryApproval"].startswith("Not a certified medical device")
    assert MODEL_SHA in chai["ReleaseInfo"]["ReleaseVersion"]
    assert set(chai["KeyMetrics"]) == {"UsefulnessUsabilityEfficacy", "FairnessEquity", "SafetyReliability"}
    fairness = chai["KeyMetrics"]["FairnessEquity"]["Results"]
    assert any(result["Label"].startswith("AUC (brown, n=40)") for result in fairness)
    evaluation = body["evaluation"]
    assert evaluation["evaluation_set"] == {"name": "holdout", "sha256": SET_SHA, "images": 200}
    groups = {g["skin_group"]: g for g in evaluation["per_skin_group"]}
    assert list(groups) == list(GROUPS) and evaluation["groups_not_evaluated"] == ["dark"]
    brown = groups["brown"]
    assert brown["count"] == 40 and brown["bias_warning"] is True and groups["tan"]["bias_warning"] is False
    assert set(brown["auc"]) == {"value", "ci95"} and brown["sensitivity_at_rule_out"]["value"] is not None
    points = body["operating_points"]
    assert (points["threshold"], points["rule_out_threshold"], points["rule_out_sensitivity"]) == (0.42, 0.2, 0.97)
    assert points["sensitivity_at_rule_out_evaluated"]["value"] == evaluation["overall"]["sensitivity_at_rule_out"][
        "value"]
    assert body["training_data"]["patients"] == 240 and body["validation_metrics"] == {"auc": 0.91, "loss": 0.31}
    assert any("ITA" in note for note in body["bias_and_fairness"])
    assert any("Largest AUC shortfall: brown" in note for note in body["bias_and_fairness"])
    assert body["acceptance"] is None
    ModelCardOut.model_validate(body)  # the JSON reads back as its schema


def test_a_card_without_an_evaluation_says_so():
    card = model_cards.build_card(_row({"kind": "fusion", "training_data": {"synthetic": True}}))
    assert card.evaluation is None and card.weights == "synthetic"
    assert any("No evaluation is stored" in item for item in card.limitations)
    assert any("synthetic" in item for item in card.limitations)
    assert card.operating_points is not None and card.operating_points.rule_out_is_default
    assert card.applied_model_card.KeyMetrics.SafetyReliability.Results[0].Label == "not evaluated"


def test_the_card_shows_the_latest_activations_acceptance_and_override():
    row = _with_evaluation(_row())
    check = model_acceptance.check(parse_acceptance(_plan(min_auc=0.99)), _report(row.id), file="plan.yaml",
                                   file_sha256="c" * 64)
    record = model_acceptance.activation_record("operator:ana", check, "validated on the site's own audit")
    row.governance = model_acceptance.with_activation(row.governance, record)
    acceptance = model_cards.build_card(row).acceptance
    assert acceptance is not None and acceptance.state == "failed" and acceptance.actor == "operator:ana"
    assert acceptance.override_reason == "validated on the site's own audit"
    assert [f.criterion for f in acceptance.failed] == ["min_auc"] and acceptance.evaluation_set.images == 200
    listed = model_cards.listed(row)
    assert (listed.acceptance, listed.override, listed.evaluation_set.name) == ("failed", True, "holdout")


def test_the_html_card_escapes_every_value():
    row = _with_evaluation(_row())
    reason = '<img src=x onerror="alert(1)">'
    record = model_acceptance.activation_record(
        "operator:ana", model_acceptance.check(parse_acceptance(_plan(min_auc=0.99)), _report(row.id)), reason)
    row.governance = model_acceptance.with_activation(row.governance, record)
    page = model_cards.render_html(model_cards.build_card(row))
    assert page.startswith("<!doctype html>") and "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; clinic photos" in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page
    assert "Not a certified medical device" in page and "brown" in page and "http" not in page.split("</style>")[0]


def test_card_url_is_the_api_path():
    ident = uuid.uuid4()
    assert model_cards.card_url(ident) == f"/v1/models/{ident}/card"
