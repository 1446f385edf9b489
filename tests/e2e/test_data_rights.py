"""A tenant's data rights (issue 22; docs/DATA_RIGHTS.md) through the real API, worker, CLI,
Postgres and S3: export with a manifest, erasure of one analysis, disable/enable, and
deletion of a whole tenant, each leaving a PHI-free row in the audit trail."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from cli.main import cli
from devstack import Receiver, child_env
from shared import lifecycle, tenant_data
from shared.clock import utcnow
from shared.config import ENV_PREFIX, get_settings
from shared.db import session_scope
from shared.schemas import AnalysisOut
from shared.storage import ARTIFACTS, IMAGES, PURPOSES, analysis_prefix, artifact_key, tenant_prefix
from shared.tables import (
    SYSTEM_CHAIN,
    Analysis,
    AnalysisQuestion,
    AnalysisStatus,
    AuditEvent,
    Event,
    Feedback,
    Report,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
)
from tests.e2e.seeding import result_for, seed_analysis
from worker.pipeline.synthetic import encode_jpeg, make_lesion


@pytest.fixture
def run_cli(settings, api_url, monkeypatch):
    """`dermasentinel ...` in process, configured as the test stack's processes are (its settings
    in the environment, the API's URL for the links an export writes)."""
    for name, value in child_env(settings, api_url=api_url).items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), input=input)

    yield run
    get_settings.cache_clear()


@pytest.fixture
def receiver():
    hook = Receiver()
    yield hook
    hook.close()


def _tenant_name(context, tenant_id: uuid.UUID) -> str:
    with session_scope(context.session_factory) as session:
        return session.get(Tenant, tenant_id).name


def _submit(api, external_id: str, seed: int = 41) -> str:
    image = encode_jpeg(make_lesion(seed=seed, size=(240, 320), radius_frac=0.2, irregularity=0.4).image)
    response = api.post("/v1/analyses", files={"image": ("l.jpg", image, "image/jpeg")},
                        data={"age": "63", "sex": "male", "site": "torso", "external_id": external_id})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _succeeded_with_everything(api, wait, wait_final, external_id: str) -> str:
    """A succeeded analysis with its report, one feedback entry and one question."""
    analysis_id = _submit(api, external_id)
    assert wait_final(analysis_id)["status"] == "succeeded"
    wait(lambda: api.get(f"/v1/analyses/{analysis_id}/report.pdf").status_code == 200, timeout=120,
         message="the PDF report")
    feedback = api.post(f"/v1/analyses/{analysis_id}/feedback", json={"agrees": True, "notes": "seen in clinic"})
    assert feedback.status_code == 201, feedback.text
    asked = api.post(f"/v1/analyses/{analysis_id}/questions", json={"question": "Is the border irregular?"})
    assert asked.status_code == 201, asked.text
    return analysis_id


def _objects(context, prefix: str) -> list[str]:
    return [f"{purpose}/{key}" for purpose in PURPOSES for key in context.store.keys_under(purpose, prefix)]


def _audit_rows(context, tenant_id: uuid.UUID | None, action: str) -> list[dict]:
    with session_scope(context.session_factory) as session:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.tenant_id == (tenant_id or SYSTEM_CHAIN), AuditEvent.action == action)
            .order_by(AuditEvent.seq)
        ).scalars()
        return [{column.name: getattr(row, column.name) for column in AuditEvent.__table__.columns} for row in rows]


