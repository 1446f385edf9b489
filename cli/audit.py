"""`dermasentinel audit`: verify the audit trail's hash chains and export a tenant's rows
(issue 22; docs/AUDIT.md). Operator commands: they talk to the database directly, like
`tenants` and `models`."""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TextIO

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import audit, tenants
from shared.config import get_settings
from shared.context import AppContext
from shared.csv_export import SafeDictWriter
from shared.schemas import AuditEventOut
from shared.tables import SYSTEM_CHAIN, Tenant

SYSTEM = "system"
CSV_COLUMNS = list(AuditEventOut.model_fields)


@click.group("audit")
def audit_group() -> None:
    """The audit trail: verify its hash chains, export a tenant's rows."""


@contextlib.contextmanager
def _context() -> Iterator[AppContext]:
    context = AppContext(get_settings())
    try:
        yield context
    finally:
        context.close()


@contextlib.contextmanager
def _snapshot(context: AppContext) -> Iterator[Session]:
    """A session that sees one snapshot (REPEATABLE READ) while appends and pruning go on."""
    with context.session_factory() as session:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        yield session
        session.commit()


def _chain_of(session: Session, name_or_id: str) -> uuid.UUID:
    """A tenant's chain by name or id; ``system`` is the system chain; the id of a tenant
    that no longer exists still names its chain (the trail outlives the tenant)."""
    if name_or_id == SYSTEM:
        return SYSTEM_CHAIN
    try:
        return tenants.find_tenant(session, name_or_id).id
    except tenants.TenantNotFound as exc:
        try:
            return uuid.UUID(name_or_id)
        except ValueError:
            raise click.ClickException(str(exc)) from None


def _names(session: Session) -> dict[uuid.UUID, str]:
    names = {row.id: row.name for row in session.execute(select(Tenant.id, Tenant.name))}
    names[SYSTEM_CHAIN] = SYSTEM
    return names


def _moment(value: str | None, option: str) -> datetime | None:
    """``--since``/``--until``: an ISO date (midnight UTC) or datetime (UTC without an offset)."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO date or datetime (e.g. 2026-01-31 or 2026-01-31T08:00:00Z)", param_hint=option
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@audit_group.command("verify")
@click.option("--tenant", "tenant", metavar="NAME",
              help="one tenant's chain (name or id; `system`); default: every chain")
def verify(tenant: str | None) -> None:
    """Walk the hash chains and report each edited, re-linked or missing row and each badly
    signed checkpoint; print each chain's head (seq and hash) to anchor outside the database.
    Exits 1 when anything is wrong."""
    with _context() as context, _snapshot(context) as session:
        chain = _chain_of(session, tenant) if tenant else None
        report = audit.verify(session, chain, secret_keys=context.settings.secret_keys)
        names = _names(session)
    if not report.chains:
        click.echo("no audit chains yet")
    for result in report.chains:
        name = names.get(result.chain, "(deleted tenant)")
        label = f"{name} ({result.chain})"
        after = f", after the checkpoint through row {result.checkpoint_seq}" if result.checkpoint_seq else ""
        head = f"head {result.head_seq} {result.head_hash}" if result.head_seq else "empty"
        if result.ok:
            click.echo(f"OK       {label}: {result.rows} rows{after}; {head}")
            continue
        click.echo(f"PROBLEM  {label}: {result.rows} rows{after}; {head}")
        for problem in result.problems:
            click.echo(f"  {problem.kind.value}: {problem.describe()}")
    if not report.ok:
        click.echo(f"{len(report.problems)} problem(s) found", err=True)
        sys.exit(1)


@audit_group.command("export")
@click.option("--tenant", "tenant", metavar="NAME", required=True, help="the tenant (name or id; `system`)")
@click.option("--since", metavar="ISO", help="rows at or after this date or datetime (UTC unless an offset is given)")
@click.option("--until", metavar="ISO", help="rows before this date or datetime")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write here instead of stdout")
def export(tenant: str, since: str | None, until: str | None, fmt: str, out: Path | None) -> None:
    """Write TENANT's audit rows, in seq order, as JSON lines (every field, so a copy can be
    re-verified) or CSV (spreadsheet-safe cells). The export itself is recorded on the
    tenant's chain (`audit.export`, actor `operator:<OS user>`)."""
    start, end = _moment(since, "--since"), _moment(until, "--until")
    with _context() as context:
        with context.session_factory() as session:
            chain = _chain_of(session, tenant)
        count, outcome = 0, audit.ERROR
        try:
            with _snapshot(context) as session, _output(out) as handle:
                count = _write(handle, fmt, audit.export_rows(session, chain, start, end))
            outcome = audit.SUCCESS
        finally:
            audit.record(context.session_factory, audit.AuditEntry(
                tenant_id=chain, actor=audit.operator_actor(), action="audit.export", resource_type="audit_event",
                outcome=outcome, detail={"format": fmt, "rows": count, "since": since, "until": until,
                                         "to": "file" if out else "stdout"},
            ))
    if out is not None:
        click.echo(f"wrote {count} audit rows to {out}", err=True)


@contextlib.contextmanager
def _output(out: Path | None) -> Iterator[TextIO]:
    if out is None:
        yield sys.stdout
        return
    with out.open("w", newline="", encoding="utf-8") as handle:
        yield handle


def _write(handle: TextIO, fmt: str, rows: Iterator[AuditEventOut]) -> int:
    count = 0
    if fmt == "jsonl":
        for row in rows:
            handle.write(json.dumps(row.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
        return count
    writer = SafeDictWriter(handle, CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        values = row.model_dump(mode="json")
        if values["detail"] is not None:
            values["detail"] = json.dumps(values["detail"], sort_keys=True, separators=(",", ":"))
        writer.writerow(values)
        count += 1
    return count
