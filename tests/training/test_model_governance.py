"""Issue 24 on real Postgres, S3 and the API: `models activate --acceptance FILE` refuses a
candidate that fails its acceptance file (each failed criterion listed), `--override REASON`
activates it with the reason on the registry row and in the audit trail, a passing candidate
activates; `GET /v1/models/{id}/card` (JSON and escaped HTML) and `GET /v1/models`.

The models here are registered bytes with a card, and their evaluations stored directly
(``tests/training/reports.py``): no training and no pipeline run, so this file is quick. The
evaluation of a trained model stored by `evaluate` is in test_model_registry.py."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import httpx
from sqlalchemy import select

from shared import model_registry
from shared.config import get_settings
from shared.db import session_scope
from shared.model_acceptance import Governance
from shared.scopes import Scope
from shared.tables import SYSTEM_CHAIN, AuditEvent, ModelVersion
from shared.tenants import create_key
from tests.training.reports import synthetic_report

SET_SHA = hashlib.sha256(b"issue 24 evaluation set").hexdigest()
CARD = {
    "kind": "fusion",
    "training_data": {"description": "<script>alert('card')</script> site photos", "synthetic": False,
                      "images": 960, "patients": 240, "positives": 96},
    "calibration": {"threshold": 0.5, "temperature": 1.1, "target_sensitivity": 0.95, "chosen_on": "validation",
                    "rule_out_threshold": 0.3, "rule_out_sensitivity": 0.95},
    "metrics": {"validation": {"auc": 0.93}},
}


def _register_evaluated(context, weaker: str = "brown") -> tuple[str, str]:
    """A registered Fusion candidate with an evaluation stored on SET_SHA; (id, version)."""
    payload = f"fusion-{uuid.uuid4()}".encode()
    sha256 = hashlib.sha256(payload).hexdigest()
    with session_scope(context.session_factory) as session:
        row, _ = model_registry.register(session, context.store, kind="fusion", data=payload, sha256=sha256,
                                         version=f"gov-{sha256[:8]}", card=CARD)
        model_registry.store_evaluation(session, row.id, synthetic_report(row.id, sha256, SET_SHA, weaker=weaker))
        return str(row.id), row.version


def _plan(tmp_path, name: str, **bounds: object) -> str:
    fields = {"min_auc": 0.8, "min_sensitivity_at_rule_out": 0.9, "max_group_gap_points": 30, **bounds}
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"description: {name}\nevaluation_set:\n  name: holdout\n  sha256: \"{SET_SHA}\"\n"
                    + "".join(f"{key}: {value}\n" for key, value in fields.items()))
    return str(path)


def _row(context, model_id: str) -> ModelVersion:
    with context.session_factory() as session:
        row = session.get(ModelVersion, uuid.UUID(model_id))
        assert row is not None
        session.expunge(row)
        return row


def _activations(context, model_id: str) -> list[AuditEvent]:
    with context.session_factory() as session:
        return list(session.scalars(
            select(AuditEvent).where(AuditEvent.tenant_id == SYSTEM_CHAIN, AuditEvent.resource_id == model_id,
                                     AuditEvent.action == "model.activate").order_by(AuditEvent.seq)))


def test_a_failing_candidate_is_refused_and_activates_only_with_an_override(registry, run_cli, tmp_path):
    context = registry
    model_id, version = _register_evaluated(context)
    failing = _plan(tmp_path, "strict", min_auc=0.99, max_group_gap_points=5)

    refused = run_cli("models", "activate", "fusion", version, "--acceptance", failing)
    assert refused.exit_code == 1, refused.output
    lines = refused.output.splitlines()
    assert f"fusion {version} fails its acceptance criteria ({failing}; evaluation set holdout" in lines[0]
    failed = [line.strip() for line in lines[1:] if line.startswith("  ")]
    assert failed[0].startswith("min_auc: overall AUC 0.") and failed[0].endswith(" is below 0.990")
    assert any(line.startswith("max_group_gap_points: brown AUC ") and line.endswith("(more than 5)")
               for line in failed), failed
    assert not any(line.startswith("min_sensitivity_at_rule_out") for line in failed)
    assert "was not activated; activate it anyway with --override" in refused.output
    assert _row(context, model_id).status == "candidate"
    (refusal,) = _activations(context, model_id)
    assert refusal.outcome == "invalid" and refusal.actor.startswith("operator:")
    assert refusal.detail["acceptance"] == "failed" and refusal.detail["evaluation_set"]["sha256"] == SET_SHA
    assert {(f["criterion"], f.get("group")) for f in refusal.detail["failed"]} >= {
        ("min_auc", None), ("max_group_gap_points", "brown")}

    reason = "clinical safety officer accepted the brown-group gap pending a larger set (CR-17)"
    overridden = run_cli("models", "activate", "fusion", version, "--acceptance", failing, "--override", reason)
    assert overridden.exit_code == 0, overridden.output
    assert "min_auc: overall AUC" in overridden.output and "OVERRIDDEN by operator:" in overridden.output
    assert f"fusion {version} is active" in overridden.output
    row = _row(context, model_id)
    assert row.status == "active"
    latest = Governance.of(row.governance).latest
    assert latest is not None and latest.override is not None and latest.override.reason == reason
    assert latest.acceptance is not None and not latest.acceptance.passed
    assert {r.criterion for r in latest.acceptance.failed} == {"min_auc", "max_group_gap_points"}
    assert latest.acceptance.file == failing and len(latest.acceptance.file_sha256 or "") == 64
    activation = _activations(context, model_id)[-1]
    assert activation.outcome == "success"
    assert activation.detail["override_reason"] == reason and activation.detail["acceptance"] == "failed"
    assert activation.detail["version"] == version
    assert ("min_auc", None) in {(f["criterion"], f.get("group")) for f in activation.detail["failed"]}
    measured = next(f for f in activation.detail["failed"] if f["criterion"] == "min_auc")
    assert measured["bound"] == 0.99 and 0.5 < measured["measured"] < 0.99


def test_a_passing_candidate_activates_and_the_check_is_recorded(registry, run_cli, tmp_path):
    context = registry
    model_id, version = _register_evaluated(context, weaker="none")
    lenient = _plan(tmp_path, "lenient")
    passed = run_cli("models", "activate", "fusion", version, "--acceptance", lenient)
    assert passed.exit_code == 0, passed.output
    assert f"acceptance: passed 12 criteria on evaluation set holdout ({lenient})" in passed.output
    assert f"fusion {version} is active" in passed.output
    activation = _activations(context, model_id)[-1]
    assert activation.detail["acceptance"] == "passed" and "failed" not in activation.detail
    assert "override_reason" not in activation.detail
    latest = Governance.of(_row(context, model_id).governance).latest
    assert latest is not None and latest.acceptance is not None and latest.acceptance.passed and latest.override is None

    # Another evaluation set named in the file: this candidate has no stored evaluation on it.
    other = tmp_path / "other.yaml"
    other.write_text(Path(lenient).read_text().replace(SET_SHA, "c" * 64))
    second_id, second = _register_evaluated(context)
    missing = run_cli("models", "activate", "fusion", second, "--acceptance", str(other))
    assert missing.exit_code == 1 and "evaluation_set: no stored evaluation on evaluation set holdout" in missing.output
    # Without criteria it activates as before, and says nothing was checked.
    unchecked = run_cli("models", "activate", "fusion", second)
    assert unchecked.exit_code == 0, unchecked.output
    assert "no acceptance criteria were checked" in unchecked.output and f"(retired {version})" in unchecked.output
    assert _activations(context, second_id)[-1].detail["acceptance"] == "not_checked"


def test_bad_acceptance_files_and_options_are_refused(registry, run_cli, tmp_path, monkeypatch):
    context = registry
    model_id, version = _register_evaluated(context)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"evaluation_set: {{name: holdout, sha256: \"{SET_SHA}\"}}\nmin_auc: 1.2\n")
    result = run_cli("models", "activate", "fusion", version, "--acceptance", str(bad))
    assert result.exit_code == 1
    assert f"{bad}: min_auc: Input should be less than or equal to 1" in result.output
    assert "min_sensitivity_at_rule_out: Field required" in result.output
    no_plan = run_cli("models", "activate", "fusion", version, "--override", "because")
    assert no_plan.exit_code == 2 and "give --acceptance FILE or set ACCEPTANCE_FILE" in no_plan.output
    empty = run_cli("models", "activate", "fusion", version, "--acceptance", _plan(tmp_path, "p"), "--override", " ")
    assert empty.exit_code == 2 and "--override needs a reason" in empty.output
    assert _row(context, model_id).status == "candidate"

    # ACCEPTANCE_FILE is the default file: the same refusal without --acceptance.
    monkeypatch.setenv("DERMASENTINEL_ACCEPTANCE_FILE", _plan(tmp_path, "default", min_auc=0.99))
    get_settings.cache_clear()
    refused = run_cli("models", "activate", "fusion", version)
    assert refused.exit_code == 1 and "min_auc: overall AUC" in refused.output
    imported = run_cli("models", "import", str(tmp_path / "bad.yaml"), "--kind", "fusion", "--activate")
    assert imported.exit_code == 2 and "ACCEPTANCE_FILE is set" in imported.output


# ------------------------------------------------------------------------- the API


def test_the_model_card_over_http(registry, run_cli, tmp_path, api, api_url, context, tenant_key):
    model_id, version = _register_evaluated(context)
    reason = 'accepted by <b>the board</b> & "CR-18"'
    overridden = run_cli("models", "activate", "fusion", version, "--acceptance",
                         _plan(tmp_path, "strict", min_auc=0.99), "--override", reason)
    assert overridden.exit_code == 0, overridden.output

    response = api.get(f"/v1/models/{model_id}/card")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    card = response.json()
    assert card["schema"] == "dermasentinel.applied-model-card/1" and card["model"]["status"] == "active"
    assert card["model"]["sha256"] == _row(context, model_id).sha256 and card["model"]["version"] == version
    assert {"name", "developer", "weights", "regulatory_status", "intended_use", "out_of_scope_use", "model_type",
            "inputs", "outputs", "training_data", "evaluation", "operating_points", "limitations",
            "bias_and_fairness", "acceptance", "applied_model_card"} <= set(card)
    chai = card["applied_model_card"]
    assert {"BasicInfo", "ReleaseInfo", "ModelSummary", "UsesAndDirections", "Warnings", "TrustIngredients",
            "KeyMetrics", "Resources", "Bibliography"} == set(chai)
    assert chai["ReleaseInfo"]["RegulatoryApproval"].startswith("Not a certified medical device")
    groups = {g["skin_group"]: g for g in card["evaluation"]["per_skin_group"]}
    assert groups["brown"]["count"] == 40 and groups["brown"]["auc"]["ci95"][0] is not None
    assert card["evaluation"]["evaluation_set"]["sha256"] == SET_SHA
    assert card["operating_points"]["rule_out_threshold"] == 0.3 and card["weights"] == "trained"
    assert card["acceptance"]["state"] == "failed" and card["acceptance"]["override_reason"] == reason

    page = api.get(f"/v1/models/{model_id}/card", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    text = page.text
    assert "<script" not in text and "&lt;script&gt;alert(&#39;card&#39;)&lt;/script&gt; site photos" in text
    assert "accepted by &lt;b&gt;the board&lt;/b&gt; &amp; &#34;CR-18&#34;" in text
    assert api.get(f"/v1/models/{model_id}/card", params={"format": "html"}).headers["content-type"].startswith(
        "text/html")
    assert api.get(f"/v1/models/{model_id}/card", params={"format": "json"},
                   headers={"Accept": "text/html"}).json()["model"]["id"] == model_id

    listed = api.get("/v1/models")
    assert listed.status_code == 200
    mine = next(m for m in listed.json()["data"] if m["id"] == model_id)
    assert (mine["status"], mine["acceptance"], mine["override"]) == ("active", "failed", True)
    assert mine["card_url"] == f"/v1/models/{model_id}/card" and mine["evaluation_set"]["name"] == "holdout"

    unknown = api.get(f"/v1/models/{uuid.uuid4()}/card")
    assert unknown.status_code == 404 and unknown.headers["content-type"].startswith("application/problem+json")
    assert api.get("/v1/models/not-an-id/card").status_code == 404

    with session_scope(context.session_factory) as session:
        _, narrow = create_key(session, tenant_key[0], "reader", quota=20, scopes=[Scope.analyses_read])
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {narrow}"}, timeout=60) as client:
        for path in (f"/v1/models/{model_id}/card", "/v1/models"):
            forbidden = client.get(path)
            assert forbidden.status_code == 403 and "models:read" in forbidden.json()["detail"]

    reads = api.get("/v1/audit-events", params={"action": "model_card.read", "limit": 200}).json()["data"]
    outcomes = [(row["resource_id"], row["outcome"], row["detail"]) for row in reads]
    assert (model_id, "success", {"format": "html"}) in outcomes
    assert (model_id, "success", {"format": "json"}) in outcomes
    assert (model_id, "denied", None) in outcomes
