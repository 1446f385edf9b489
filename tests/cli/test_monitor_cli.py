"""`dermasentinel monitor` and `monitor clear` against the real database (issue 24): the
operator's table, JSON and chart over every tenant, and the end of a drift episode, each on the
audit trail (actor `operator:<OS user>`)."""

from __future__ import annotations

import getpass
import json
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import cli
from shared import drift
from shared.config import get_settings
from shared.db import session_scope
from shared.tables import AuditEvent
from shared.tenants import issue_key
from tests import drift_streams as streams


@pytest.fixture
def run_cli(settings, monkeypatch):
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(cli, list(args))
    get_settings.cache_clear()


@pytest.fixture
def drifted(context) -> tuple[uuid.UUID, str, str]:
    """A tenant whose shifted stream opened a drift episode (DRIFT_ACTION=alert)."""
    with session_scope(context.session_factory) as session:
        tenant, _ = issue_key(session, f"cli-{uuid.uuid4().hex[:8]}")
        tenant_id, name = tenant.id, tenant.name
    version = streams.new_version()
    streams.record(context, version, streams.reference())
    streams.insert(context, tenant_id, version, streams.shifted_stream(seed=51, count=150))
    assert len(drift.check_drift(context, tenant_ids=[tenant_id]).opened) == 1
    return tenant_id, name, version


def _actions(context, tenant_id: uuid.UUID, action: str) -> list[AuditEvent]:
    with context.session_factory() as session:
        return list(session.execute(
            select(AuditEvent).where(AuditEvent.tenant_id == tenant_id, AuditEvent.action == action)
        ).scalars())


def test_monitor_prints_a_table_a_chart_and_json(run_cli, context, drifted, tmp_path):
    tenant_id, name, version = drifted
    chart = tmp_path / "monitor.png"
    shown = run_cli("monitor", "--tenant", name, "--chart", str(chart))
    assert shown.exit_code == 0, shown.output
    header, row = shown.output.splitlines()[:2]
    assert header.split()[:4] == ["tenant", "model", "weights", "results"]
    assert row.startswith(name) and version in row and "open since" in row and row.rstrip().endswith("off")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"chart: {chart}" in shown.output

    every = run_cli("monitor")
    assert every.exit_code == 0 and any(line.startswith(name) for line in every.output.splitlines())

    as_json = run_cli("monitor", "--tenant", name, "--json")
    assert as_json.exit_code == 0, as_json.output
    [view] = json.loads(as_json.output)
    assert view["tenant"] == name and view["tenant_id"] == str(tenant_id)
    [model] = view["models"]
    assert model["model_version"] == version and model["probability"]["status"] == "drift"
    assert model["drift"]["open_episode"]["action"] == "alert"

    reads = _actions(context, tenant_id, "monitoring.read")
    assert len(reads) >= 3 and {r.actor for r in reads} == {f"operator:{getpass.getuser()}"}


def test_monitor_clear_ends_the_episode_and_is_audited(run_cli, context, drifted):
    tenant_id, name, version = drifted
    cleared = run_cli("monitor", "clear", "--tenant", name)
    assert cleared.exit_code == 0, cleared.output
    assert cleared.output.strip() == f"cleared drift of {name}, model {version}"
    [row] = _actions(context, tenant_id, drift.CLEAR)
    assert row.actor == f"operator:{getpass.getuser()}" and row.resource_id == version
    assert _actions(context, tenant_id, drift.SAFETY_CLEAR) == []  # alert: there was no safety mode

    again = run_cli("monitor", "clear", "--tenant", name)
    assert again.exit_code == 0 and again.output.strip() == f"no open drift episode for {name}"
    unknown = run_cli("monitor", "clear", "--tenant", "no-such-tenant")
    assert unknown.exit_code == 1 and "no tenant named 'no-such-tenant'" in unknown.output


def test_loading_the_command_does_not_load_the_metrics():
    """`dermasentinel worker` loads cli.main (and with it this command) before it prepares its
    metrics folder, which must come before prometheus_client is imported."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = "import sys, cli.main; assert 'prometheus_client' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, env={"PYTHONPATH": str(root)})
