"""Both CSVs the product writes, with formula payloads in client- and clinician-supplied text."""

import csv
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cli.exports import ExportScopeError, export_feedback
from shared.db import session_scope
from shared.tables import Analysis, Feedback
from shared.tenants import issue_key
from tests.e2e.seeding import result_for

ROOT = Path(__file__).resolve().parents[2]
PAYLOADS = ['=HYPERLINK("http://evil.example","x")', "+SUM(1)", "@cmd", "\t=1+1", "-1+1"]


def _analysis(session, tenant_id, external_id, batch_id=None, **fields) -> Analysis:
    analysis = Analysis(
        tenant_id=tenant_id, batch_id=batch_id, external_id=external_id, priority="bulk",
        image_key=f"tenants/{tenant_id}/x.jpg", image_sha256="0" * 64, image_content_type="image/jpeg",
        image_width=10, image_height=10, **fields,
    )
    session.add(analysis)
    session.flush()
    return analysis


def test_triage_csv_escapes_formulas_from_external_ids_and_gate_details(api, tenant_key, context):
    batch = api.post("/v1/batches", json={"name": "csv"}).json()
    with session_scope(context.session_factory) as session:
        for n, payload in enumerate(PAYLOADS):
            _analysis(session, tenant_key[0], payload, uuid.UUID(batch["id"]), status="rejected",
                      rejection={"code": "blurry", "detail": f"=cmd|' /C calc'!A{n}"})
    response = api.get(f"/v1/batches/{batch['id']}/results", params={"format": "csv"})
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert sorted(r["external_id"] for r in rows) == sorted("'" + p for p in PAYLOADS)
    assert all(r["rejection_detail"].startswith("'=cmd") for r in rows)
    json_items = api.get(f"/v1/batches/{batch['id']}/results").json()["items"]
    assert sorted(i["external_id"] for i in json_items) == sorted(PAYLOADS), "JSON keeps the raw values"


@pytest.fixture
def two_tenants_with_feedback(context):
    names = [f"clinic-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with session_scope(context.session_factory) as session:
        for name in names:
            tenant, _ = issue_key(session, name)
            analysis = _analysis(session, tenant.id, f"{name}-visit", status="succeeded",
                                 result=result_for(0.2), probability=0.2)
            session.add(Feedback(analysis_id=analysis.id, tenant_id=tenant.id, agrees=False,
                                 final_diagnosis="+melanoma", notes='=HYPERLINK("http://evil.example","x")'))
    return names


def test_feedback_export_is_one_tenants_and_formula_safe(settings, two_tenants_with_feedback, tmp_path):
    mine, theirs = two_tenants_with_feedback
    out = tmp_path / "feedback.csv"
    assert export_feedback(settings, out, mine) == 1
    (row,) = list(csv.DictReader(out.open()))
    assert row["tenant"] == mine and row["external_id"] == f"{mine}-visit"
    assert row["notes"] == "'" + '=HYPERLINK("http://evil.example","x")'
    assert row["final_diagnosis"] == "'+melanoma"


def test_feedback_export_needs_a_tenant_when_there_are_several(settings, two_tenants_with_feedback, tmp_path):
    out = tmp_path / "feedback.csv"
    with pytest.raises(ExportScopeError, match="--tenant"):
        export_feedback(settings, out)
    assert not out.exists()
    with pytest.raises(ExportScopeError, match="no tenant named"):
        export_feedback(settings, out, "nobody-" + uuid.uuid4().hex)
    export_feedback(settings, out, all_tenants=True)
    tenants = {r["tenant"] for r in csv.DictReader(out.open())}
    assert set(two_tenants_with_feedback) <= tenants


def test_the_export_command_says_how_to_choose(settings, two_tenants_with_feedback, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DERMASENTINEL_")}, **settings.as_env()}
    out = tmp_path / "f.csv"
    run = subprocess.run([sys.executable, "-m", "cli.main", "feedback", "export", str(out)],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and "--all-tenants" in run.stderr
    mine = two_tenants_with_feedback[0]
    run = subprocess.run([sys.executable, "-m", "cli.main", "feedback", "export", str(out), "--tenant", mine],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert [r["tenant"] for r in csv.DictReader(out.open())] == [mine]
