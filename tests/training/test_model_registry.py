"""The model registry on real Postgres and S3: import, list, activate, rollback; a running
worker switches to the active model between passes and every result names its version."""

from __future__ import annotations

import hashlib
import json
import time
import uuid

import pytest

from shared import model_cards, model_registry
from shared.db import session_scope
from tests.training.subsets import write_subset
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def _register(context, kind: str, payload: bytes, version: str | None = None):
    with session_scope(context.session_factory) as session:
        row, created = model_registry.register(
            session, context.store, kind=kind, data=payload, sha256=hashlib.sha256(payload).hexdigest(),
            version=version,
        )
        return row.id, row.version, created


def _active(context, kind):
    with context.session_factory() as session:
        model = model_registry.active_models(session).get(kind)
        return model.version if model else None


def test_activate_retires_the_previous_and_rollback_walks_back(registry):
    context = registry
    tag = uuid.uuid4().hex[:8]
    _, first, created = _register(context, "scalpel", f"a-{tag}".encode(), f"a-{tag}")
    _, again, created_again = _register(context, "scalpel", f"a-{tag}".encode())
    assert created and not created_again and again == first  # the same file is one model
    _, second, _ = _register(context, "scalpel", f"b-{tag}".encode(), f"b-{tag}")
    with session_scope(context.session_factory) as session:
        model_registry.activate(session, "scalpel", first)
    with session_scope(context.session_factory) as session:
        active, previous = model_registry.activate(session, "scalpel", second)
        assert (active.version, previous.version, previous.status) == (second, first, "retired")
    assert _active(context, "scalpel") == second
    with session_scope(context.session_factory) as session:
        model_registry.rollback(session, "scalpel")
    assert _active(context, "scalpel") == first
    with session_scope(context.session_factory) as session:
        now, rolled_back = model_registry.rollback(session, "scalpel")
        assert now is None and rolled_back.version == first
    assert _active(context, "scalpel") is None
    with session_scope(context.session_factory) as session, pytest.raises(model_registry.NothingToRollBack):
        model_registry.rollback(session, "scalpel")
    stored = context.store.get(model_registry.MODELS_PURPOSE, model_registry.model_object_key(
        "scalpel", hashlib.sha256(f"b-{tag}".encode()).hexdigest()))
    assert stored == f"b-{tag}".encode()


def test_cli_refuses_unknown_versions_and_bad_checkpoints(registry, run_cli, tmp_path):
    result = run_cli("models", "activate", "fusion", "no-such-version")
    assert result.exit_code != 0 and "no single fusion model 'no-such-version'" in result.output
    bad = tmp_path / "fusion.pth"
    bad.write_bytes(b"not a checkpoint")
    result = run_cli("models", "import", str(bad), "--kind", "fusion")
    assert result.exit_code != 0 and "was not installed" in result.output
    assert "not a checkpoint" not in run_cli("models", "list").output