def _event_ids(session, analysis_id: str) -> list[str]:
    return list(session.execute(
        select(Event.id).where(func.jsonb_extract_path_text(Event.payload, "data", "id") == analysis_id)
    ).scalars())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_lists_every_file_then_erasure_leaves_only_a_phi_free_tombstone(
    api, api_url, tenant_key, context, worker, wait, wait_final, receiver, run_cli, tmp_path
):
    tenant_id, _ = tenant_key
    hook = api.post("/v1/webhook-endpoints", json={"url": receiver.url})
    assert hook.status_code == 201, hook.text
    external_id = f"mrn-rights-{uuid.uuid4().hex[:8]}"
    analysis_id = _succeeded_with_everything(api, wait, wait_final, external_id)
    shown = api.get(f"/v1/analyses/{analysis_id}").json()
    with session_scope(context.session_factory) as session:
        stored = session.get(Analysis, uuid.UUID(analysis_id))
        image_key, mask_key, overlay_key = stored.image_key, stored.mask_key, stored.overlay_key
    wait(lambda: receiver.of_type("analysis.report_ready"), timeout=60, message="the webhook deliveries")

    # Export: every file listed once, with its sha256 and size; result.json is the API's analysis.
    out = tmp_path / "export"
    done = run_cli("tenants", "export", _tenant_name(context, tenant_id), str(out))
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == tenant_data.EXPORT_FORMAT and manifest["tenant"]["id"] == str(tenant_id)
    listed = manifest["files"] + [f for a in manifest["analyses"] for f in a["files"]]
    for entry in listed:
        path = out / entry["path"]
        assert _sha256(path) == entry["sha256"] and path.stat().st_size == entry["size"], entry["path"]
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == {entry["path"] for entry in listed}
    assert manifest["counts"]["files"] == len(listed)
    [exported] = manifest["analyses"]
    assert exported["id"] == analysis_id and exported["status"] == "succeeded" and exported["missing"] == []
    folder = out / exported["folder"]
    assert {p.name for p in folder.iterdir()} == {
        "result.json", "fhir.json", "report.pdf", "image.jpg", "mask.png", "overlay.jpg"
    }
    result = AnalysisOut.model_validate_json((folder / "result.json").read_text())
    assert result.id == uuid.UUID(analysis_id) and result.external_id == external_id
    assert result.report.ready and len(result.feedback) == 1
    exported_json = json.loads((folder / "result.json").read_text())
    assert {k: v for k, v in exported_json.items() if k not in ("artifacts", "report")} == {
        k: v for k, v in shown.items() if k not in ("artifacts", "report")
    }
    assert json.loads((folder / "fhir.json").read_text())["resourceType"] == "Bundle"
    assert (folder / "report.pdf").read_bytes().startswith(b"%PDF")
    assert [f["analysis_id"] for f in json.loads((out / "feedback.json").read_text())] == [analysis_id]
    assert [q["question"] for q in json.loads((out / "questions.json").read_text())] == ["Is the border irregular?"]
    assert json.loads((out / "batches.json").read_text()) == []
    [export_row] = _audit_rows(context, tenant_id, tenant_data.EXPORT)
    assert export_row["actor"].startswith("operator:") and export_row["detail"]["analyses"] == 1
    # A second export into the same (now full) folder is refused, leaving nothing half-written.
    again = run_cli("tenants", "export", _tenant_name(context, tenant_id), str(out))
    assert again.exit_code == 1 and "not an empty folder" in again.output
    assert [p.name for p in tmp_path.iterdir()] == ["export"]

    # The deliveries of its events exist before the erasure...
    with session_scope(context.session_factory) as session:
        event_ids = _event_ids(session, analysis_id)
        delivery_ids = list(session.execute(
            select(WebhookDelivery.id).where(WebhookDelivery.event_id.in_(event_ids))).scalars())
    assert len(event_ids) >= 2 and delivery_ids

    # Another tenant cannot erase it; an unknown id is 404.
    with session_scope(context.session_factory) as session:
        from shared.tenants import issue_key

        _, other_key = issue_key(session, f"test-{uuid.uuid4().hex[:10]}")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}, timeout=60) as other:
        assert other.delete(f"/v1/analyses/{analysis_id}").status_code == 404
    assert api.delete(f"/v1/analyses/{uuid.uuid4()}").status_code == 404

    erased = api.delete(f"/v1/analyses/{analysis_id}")
    assert erased.status_code == 204, erased.text
    for path in ("", "/report.pdf", "/fhir", "/artifacts/image", "/artifacts/mask", "/questions"):
        assert api.get(f"/v1/analyses/{analysis_id}{path}").status_code == 404, path
    assert api.delete(f"/v1/analyses/{analysis_id}").status_code == 404
    assert _objects(context, analysis_prefix(tenant_id, uuid.UUID(analysis_id))) == []
    for purpose, key in ((IMAGES, image_key), (ARTIFACTS, mask_key), (ARTIFACTS, overlay_key)):
        assert not context.store.exists(purpose, key)
    with session_scope(context.session_factory) as session:
        assert _event_ids(session, analysis_id) == []
        assert session.execute(select(func.count()).select_from(WebhookDelivery)
                               .where(WebhookDelivery.id.in_(delivery_ids))).scalar_one() == 0
        assert session.execute(select(func.count()).select_from(WebhookAttempt)
                               .where(WebhookAttempt.delivery_id.in_(delivery_ids))).scalar_one() == 0
        for table in (Report, Feedback, AnalysisQuestion):
            assert session.execute(select(func.count()).select_from(table)
                                   .where(table.analysis_id == uuid.UUID(analysis_id))).scalar_one() == 0
    # One tombstone (the API's dependency writes it; the erasure itself writes no second one),
    # holding ids and counts, never the patient's reference.
    tombstones = [r for r in _audit_rows(context, tenant_id, tenant_data.ERASE) if r["status_code"] == 204]
    assert len(tombstones) == 1
    [tombstone] = tombstones
    assert tombstone["resource_id"] == analysis_id and tombstone["outcome"] == "success"
    assert tombstone["detail"]["rows"]["analyses"] == 1 and tombstone["detail"]["rows"]["events"] >= 2
    assert external_id not in json.dumps(tombstone, default=str)


