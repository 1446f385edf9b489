"""`dermasentinel tenants export|delete|disable|enable`: a tenant's data rights (issue 22;
docs/DATA_RIGHTS.md). The work is ``shared.tenant_data``'s; these commands find the tenant,
ask before deleting, and say what happened. Each leaves a row in the audit trail with the
actor ``operator:<os user>``."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shared.config import get_settings

if TYPE_CHECKING:
    from shared.context import AppContext
    from shared.tables import Tenant


@contextlib.contextmanager
def _context() -> Iterator[AppContext]:
    from shared.context import AppContext

    context = AppContext(get_settings())
    try:
        yield context
    finally:
        context.close()


def _find(context: AppContext, name: str) -> Tenant:
    """The tenant NAME (or id); a ClickException naming it when there is none."""
    from shared import tenants
    from shared.db import session_scope

    with session_scope(context.session_factory) as session:
        try:
            return tenants.find_tenant(session, name)
        except tenants.TenantNotFound as exc:
            raise click.ClickException(str(exc)) from None


@click.command("export")
@click.argument("name")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def tenants_export(name: str, out: Path) -> None:
    """Write everything tenant NAME holds to the new folder OUT: per analysis its result (as the
    API shows it), image, mask, overlay, PDF report and FHIR bundle; its batches, feedback and
    questions; and manifest.json with each file's sha256 and size (GDPR Art. 20)."""
    from shared import tenant_data

    with _context() as context:
        tenant = _find(context, name)
        try:
            manifest = tenant_data.export_tenant(context, tenant, out, actor=tenant_data.operator_actor())
        except tenant_data.ExportRefused as exc:
            raise click.ClickException(str(exc)) from None
    counts = manifest["counts"]
    click.echo(
        f"exported tenant {tenant.name} ({tenant.id}) to {out}: {counts['analyses']} analyses, "
        f"{counts['batches']} batches, {counts['feedback']} feedback entries, {counts['questions']} questions; "
        f"{counts['files']} files, {counts['bytes']} bytes (manifest.json lists each with its sha256)"
    )
    missing = sum(len(analysis["missing"]) for analysis in manifest["analyses"])
    if missing:
        click.echo(f"{missing} objects named by rows were not in the object store (listed under 'missing')", err=True)


@click.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask; delete at once")
def tenants_delete(name: str, yes: bool) -> None:
    """Delete tenant NAME and everything it holds: keys, batches, analyses (images, artifacts,
    reports, results, questions, feedback), webhook endpoints, events and deliveries
    (GDPR Art. 17). Only the audit trail remains, with a tombstone of the deletion. Asks you
    to type the name unless --yes. Its keys answer 401 (docs/DATA_RIGHTS.md: key stop).

    Given a deleted tenant's id, deletes any objects a previous run could not."""
    from shared import tenant_data

    with _context() as context:
        try:
            tenant = _find(context, name)
        except click.ClickException:
            _leftovers(context, name)
            raise
        if not yes:
            typed = click.prompt(
                f"This deletes tenant {tenant.name} ({tenant.id}) and all its data for good. "
                "Type its name to confirm", default="", show_default=False,
            )
            if typed != tenant.name:
                raise click.ClickException("the name typed does not match; nothing was deleted")
        try:
            done = tenant_data.delete_tenant(context, tenant, actor=tenant_data.operator_actor())
        except tenant_data.TenantNotFound as exc:
            raise click.ClickException(f"{exc} (deleted meanwhile?)") from None
    click.echo(
        f"deleted tenant {done.name} ({done.tenant_id}): {sum(done.rows.values())} rows "
        f"({', '.join(f'{table} {n}' for table, n in done.rows.items() if n)}), {done.objects_deleted} objects; "
        "the audit trail keeps its tombstone"
    )
    if done.objects_left:
        raise click.ClickException(
            f"{len(done.objects_left)} objects could not be deleted from the object store (see the log); "
            f"run `dermasentinel tenants delete {done.tenant_id} --yes` again to delete them"
        )


def _leftovers(context: AppContext, name: str) -> None:
    """``tenants delete ID`` of a tenant already deleted: remove objects a previous run left."""
    from shared import tenant_data

    try:
        tenant_id = uuid.UUID(name)
    except ValueError:
        return
    deleted, left = tenant_data.remove_tenant_objects(context, tenant_id)
    if left:
        raise click.ClickException(f"tenant {tenant_id} is deleted; {len(left)} of its objects still could not be "
                                   "deleted (see the log); try again later")
    if deleted:
        click.echo(f"tenant {tenant_id} was already deleted; deleted {deleted} objects it left behind")
        raise SystemExit(0)


def _set_disabled(name: str, disabled: bool) -> None:
    from shared import tenant_data
    from shared.db import session_scope

    with _context() as context:
        tenant = _find(context, name)
        with session_scope(context.session_factory) as session:
            changed = tenant_data.set_disabled(session, tenant, disabled, actor=tenant_data.operator_actor(),
                                               settings=context.settings)
    seconds = get_settings().auth_cache_seconds
    if disabled:
        state = "disabled" if changed else "was already disabled"
        click.echo(f"tenant {tenant.name} ({tenant.id}) {state}: every key answers 401 from now on (at most "
                   f"{seconds:g} s if the API cannot hear it through Redis); its data is kept")
    else:
        state = "enabled" if changed else "was not disabled"
        click.echo(f"tenant {tenant.name} ({tenant.id}) {state}: its active keys work again within {seconds:g} s")


@click.command("disable")
@click.argument("name")
def tenants_disable(name: str) -> None:
    """Stop every API key of tenant NAME (401) without deleting anything; `enable` undoes it."""
    _set_disabled(name, True)


@click.command("enable")
@click.argument("name")
def tenants_enable(name: str) -> None:
    """Let the keys of the disabled tenant NAME work again."""
    _set_disabled(name, False)