def _submit(api, seed: int) -> str:
    image = encode_jpeg(make_lesion(seed=seed, size=(180, 240), radius_frac=0.25).image)
    response = api.post("/v1/analyses", files={"image": ("lesion.jpg", image, "image/jpeg")},
                        data={"age": "61", "sex": "female", "site": "torso"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_a_running_worker_switches_on_activation_and_results_name_the_version(
    registry, run_cli, trained_fusion, api, worker, wait_final, settings, context
):
    before = wait_final(_submit(api, 1))
    assert before["status"] == "succeeded" and before["model"]["weights"] == "untrained"

    imported = run_cli("models", "import", str(trained_fusion.checkpoint), "--kind", "fusion")
    assert imported.exit_code == 0, imported.output
    listed = json.loads(run_cli("models", "list", "--kind", "fusion", "--json").output)
    row = next(r for r in listed if r["version"] == "synthetic-test-1")
    assert row["status"] == "candidate" and row["weights"] == "synthetic"
    calibration = trained_fusion.card["calibration"]
    assert row["threshold"] == calibration["threshold"]
    assert row["rule_out_threshold"] == calibration["rule_out_threshold"] and row["rule_out_sensitivity"] == 0.95
    listed_text = run_cli("models", "list", "--kind", "fusion").output
    line = next(line for line in listed_text.splitlines() if "synthetic-test-1" in line)
    assert (f"threshold {calibration['threshold']:.3f} (sens 0.95); rule-out {calibration['rule_out_threshold']:.3f} "
            "(sens 0.95)") in line

    activated = run_cli("models", "activate", "fusion", "synthetic-test-1")
    assert activated.exit_code == 0 and "synthetic-test-1 is active" in activated.output
    time.sleep(settings.model_check_seconds + 0.5)  # the worker reads the active version this often
    after = wait_final(_submit(api, 2))
    assert after["status"] == "succeeded"
    model = after["model"]
    assert model["fusion"]["version"] == "synthetic-test-1" and model["fusion"]["registry_id"] == row["id"]
    assert model["fusion"]["sha256"] == row["sha256"]
    assert model["weights"] == "synthetic" and model["version"] == "synthetic-test-1"
    assert model["operating_point"]["chosen_on"] == "validation"
    assert model["operating_point"]["rule_out_threshold"] == calibration["rule_out_threshold"]
    # Synthetic weights: the result's disposition is a clinician's review, whatever the probability.
    assert after["result"]["disposition"] == "clinician_review"
    assert after["result"]["disposition_reasons"][0] == "weights_not_trained"
    threshold = model["operating_point"]["threshold"]
    probability = after["result"]["probability"]
    assert after["result"]["diagnosis"] == ("melanoma" if probability > threshold else "benign")

    # Reprocessing the earlier analysis keeps both results, each with its own model.
    reprocessed = api.post(f"/v1/analyses/{before['id']}/reprocess")
    assert reprocessed.status_code == 202, reprocessed.text
    assert reprocessed.json()["reprocessed_from"] == before["id"]
    rerun = wait_final(reprocessed.json()["id"])
    assert rerun["model"]["fusion"]["version"] == "synthetic-test-1"
    assert api.get(f"/v1/analyses/{before['id']}").json()["model"]["weights"] == "untrained"
    assert api.post(f"/v1/analyses/{uuid.uuid4()}/reprocess").status_code == 404

    rolled_back = run_cli("models", "rollback", "fusion")
    assert rolled_back.exit_code == 0 and "no registered model is active" in rolled_back.output
    # Issue 22: each change to the registry is on the audit trail's system chain, by the operator.
    from sqlalchemy import select

    from shared.tables import SYSTEM_CHAIN, AuditEvent

    with context.session_factory() as session:
        changes = [(r.action, r.resource_id) for r in session.execute(
            select(AuditEvent).where(AuditEvent.tenant_id == SYSTEM_CHAIN, AuditEvent.resource_id == row["id"])
            .order_by(AuditEvent.seq)).scalars()]
    assert [action for action, _ in changes][-2:] == ["model.activate", "model.rollback"], changes
    time.sleep(settings.model_check_seconds + 0.5)
    assert wait_final(_submit(api, 3))["model"]["weights"] == "untrained"


def test_evaluate_runs_a_registered_model_as_the_workers_would(registry, run_cli, trained_fusion, synthetic_data,
                                                               settings, tmp_path):
    folder, csv_path = synthetic_data
    labels = tmp_path / "labels.csv"
    write_subset(csv_path, labels, 8)  # 12 images of 12 patients, both classes
    evaluate = ("evaluate", "--images", str(folder / "images"), "--csv", str(labels), "--size", "64",
                "--bootstrap", "100")

    nothing_active = run_cli(*evaluate, "--fusion-model", "active", "--out", str(tmp_path / "none"))
    assert nothing_active.exit_code != 0 and "no fusion model is active" in nothing_active.output
    both = run_cli(*evaluate, "--fusion", str(trained_fusion.checkpoint), "--fusion-model", "active",
                   "--out", str(tmp_path / "both"))
    assert both.exit_code != 0 and "not both" in both.output
    assert not (tmp_path / "none").exists() and not (tmp_path / "both").exists()

    imported = run_cli("models", "import", str(trained_fusion.checkpoint), "--kind", "fusion")
    assert imported.exit_code == 0, imported.output
    row = next(r for r in json.loads(run_cli("models", "list", "--kind", "fusion", "--json").output)
               if r["version"] == "synthetic-test-1")
    result = run_cli(*evaluate, "--fusion-model", row["sha256"][:12], "--out", str(tmp_path / "eval"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    fusion = report["model"]["fusion"]
    assert fusion["version"] == "synthetic-test-1"
    assert (fusion["registry_id"], fusion["sha256"]) == (row["id"], row["sha256"])
    assert report["model"]["weights"] == "synthetic" and report["threshold"] == row["threshold"]
    assert report["evaluated"] + len(report["rejected"]) == 12
    assert (settings.data_dir / "models" / f"fusion-{row['sha256']}.pth").is_file()

    # Issue 24: the report names its evaluation set and is stored against the registered model;
    # its card shows it, and an acceptance file naming the set is checked at activation.
    identity = report["evaluation_set"]
    assert identity["name"] == "labels" and len(identity["sha256"]) == 64 and identity["images"] == 12
    assert f"evaluation set labels: sha256 {identity['sha256']} (12 images)" in result.output
    assert "stored against fusion synthetic-test-1" in result.output
    again = run_cli(*evaluate, "--fusion-model", "synthetic-test-1", "--set-name", "holdout-12", "--no-store",
                    "--out", str(tmp_path / "again"))
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "report.json").read_text())["evaluation_set"] == {
        **identity, "name": "holdout-12"}, "the same images and labels: the same sha256"
    assert "stored against" not in again.output
    with registry.session_factory() as session:
        card = model_cards.card_for(session, row["id"])
    assert card is not None and card.evaluation is not None and card.other_evaluations == []
    assert card.evaluation.evaluation_set.sha256 == identity["sha256"]
    assert card.evaluation.evaluated == report["evaluated"]
    assert card.weights == "synthetic" and card.training_data is not None and card.training_data.synthetic
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"evaluation_set: {{name: labels, sha256: \"{identity['sha256']}\"}}\nmin_auc: 0\n"
                    "min_sensitivity_at_rule_out: 0\nmax_group_gap_points: 100\nmin_group_count: 1000\n"
                    "required_groups: [" + ", ".join(b["skin_group"] for b in report["per_skin_group"][:1]) + "]\n")
    refused = run_cli("models", "activate", "fusion", "synthetic-test-1", "--acceptance", str(plan))
    assert refused.exit_code == 1 and "min_group_count: the " in refused.output, refused.output
    plan.write_text(plan.read_text().replace("min_group_count: 1000", "min_group_count: 1").replace(
        "required_groups", "# required_groups"))
    accepted = run_cli("models", "activate", "fusion", "synthetic-test-1", "--acceptance", str(plan))
    assert accepted.exit_code == 0 and "acceptance: passed" in accepted.output, accepted.output

def test_cards_by_id_gives_the_registered_cards_for_fhir(registry):
    """Issue 23: the report task reads the cards of an analysis' checkpoints by registry id;
    a row without a card, an unknown id or a value that is not an id gives nothing."""
    card = {"kind": "fusion", "version": "card-1", "training_data": {"description": "synthetic lesions"}}
    with session_scope(registry.session_factory) as session:
        payload = f"with-card-{uuid.uuid4()}".encode()
        with_card, _ = model_registry.register(
            session, registry.store, kind="fusion", data=payload, sha256=hashlib.sha256(payload).hexdigest(),
            version=f"card-{uuid.uuid4().hex[:8]}", card=card,
        )
        ids = [str(with_card.id)]
    without_card = _register(registry, "fusion", f"no-card-{uuid.uuid4()}".encode())[0]
    with session_scope(registry.session_factory) as session:
        found = model_registry.cards_by_id(session, [*ids, str(without_card), str(uuid.uuid4()), "not-an-id", None])
    assert found == {ids[0]: card}
    with session_scope(registry.session_factory) as session:
        assert model_registry.cards_by_id(session, [None, ""]) == {}