def test_an_analysis_in_flight_is_refused_until_canceled(api, tenant_key, context, run_cli):
    analysis_id = seed_analysis(context, tenant_key[0], status="processing")
    refused = api.delete(f"/v1/analyses/{analysis_id}")
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "cancel it first" in refused.json()["detail"]
    assert api.get(f"/v1/analyses/{analysis_id}").status_code == 200
    assert api.post(f"/v1/analyses/{analysis_id}/cancel").status_code == 200
    assert api.delete(f"/v1/analyses/{analysis_id}").status_code == 204
    assert _objects(context, analysis_prefix(tenant_key[0], analysis_id)) == []


def test_workers_finishing_an_erased_analysis_write_nothing_back(context, tenant_key):
    """A worker that finishes after the erasure (its tenant deleted, or canceled then erased
    mid-pass) records nothing and deletes what it wrote; the report task finds nothing to do."""
    from worker.reports import build_report

    tenant_id = tenant_key[0]
    analysis_id = seed_analysis(context, tenant_id, result=result_for(0.4))
    erased = tenant_data.erase_analysis(context, tenant_id, analysis_id, actor="operator:test")
    assert erased.rows["analyses"] == 1 and erased.objects_deleted >= 3 and not erased.objects_left
    [row] = _audit_rows(context, tenant_id, tenant_data.ERASE)
    assert row["actor"] == "operator:test" and row["resource_id"] == str(analysis_id)

    late = artifact_key(tenant_id, analysis_id, "mask.png")
    context.store.put(ARTIFACTS, late, b"written after the erasure", "image/png")
    claim = lifecycle.Claim(analysis_id, 1, tenant_id, "gone", None, "unknown", "unknown", None, None)
    with session_scope(context.session_factory) as session:
        assert lifecycle.finish(session, None, context.settings, claim, status=AnalysisStatus.succeeded) is False
    assert tenant_data.discard_if_erased(context, analysis_id, [(ARTIFACTS, late)]) is True
    assert not context.store.exists(ARTIFACTS, late)
    assert build_report(context, analysis_id) is False
    with session_scope(context.session_factory) as session:
        assert session.get(Analysis, analysis_id) is None and session.get(Report, analysis_id) is None
    with pytest.raises(tenant_data.AnalysisNotFound):
        tenant_data.erase_analysis(context, tenant_id, analysis_id)


def test_retention_erases_through_the_same_code(context, tenant_key):
    tenant_id = tenant_key[0]
    old = seed_analysis(context, tenant_id, result=result_for(0.2))
    assert tenant_data.erase_final_before(context, utcnow() - timedelta(days=1), tenant_id=tenant_id) == 0
    assert tenant_data.erase_final_before(context, utcnow() + timedelta(seconds=1), tenant_id=tenant_id) == 1
    assert _objects(context, analysis_prefix(tenant_id, old)) == []


