"""The audit trail on real Postgres (issue 22): appends form a gapless hash chain per tenant,
the database refuses UPDATE, TRUNCATE and uncovered DELETE, `verify` reports an edited, a
re-linked or a missing row and a forged checkpoint, and pruning leaves a signed checkpoint
after which the chain still verifies. Each test has a chain of its own (a random tenant id:
the trail has no foreign key)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from shared import audit
from shared.clock import utcnow
from shared.config import Settings
from shared.db import session_scope
from shared.schemas import AuditOutcome
from shared.tables import AuditCheckpoint, AuditEvent


def _entry(tenant: uuid.UUID, n: int = 0, **changes) -> audit.AuditEntry:
    fields = dict(
        tenant_id=tenant, actor=f"key:{uuid.UUID(int=n + 1)}", action="analysis.read", resource_type="analysis",
        resource_id=str(uuid.uuid4()), status_code=200, request_id=f"req-{n}", client_address="10.0.0.7",
        user_agent="pytest", detail={"n": n, "artifacts": ["pdf"]},
    )
    fields.update(changes)
    return audit.AuditEntry(**fields)


def _append(context, tenant: uuid.UUID, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        audit.record(context.session_factory, _entry(tenant, n))


def _rows(context, tenant: uuid.UUID) -> list[AuditEvent]:
    with context.session_factory() as session:
        return list(
            session.execute(select(AuditEvent).where(AuditEvent.tenant_id == tenant).order_by(AuditEvent.seq))
            .scalars()
        )


def _verify(context, tenant: uuid.UUID, keys: list[str] | None = None) -> audit.ChainReport:
    with context.session_factory() as session:
        report = audit.verify(session, tenant, secret_keys=keys or context.settings.secret_keys)
    assert [chain.chain for chain in report.chains] == [tenant]
    return report.chains[0]


def _behind_the_trigger(context, statement: str, **params) -> None:
    """What only the table's owner could do: the trigger off, the statement, the trigger on,
    in one transaction (no other session ever sees the trigger off)."""
    with context.engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        connection.execute(text(statement), params)
        connection.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))


@pytest.fixture
def tenant() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def backdated(monkeypatch):
    """Append rows as if it were ``days`` ago (the trail stamps rows with shared.audit's clock)."""

    def at(days: float) -> None:
        if not days:
            monkeypatch.setattr(audit, "utcnow", utcnow)
            return
        moment = utcnow() - timedelta(days=days)
        monkeypatch.setattr(audit, "utcnow", lambda: moment)

    return at


def test_the_schema_names_the_outcomes_the_trail_writes():
    assert set(get_args(AuditOutcome)) == {audit.SUCCESS, audit.DENIED, audit.NOT_FOUND, audit.INVALID, audit.ERROR}
    assert audit.outcome_of(200) == audit.SUCCESS and audit.outcome_of(403) == audit.DENIED
    assert audit.outcome_of(410) == audit.NOT_FOUND and audit.outcome_of(422) == audit.INVALID
    assert audit.outcome_of(503) == audit.ERROR


def test_appends_number_the_chain_from_one_and_link_each_row_to_the_one_before(context, tenant):
    _append(context, tenant, 5)
    rows = _rows(context, tenant)
    assert [row.seq for row in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == audit.GENESIS
    for before, after in zip(rows, rows[1:], strict=False):
        assert after.prev_hash == before.hash
    assert all(audit.row_hash(row) == row.hash for row in rows)
    report = _verify(context, tenant)
    assert report.ok and report.rows == 5
    assert (report.head_seq, report.head_hash) == (5, rows[-1].hash), "the head to anchor outside the database"
    with context.session_factory() as session:
        assert audit.count(session, tenant) == 5


def test_concurrent_appends_on_one_tenant_give_a_gapless_verifying_chain(context, tenant):
    errors: list[BaseException] = []

    def append_ten(thread: int) -> None:
        try:
            _append(context, tenant, 10, start=thread * 10)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=append_ten, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    rows = _rows(context, tenant)
    assert [row.seq for row in rows] == list(range(1, 81))
    assert sorted(row.request_id for row in rows) == sorted(f"req-{n}" for n in range(80))
    report = _verify(context, tenant)
    assert report.ok and report.rows == 80 and report.head_seq == 80


def test_the_database_refuses_an_update_by_the_application(context, tenant):
    _append(context, tenant, 2)
    with pytest.raises(DBAPIError, match="append-only"), session_scope(context.session_factory) as session:
        session.execute(text("UPDATE audit_events SET actor = 'key:someone-else' WHERE tenant_id = :t"), {"t": tenant})
    # Through the ORM as well: the row stays as written.
    with pytest.raises(DBAPIError, match="append-only"), session_scope(context.session_factory) as session:
        row = session.execute(select(AuditEvent).where(AuditEvent.tenant_id == tenant)).scalars().first()
        row.outcome = audit.DENIED
    assert _verify(context, tenant).ok


def test_the_database_refuses_deleting_a_row_no_checkpoint_covers(context, tenant):
    _append(context, tenant, 3)
    with pytest.raises(DBAPIError, match="append-only"), session_scope(context.session_factory) as session:
        session.execute(text("DELETE FROM audit_events WHERE tenant_id = :t AND seq = 2"), {"t": tenant})
    assert [row.seq for row in _rows(context, tenant)] == [1, 2, 3]


def test_the_database_refuses_truncate_and_changes_to_checkpoints(context, tenant):
    _append(context, tenant, 1)
    with pytest.raises(DBAPIError, match="append-only"), session_scope(context.session_factory) as session:
        session.execute(text("TRUNCATE audit_events"))
    with pytest.raises(DBAPIError, match="append-only"), session_scope(context.session_factory) as session:
        session.execute(text("TRUNCATE audit_checkpoints"))
    assert len(_rows(context, tenant)) == 1


def test_an_edit_behind_a_disabled_trigger_is_reported_as_edited(context, tenant):
    _append(context, tenant, 5)
    _behind_the_trigger(
        context, "UPDATE audit_events SET outcome = 'denied' WHERE tenant_id = :t AND seq = 3", t=tenant
    )
    report = _verify(context, tenant)
    assert [(p.kind, p.first_seq) for p in report.problems] == [(audit.ProblemKind.edited, 3)]
    assert "row 3 was edited" in report.problems[0].describe()


def test_a_row_rewritten_with_a_fresh_hash_breaks_the_next_link(context, tenant):
    _append(context, tenant, 4)
    row = _rows(context, tenant)[1]
    forged = {column.name: getattr(row, column.name) for column in AuditEvent.__table__.columns}
    forged["actor"] = "key:someone-else"
    _behind_the_trigger(
        context, "UPDATE audit_events SET actor = :actor, hash = :hash WHERE tenant_id = :t AND seq = 2",
        actor=forged["actor"], hash=audit.row_hash(forged), t=tenant,
    )
    report = _verify(context, tenant)
    assert [(p.kind, p.first_seq) for p in report.problems] == [(audit.ProblemKind.broken_link, 3)]


def test_deleted_rows_are_reported_missing(context, tenant):
    _append(context, tenant, 6)
    _behind_the_trigger(context, "DELETE FROM audit_events WHERE tenant_id = :t AND seq IN (2, 3, 5)", t=tenant)
    report = _verify(context, tenant)
    assert [(p.kind, p.first_seq, p.last_seq) for p in report.problems] == [
        (audit.ProblemKind.missing, 2, 3), (audit.ProblemKind.missing, 5, 5),
    ]
    assert report.problems[0].describe().startswith("missing rows 2..3")
    _behind_the_trigger(context, "DELETE FROM audit_events WHERE tenant_id = :t AND seq = 1", t=tenant)
    first = _verify(context, tenant).problems[0]
    assert (first.kind, first.first_seq, first.last_seq) == (audit.ProblemKind.missing, 1, 3)


def test_prune_leaves_a_signed_checkpoint_and_the_chain_still_verifies(context, settings, tenant, backdated):
    backdated(10)
    _append(context, tenant, 4)
    backdated(0)
    _append(context, tenant, 2, start=4)
    old = _rows(context, tenant)[3]
    summary = audit.prune(
        context.session_factory, settings.replace(audit_retention_days=5), utcnow(), tenant_id=tenant
    )
    assert summary == {"chains": 1, "rows": 4, "skipped": []}
    with context.session_factory() as session:
        checkpoint = session.execute(select(AuditCheckpoint).where(AuditCheckpoint.tenant_id == tenant)).scalar_one()
    assert (checkpoint.through_seq, checkpoint.through_hash, checkpoint.rows_pruned) == (4, old.hash, 4)
    assert checkpoint.pruned_before == audit.prune_cutoff(utcnow(), 5)
    assert audit.checkpoint_signed(checkpoint, settings.secret_keys)
    rows = _rows(context, tenant)
    assert [row.seq for row in rows] == [5, 6, 7], "the old rows went; the prune itself is row 7"
    assert (rows[-1].actor, rows[-1].action, rows[-1].detail["rows"]) == ("system", "audit.prune", 4)
    report = _verify(context, tenant)
    assert report.ok and report.checkpoint_seq == 4 and report.first_seq == 5 and report.rows == 3
    # The chain goes on; pruning again finds nothing new; pruning everything leaves the chain
    # verifiable from the newest checkpoint, and appends continue after it.
    _append(context, tenant, 1, start=6)
    again = audit.prune(context.session_factory, settings.replace(audit_retention_days=5), utcnow(), tenant_id=tenant)
    assert again == {"chains": 0, "rows": 0, "skipped": []}
    everything = audit.prune(
        context.session_factory, settings.replace(audit_retention_days=1), utcnow() + timedelta(days=2),
        tenant_id=tenant,
    )
    assert everything["rows"] == 4
    assert [row.seq for row in _rows(context, tenant)] == [9]
    _append(context, tenant, 1, start=7)
    report = _verify(context, tenant)
    assert report.ok and report.checkpoint_seq == 8 and report.head_seq == 10


def test_zero_retention_keeps_the_trail_forever(context, settings, tenant, backdated):
    backdated(5000)
    _append(context, tenant, 2)
    kept = audit.prune(context.session_factory, settings.replace(audit_retention_days=0), utcnow(), tenant_id=tenant)
    assert kept == {"chains": 0, "rows": 0, "skipped": []}
    assert len(_rows(context, tenant)) == 2


def test_the_default_retention_is_six_years_apart_from_retention_days(monkeypatch):
    monkeypatch.delenv("DERMASENTINEL_AUDIT_RETENTION_DAYS", raising=False)
    assert Settings(_env_file=None).audit_retention_days == 2190
    assert Settings(_env_file=None, retention_days=30).audit_retention_days == 2190
    monkeypatch.setenv("DERMASENTINEL_AUDIT_RETENTION_DAYS", "0")
    assert Settings(_env_file=None).audit_retention_days == 0, "0: keep the trail forever"
    monkeypatch.setenv("DERMASENTINEL_AUDIT_RETENTION_DAYS", "-1")
    with pytest.raises(ValueError, match="audit_retention_days"):
        Settings(_env_file=None)


def test_a_forged_checkpoint_is_reported_and_the_rows_it_let_go_show_missing(context, tenant):
    _append(context, tenant, 5)
    third = _rows(context, tenant)[2]
    with session_scope(context.session_factory) as session:
        session.add(AuditCheckpoint(
            tenant_id=tenant, through_seq=3, through_hash=third.hash, pruned_before=utcnow(), rows_pruned=3,
            signature="v1=" + "0" * 64,
        ))
    # The trigger lets covered rows go: the signature is what tells a real checkpoint from this one.
    with session_scope(context.session_factory) as session:
        session.execute(text("DELETE FROM audit_events WHERE tenant_id = :t AND seq <= 3"), {"t": tenant})
    report = _verify(context, tenant)
    assert [(p.kind, p.first_seq, p.last_seq) for p in report.problems] == [
        (audit.ProblemKind.bad_checkpoint, 3, 3), (audit.ProblemKind.missing, 1, 3),
    ]
    assert "bad signature" in report.problems[0].describe()


def test_a_checkpoint_signed_with_a_key_since_rotated_out_of_first_place_still_verifies(context, settings, tenant,
                                                                                       backdated):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    backdated(10)
    _append(context, tenant, 3)
    backdated(0)
    audit.prune(context.session_factory, settings.replace(secret_key=old_key, audit_retention_days=5), utcnow(),
                tenant_id=tenant)
    assert _verify(context, tenant, [new_key, old_key]).ok, "rotation: the old key is still listed"
    dropped = _verify(context, tenant, [new_key])
    assert [p.kind for p in dropped.problems][:1] == [audit.ProblemKind.bad_checkpoint]


def test_prune_never_signs_over_a_stretch_that_does_not_verify(context, settings, tenant, backdated):
    backdated(10)
    _append(context, tenant, 4)
    backdated(0)
    _behind_the_trigger(context, "UPDATE audit_events SET actor = 'key:x' WHERE tenant_id = :t AND seq = 2", t=tenant)
    summary = audit.prune(
        context.session_factory, settings.replace(audit_retention_days=5), utcnow(), tenant_id=tenant
    )
    assert summary == {"chains": 0, "rows": 0, "skipped": [str(tenant)]}
    assert len(_rows(context, tenant)) == 4, "the evidence stays"
    assert [p.kind for p in _verify(context, tenant).problems] == [audit.ProblemKind.edited]


def test_verify_without_a_tenant_walks_every_chain(context, tenant):
    other = uuid.uuid4()
    _append(context, tenant, 2)
    _append(context, other, 1)
    with context.session_factory() as session:
        report = audit.verify(session, secret_keys=context.settings.secret_keys)
        assert tenant in audit.chains(session) and other in audit.chains(session)
    mine = {chain.chain: chain for chain in report.chains}
    assert mine[tenant].ok and mine[tenant].rows == 2
    assert mine[other].ok and mine[other].rows == 1


def test_export_rows_streams_one_tenant_in_seq_order_within_the_window(context, tenant, backdated):
    backdated(3)
    _append(context, tenant, 2)
    backdated(0)
    _append(context, tenant, 3, start=2)
    _append(context, uuid.uuid4(), 2)
    with context.session_factory() as session:
        everything = list(audit.export_rows(session, tenant, None, None))
        recent = list(audit.export_rows(session, tenant, utcnow() - timedelta(days=1), None))
        early = list(audit.export_rows(session, tenant, None, utcnow() - timedelta(days=1)))
    assert [row.seq for row in everything] == [1, 2, 3, 4, 5]
    assert {row.tenant_id for row in everything} == {tenant}
    assert [row.seq for row in recent] == [3, 4, 5] and [row.seq for row in early] == [1, 2]
    first = everything[0]
    assert first.prev_hash == audit.GENESIS and first.hash == everything[1].prev_hash
    assert first.occurred_at.endswith("Z") and first.detail == {"n": 0, "artifacts": ["pdf"]}
    assert datetime.fromisoformat(first.occurred_at).tzinfo is not None
    assert "id" not in first.model_dump()


def test_checkpoint_text_covers_every_field():
    base = dict(tenant_id=uuid.UUID(int=1), through_seq=3, through_hash="a" * 64,
                pruned_before=datetime(2026, 1, 1, tzinfo=UTC), rows_pruned=3)
    texts = {audit.checkpoint_text(**base)}
    for name, value in (("tenant_id", uuid.UUID(int=2)), ("through_seq", 4), ("through_hash", "b" * 64),
                        ("pruned_before", datetime(2026, 1, 2, tzinfo=UTC)), ("rows_pruned", 2)):
        texts.add(audit.checkpoint_text(**{**base, name: value}))
    assert len(texts) == 6


def _grants_block() -> list[str]:
    """The statements docs/AUDIT.md tells operators to run (the ```sql block marked audit-grants)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "AUDIT.md").read_text()
    block = doc.split("-- audit-grants", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    return [statement.strip() for statement in block.split(";") if statement.strip()]


def test_the_documented_app_role_can_append_and_read_but_never_change_the_trail(context, tenant):
    with context.session_factory() as session:
        if not session.execute(text(
            "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
        )).scalar_one():
            pytest.skip("the test database's user may not create roles")
        # One transaction, rolled back at the end: the role never outlives the test.
        for statement in _grants_block():
            session.execute(text(statement))
        session.execute(text("SET LOCAL ROLE dermasentinel_app"))
        row = audit.append(session, _entry(tenant))
        assert row.seq == 1 and audit.count(session, tenant) == 1
        for statement, refusal in (
            ("UPDATE audit_events SET actor = 'x' WHERE tenant_id = :t", "permission denied"),
            ("DELETE FROM audit_events WHERE tenant_id = :t", "permission denied"),
            ("TRUNCATE audit_events", "permission denied"),
            ("UPDATE audit_checkpoints SET rows_pruned = 0 WHERE tenant_id = :t", "permission denied"),
            ("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only", "must be owner"),
        ):
            with pytest.raises(DBAPIError, match=refusal), session.begin_nested():
                session.execute(text(statement), {"t": tenant})
        session.rollback()
