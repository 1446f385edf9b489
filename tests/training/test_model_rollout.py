"""Issue 24's shadow and canary on the real stack (Postgres, S3, a running GPU worker): a shadow
stores its output apart and leaves the stored result as it was; a canary answers its share of
new jobs and the result says so; a canary beyond its bounds is rolled back (audited), after
which nothing is left to promote."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import torch
from sqlalchemy import select, update

from shared import model_rollout
from shared.clock import utcnow
from shared.db import session_scope
from shared.tables import SYSTEM_CHAIN, AuditEvent, ModelRollout, ShadowOutput
from shared.tenants import issue_key
from tests import drift_streams as streams
from tests.training.conftest import VERSION
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def _submit(api, seed: int) -> str:
    image = encode_jpeg(make_lesion(seed=seed, size=(180, 240), radius_frac=0.25).image)
    response = api.post("/v1/analyses", files={"image": ("lesion.jpg", image, "image/jpeg")},
                        data={"age": "61", "sex": "female", "site": "torso"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _copy_of(checkpoint, folder, version: str):
    """The same weights under another version: other bytes, so another registry row."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    payload["version"] = version
    path = folder / f"{version}.pth"
    torch.save(payload, path)
    return path


def _actions(context, model_id: str) -> list[tuple[str, str]]:
    with context.session_factory() as session:
        return [(r.action, r.actor) for r in session.execute(
            select(AuditEvent).where(AuditEvent.tenant_id == SYSTEM_CHAIN, AuditEvent.resource_id == model_id)
            .order_by(AuditEvent.seq)).scalars()]


def _shadow_output(context, analysis_id: str, timeout: float = 90.0) -> ShadowOutput:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with context.session_factory() as session:
            row = session.scalar(select(ShadowOutput).where(ShadowOutput.analysis_id == uuid.UUID(analysis_id)))
            if row is not None:
                return row
        time.sleep(0.5)
    raise AssertionError(f"no shadow output for {analysis_id} within {timeout:.0f} s")


def test_shadow_stores_apart_and_a_canary_answers_its_share_until_rolled_back(
    registry, run_cli, trained_fusion, api, worker, wait_final, settings, context, tmp_path
):
    candidate = f"rollout-{uuid.uuid4().hex[:8]}"
    for path, version in ((trained_fusion.checkpoint, VERSION),
                          (_copy_of(trained_fusion.checkpoint, tmp_path, candidate), candidate)):
        imported = run_cli("models", "import", str(path), "--kind", "fusion", "--version", version)
        assert imported.exit_code == 0, imported.output
    assert run_cli("models", "activate", "fusion", VERSION).exit_code == 0
    listed = {row["version"]: row["id"] for row in json.loads(run_cli("models", "list", "--json").output)}

    # Shadow on every job: the active model's result is stored as it would be without it.
    started = run_cli("models", "shadow", "fusion", candidate, "--fraction", "1")
    assert started.exit_code == 0 and "shadows 100% of live jobs" in started.output, started.output
    time.sleep(settings.model_check_seconds + 0.5)
    stored = wait_final(_submit(api, 11))
    assert stored["status"] == "succeeded" and stored["model"]["version"] == VERSION
    assert "rollout" not in stored["model"]
    shadowed = _shadow_output(context, stored["id"])
    assert (shadowed.model_version, shadowed.active_version) == (candidate, VERSION)
    assert shadowed.active_probability == stored["result"]["probability"]
    assert shadowed.probability is not None and shadowed.skin_group == stored["result"]["equity"]["skin_group"]
    again = api.get(f"/v1/analyses/{stored['id']}").json()
    # Presigned links are signed afresh on each read, and the report is rendered after the result.
    moving = ("artifacts", "report")
    assert {k: v for k, v in again.items() if k not in moving} == {k: v for k, v in stored.items() if k not in moving}
    compared = json.loads(run_cli("models", "compare", candidate, "--json").output)
    assert compared["overall"]["cases"] == 1 and compared["overall"]["scored"] == 1
    assert compared["overall"]["abs_delta_max"] == abs(shadowed.probability - shadowed.active_probability)
    assert list(compared["by_skin_group"]) == [shadowed.skin_group]
    assert "|Δp| p95" in run_cli("models", "compare", candidate).output
    assert run_cli("models", "shadow", "fusion", "--off").exit_code == 0

    # A canary of 100 %: new jobs run on the candidate, and their results say so.
    canary = run_cli("models", "activate", "fusion", candidate, "--canary", "100")
    assert canary.exit_code == 0 and "is the canary for 100% of new jobs" in canary.output, canary.output
    time.sleep(settings.model_check_seconds + 0.5)
    answered = wait_final(_submit(api, 12))
    assert answered["model"]["version"] == candidate and answered["model"]["rollout"] == "canary"
    assert answered["model"]["fusion"]["registry_id"] == listed[candidate]

    # Beyond its bounds (failures where the incumbent has none), the next check rolls it back.
    with session_scope(context.session_factory) as session:
        session.execute(update(ModelRollout).where(ModelRollout.ended_at.is_(None))
                        .values(started_at=utcnow() - timedelta(hours=1)))
        tenant, _ = issue_key(session, f"canary-{uuid.uuid4().hex[:8]}")
        tenant_id = tenant.id
    streams.insert(context, tenant_id, candidate, [streams.Item("failed")] * 4 + streams.stable_stream(1, 8),
                   minutes_ago=5)
    streams.insert(context, tenant_id, VERSION, streams.stable_stream(2, 12), minutes_ago=5)
    with session_scope(context.session_factory) as session:
        assert model_rollout.check_canaries(session, settings.replace(canary_min_results=100)) == []  # too few
    with session_scope(context.session_factory) as session:
        (verdict,) = model_rollout.check_canaries(session, settings.replace(canary_min_results=10))
    assert verdict.roll_back and verdict.reasons[0].startswith("failure rate")
    changes = _actions(context, listed[candidate])
    assert [action for action, _ in changes] == [
        "model.register", model_rollout.SHADOW_START, model_rollout.SHADOW_STOP, model_rollout.CANARY_START,
        model_rollout.CANARY_ROLLBACK,
    ]
    assert changes[1][1].startswith("operator:") and changes[-1][1] == "system"
    promoted = run_cli("models", "activate", "fusion", candidate, "--promote")
    assert promoted.exit_code != 0 and f"no canary of fusion {candidate} is running" in promoted.output
    time.sleep(settings.model_check_seconds + 0.5)
    assert wait_final(_submit(api, 13))["model"]["version"] == VERSION