def test_disable_stops_the_keys_within_the_cache_time_and_enable_restores_them(
    api, tenant_key, context, settings, run_cli
):
    name = _tenant_name(context, tenant_key[0])
    assert api.get("/v1/analyses").status_code == 200
    disabled = run_cli("tenants", "disable", name)
    assert disabled.exit_code == 0, disabled.output
    started = time.monotonic()
    while (status := api.get("/v1/analyses").status_code) != 401:
        assert status == 200
        assert time.monotonic() - started < settings.auth_cache_seconds + 2, "still answered after the cache time"
        time.sleep(0.2)
    assert api.get(f"/v1/analyses/{uuid.uuid4()}").status_code == 401
    enabled = run_cli("tenants", "enable", name)
    assert enabled.exit_code == 0, enabled.output
    assert "enabled" in enabled.output
    started = time.monotonic()
    while api.get("/v1/analyses").status_code != 200:
        assert time.monotonic() - started < 5, "the key did not work again"
        time.sleep(0.2)
    assert [r["detail"]["changed"] for r in _audit_rows(context, tenant_key[0], tenant_data.DISABLE)] == [True]
    assert len(_audit_rows(context, tenant_key[0], tenant_data.ENABLE)) == 1
    unknown = run_cli("tenants", "disable", f"no-such-tenant-{uuid.uuid4().hex[:6]}")
    assert unknown.exit_code == 1 and "no tenant named 'no-such-tenant-" in unknown.output


def test_delete_removes_every_row_and_object_and_keeps_the_audit_trail(
    api, tenant_key, context, worker, wait, wait_final, run_cli
):
    tenant_id, _ = tenant_key
    name = _tenant_name(context, tenant_id)
    external_id = f"mrn-gone-{uuid.uuid4().hex[:8]}"
    analysis_id = _succeeded_with_everything(api, wait, wait_final, external_id)
    assert api.post("/v1/batches", json={"name": "to be deleted"}).status_code == 201
    assert api.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hooks"}).status_code == 201
    with session_scope(context.session_factory) as session:
        before = tenant_data.tenant_row_counts(session, tenant_id)
    assert before["analyses"] == 1 and before["reports"] == 1 and before["api_keys"] == 1
    assert _objects(context, tenant_prefix(tenant_id))

    typo = run_cli("tenants", "delete", name, input="not the name\n")
    assert typo.exit_code == 1 and "does not match; nothing was deleted" in typo.output
    assert api.get(f"/v1/analyses/{analysis_id}").status_code == 200

    deleted = run_cli("tenants", "delete", name, "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert f"deleted tenant {name}" in deleted.output
    with session_scope(context.session_factory) as session:
        after = tenant_data.tenant_row_counts(session, tenant_id)
        assert session.get(Tenant, tenant_id) is None
    assert set(after) >= {"analyses", "api_keys", "batches", "events", "feedback", "reports", "uploads",
                          "analysis_questions", "webhook_endpoints", "webhook_deliveries", "webhook_attempts"}
    assert all(count == 0 for count in after.values()), after
    assert _objects(context, tenant_prefix(tenant_id)) == []

    # The key: 401 at once for a read of its data (even while the API still caches the key),
    # for a write, and for everything once the cache has let it go; never a 500.
    assert api.get(f"/v1/analyses/{analysis_id}").status_code == 401
    image = encode_jpeg(make_lesion(seed=3, size=(120, 160)).image)
    assert api.post("/v1/analyses", files={"image": ("l.jpg", image, "image/jpeg")}).status_code == 401
    assert api.get("/v1/analyses").status_code == 401

    # The audit trail outlives the tenant: its rows are there, with the tombstones.
    [tombstone] = _audit_rows(context, tenant_id, tenant_data.DELETE)
    assert tombstone["actor"].startswith("operator:") and tombstone["detail"]["rows"]["analyses"] == 1
    system = [r for r in _audit_rows(context, None, tenant_data.DELETE) if r["resource_id"] == str(tenant_id)]
    assert len(system) == 1 and system[0]["detail"]["name"] == name
    with session_scope(context.session_factory) as session:
        trail = [
            {column.name: getattr(row, column.name) for column in AuditEvent.__table__.columns}
            for row in session.execute(select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)).scalars()
        ]
    assert trail and {r['action'] for r in trail} >= {tenant_data.DELETE}
    assert external_id not in json.dumps(trail + system, default=str)

    again = run_cli("tenants", "delete", name, "--yes")
    assert again.exit_code == 1 and f"no tenant named {name!r}" in again.output
