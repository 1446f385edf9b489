"""The hourly purge applies AUDIT_RETENTION_DAYS (issue 22) whatever RETENTION_DAYS says, and
its failures never stop the other purges."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select

from shared import audit
from shared.clock import utcnow
from shared.context import AppContext
from shared.tables import AuditCheckpoint, AuditEvent
from worker.maintenance import prune_audit_trail, purge_expired


def _old_rows(context, monkeypatch, tenant: uuid.UUID, days: int, count: int) -> None:
    moment = utcnow() - timedelta(days=days)
    monkeypatch.setattr(audit, "utcnow", lambda: moment)
    for n in range(count):
        audit.record(context.session_factory, audit.AuditEntry(
            tenant_id=tenant, actor="key:test", action="analysis.read", resource_type="analysis", resource_id=str(n),
        ))
    monkeypatch.setattr(audit, "utcnow", utcnow)


def test_the_purge_prunes_the_audit_trail_with_retention_days_off(context, settings, monkeypatch):
    tenant = uuid.uuid4()
    # Older than any other test's rows: only this chain is old enough for a 3000-day retention.
    _old_rows(context, monkeypatch, tenant, 4000, 3)
    pruning = AppContext(settings.replace(retention_days=0, audit_retention_days=3000))
    try:
        assert purge_expired(pruning) == 0, "RETENTION_DAYS 0: no analysis is purged"
    finally:
        pruning.close()
    with context.session_factory() as session:
        checkpoint = session.execute(select(AuditCheckpoint).where(AuditCheckpoint.tenant_id == tenant)).scalar_one()
        left = session.execute(select(AuditEvent.action).where(AuditEvent.tenant_id == tenant)).scalars().all()
        report = audit.verify(session, tenant, secret_keys=settings.secret_keys)
    assert checkpoint.through_seq == 3 and left == ["audit.prune"]
    assert report.ok


def test_a_failed_prune_is_logged_and_returns(context, settings, caplog):
    broken = AppContext(settings.replace(audit_retention_days=1, database_url="postgresql+psycopg://nobody@127.0.0.1:1/x",
                                         db_connect_timeout_seconds=1))
    try:
        summary = prune_audit_trail(broken)
    finally:
        broken.close()
    assert summary["failed"] is True and summary["rows"] == 0
    assert "pruning the audit trail failed" in caplog.text
