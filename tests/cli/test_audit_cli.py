"""`dermasentinel audit verify` and `audit export` against the real database (issue 22)."""

from __future__ import annotations

import csv
import getpass
import io
import json
import uuid
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from cli.main import cli
from shared import audit
from shared.clock import utcnow
from shared.config import get_settings
from shared.tables import AuditEvent, Tenant


@pytest.fixture
def run_cli(settings, monkeypatch):
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(cli, list(args))
    get_settings.cache_clear()


@pytest.fixture
def tenant(context, tenant_key) -> tuple[uuid.UUID, str]:
    """A fresh tenant's id and name, with three audit rows (one of them spreadsheet-hostile)."""
    tenant_id = tenant_key[0]
    for n, agent in enumerate(["curl/8", "=HYPERLINK(\"x\")", "pytest"]):
        audit.record(context.session_factory, audit.AuditEntry(
            tenant_id=tenant_id, actor=f"key:{uuid.UUID(int=n)}", action="analysis.read", resource_type="analysis",
            resource_id=str(uuid.uuid4()), status_code=200, user_agent=agent, detail={"n": n},
        ))
    with context.session_factory() as session:
        name = session.execute(select(Tenant.name).where(Tenant.id == tenant_id)).scalar_one()
    return tenant_id, name


def _rows(context, tenant_id: uuid.UUID) -> list[AuditEvent]:
    with context.session_factory() as session:
        return list(session.execute(
            select(AuditEvent).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.seq)
        ).scalars())


def test_verify_prints_ok_with_the_head_and_exits_zero(run_cli, context, tenant):
    tenant_id, name = tenant
    result = run_cli("audit", "verify", "--tenant", name)
    assert result.exit_code == 0, result.output
    head = _rows(context, tenant_id)[-1]
    assert result.stdout.startswith(f"OK       {name} ({tenant_id}): 3 rows; head 3 {head.hash}")


def test_verify_reports_an_edited_row_and_exits_one(run_cli, context, tenant):
    tenant_id, _ = tenant
    with context.engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        connection.execute(text("UPDATE audit_events SET resource_id = 'x' WHERE tenant_id = :t AND seq = 2"),
                           {"t": tenant_id})
        connection.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))
    result = run_cli("audit", "verify", "--tenant", str(tenant_id))
    assert result.exit_code == 1, result.output
    assert "PROBLEM" in result.stdout and "edited: row 2 was edited" in result.stdout
    assert "1 problem(s) found" in result.output


def test_verify_names_an_unknown_tenant(run_cli):
    result = run_cli("audit", "verify", "--tenant", "no-such-tenant-" + uuid.uuid4().hex)
    assert result.exit_code != 0 and "no tenant named" in result.output


def test_verify_of_every_chain_lists_this_one(run_cli, tenant):
    tenant_id, name = tenant
    result = run_cli("audit", "verify")
    # Other tests break chains on purpose: only this chain's line is this test's to judge.
    assert result.exit_code in (0, 1), result.output
    assert f"OK       {name} ({tenant_id}): 3 rows" in result.stdout


def test_export_jsonl_writes_every_field_so_the_copy_verifies_and_is_itself_audited(run_cli, context, tenant):
    tenant_id, name = tenant
    result = run_cli("audit", "export", "--tenant", name)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert {line["tenant_id"] for line in lines} == {str(tenant_id)}
    for line in lines:
        assert "id" not in line
        stored = {**line, "tenant_id": uuid.UUID(line["tenant_id"]),
                  "occurred_at": datetime.fromisoformat(line["occurred_at"])}
        assert audit.row_hash(stored) == line["hash"], "the export carries what the hash covers"
    rows = _rows(context, tenant_id)
    assert len(rows) == 4
    exported = rows[-1]
    assert (exported.actor, exported.action, exported.outcome) == (
        f"operator:{getpass.getuser()}", "audit.export", audit.SUCCESS,
    )
    assert exported.detail == {"format": "jsonl", "rows": 3, "since": None, "until": None, "to": "stdout"}


def test_export_csv_to_a_file_within_a_window_with_safe_cells(run_cli, context, tenant, tmp_path):
    tenant_id, name = tenant
    out = tmp_path / "audit.csv"
    today = utcnow().date().isoformat()
    result = run_cli("audit", "export", "--tenant", str(tenant_id), "--since", today, "--format", "csv",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote 3 audit rows to {out}" in result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [row["seq"] for row in rows] == ["1", "2", "3"]
    assert rows[1]["user_agent"] == "'=HYPERLINK(\"x\")", "a formula is written as text"
    assert json.loads(rows[0]["detail"]) == {"n": 0}
    assert "id" not in rows[0] and {"hash", "prev_hash", "tenant_id"} <= set(rows[0])
    later = (utcnow() + timedelta(days=1)).isoformat()
    empty = run_cli("audit", "export", "--tenant", name, "--since", later)
    assert empty.exit_code == 0 and empty.stdout == ""
    before = run_cli("audit", "export", "--tenant", name, "--until", "2020-01-01T00:00:00")
    assert before.exit_code == 0 and before.stdout == ""
    actions = [row.detail for row in _rows(context, tenant_id) if row.action == "audit.export"]
    assert [(d["format"], d["rows"], d["to"]) for d in actions] == [("csv", 3, "file"), ("jsonl", 0, "stdout"),
                                                                    ("jsonl", 0, "stdout")]


def test_export_refuses_a_malformed_date(run_cli, tenant):
    result = run_cli("audit", "export", "--tenant", tenant[1], "--since", "last tuesday")
    assert result.exit_code == 2 and "--since" in result.output and "ISO date" in result.output
