"""`dermasentinel models shadow|compare` and `models activate … --canary P | --promote`: shadow
and canary rollout of a candidate model (issue 24; docs/MODELS.md). Operator commands: they
talk to the database directly, like the other `models` commands, and are on the audit trail
(actor `operator:<OS user>`). ``install`` adds them to the `models` group of cli/main.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shared.config import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.config import Settings
    from shared.model_acceptance import AcceptanceCheck, AcceptanceCriteria
    from shared.model_rollout import Agreement
    from shared.tables import ModelVersion

# What the commands read is imported when they run (as cli/monitor.py does).


@click.command("shadow")
@click.argument("kind", type=click.Choice(("scalpel", "fusion")))
@click.argument("ref", required=False)
@click.option("--fraction", type=click.FloatRange(0, 1), default=None,
              help="share of live jobs the candidate also runs on, after their result is stored (0 stops it)")
@click.option("--off", is_flag=True, help="stop the running shadow of KIND")
def models_shadow(kind: str, ref: str | None, fraction: float | None, off: bool) -> None:
    """Run candidate REF (version, id or sha256 prefix) of KIND in shadow on a share of live jobs:
    after each selected job's result is stored, and only while the GPU lane is not behind, the
    candidate runs on the same image and its output is kept apart (never shown, never changing
    the result). `models compare REF` reports how far the two agree. --off (or --fraction 0) stops it."""
    from shared import audit, model_registry, model_rollout
    from training.model_store import registry_session

    stopping = off or fraction == 0
    if not stopping and (ref is None or fraction is None):
        raise click.UsageError("give the candidate and its share: `models shadow fusion VERSION --fraction 0.2` "
                               "(or --off to stop the running shadow)")
    actor = audit.operator_actor()
    try:
        with registry_session(get_settings()) as session:
            if stopping:
                row = model_rollout.stop(session, kind, model_rollout.SHADOW, actor)
                version = _version(session, row.model_id)
                click.echo(f"stopped the shadow of {kind} {version}; `dermasentinel models compare {version}` "
                           "shows what it stored")
                return
            assert ref is not None and fraction is not None
            rollout, replaced = model_rollout.start_shadow(session, kind, ref, fraction, actor)
            version = _version(session, rollout.model_id)
    except (model_registry.ModelNotFound, model_rollout.RolloutError) as exc:
        raise click.ClickException(str(exc)) from None
    if replaced is not None:
        click.echo(f"stopped the shadow of {kind} {replaced}")
    click.echo(f"{kind} {version} shadows {fraction:.0%} of live jobs (after their result is stored; skipped while "
               f"the GPU lane is behind); compare with `dermasentinel models compare {version}`")


@click.command("compare")
@click.argument("ref")
@click.option("--kind", type=click.Choice(("fusion",)), default="fusion", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def models_compare(ref: str, kind: str, as_json: bool) -> None:
    """How far shadowed candidate REF agrees with the active model on the cases it shadowed:
    |Δp| (median, 95th percentile, maximum), disposition agreement, and the same per ITA skin group."""
    from shared import model_registry, model_rollout
    from training.model_store import registry_session

    try:
        with registry_session(get_settings()) as session:
            comparison = model_rollout.compare(session, kind, ref)
    except model_registry.ModelNotFound as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(comparison.model_dump(mode="json"), indent=2))
        return
    if comparison.overall.cases == 0:
        click.echo(f"no shadowed cases of {kind} {comparison.version} yet; start a shadow with "
                   f"`dermasentinel models shadow {kind} {comparison.version} --fraction 0.2`")
        return
    header = ("group", "cases", "scored", "|Δp| p50", "|Δp| p95", "|Δp| max", "mean Δp", "disp agree", "outcome agree")
    rows = [("overall", comparison.overall)] + list(comparison.by_skin_group.items())
    lines = [header] + [_agreement_cells(name, found) for name, found in rows]
    widths = [max(len(line[n]) for line in lines) for n in range(len(header))]
    click.echo(f"{kind} {comparison.version} (shadow) against the active model's stored results:")
    for line in lines:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _agreement_cells(name: str, found: Agreement) -> tuple[str, ...]:
    def number(value: float | None, pattern: str = "{:.3f}") -> str:
        return "-" if value is None else pattern.format(value)

    return (name, str(found.cases), str(found.scored), number(found.abs_delta_p50), number(found.abs_delta_p95),
            number(found.abs_delta_max), number(found.mean_delta, "{:+.3f}"),
            number(found.disposition_agreement, "{:.1%}"), number(found.outcome_agreement, "{:.1%}"))


def _version(session: Session, model_id: object) -> str:
    from shared.tables import ModelVersion

    row = session.get(ModelVersion, model_id)
    return row.version if row is not None else str(model_id)


# ------------------------------------------------------------------ models activate --canary / --promote

CANARY_HELP = ("send PERCENT % of new jobs (chosen by a stable hash of the analysis id) to REF instead of the active "
               "model, rolled back automatically beyond the CANARY_* bounds; 0 stops the running canary")
PROMOTE_HELP = "finish REF's canary: it becomes the active model for every job"


def install(models: click.Group) -> None:
    """Add `shadow` and `compare` to the `models` group, and --canary / --promote to `models activate`."""
    models.add_command(models_shadow)
    models.add_command(models_compare)
    activate = models.commands["activate"]
    plain = activate.callback
    assert plain is not None
    activate.params += [
        click.Option(["--canary"], type=click.FloatRange(0, 100), metavar="PERCENT", help=CANARY_HELP),
        click.Option(["--promote"], is_flag=True, help=PROMOTE_HELP),
    ]
    activate.help = (activate.help or "") + (
        "\n\n--canary PERCENT sends that share of new jobs to REF first (the acceptance check applies as above); "
        "--promote then makes it the active model.")
    activate.callback = _rollout_activate(plain)


def _rollout_activate(plain: Callable[..., Any]) -> Callable[..., Any]:
    def callback(*, canary: float | None, promote: bool, **options: Any) -> Any:
        if canary is None and not promote:
            return plain(**options)
        if canary is not None and promote:
            raise click.UsageError("give --canary PERCENT to start a canary, or --promote to finish it, not both")
        return _canary_or_promote(canary=canary, promote=promote, **options)

    return callback


def _canary_or_promote(*, kind: str, ref: str, acceptance_path: Path | None, override_reason: str | None,
                       canary: float | None, promote: bool) -> None:
    from shared import audit, model_acceptance, model_registry, model_rollout
    from training.model_store import registry_session

    settings = get_settings()
    if override_reason is not None and not override_reason.strip():
        raise click.UsageError("--override needs a reason (it is recorded in the registry and the audit trail)")
    plan_path, criteria, file_sha256 = acceptance_plan(kind, acceptance_path, settings)
    actor = audit.operator_actor()
    action = model_rollout.PROMOTE if promote else model_rollout.CANARY_START
    refused: AcceptanceCheck | None = None
    check: AcceptanceCheck | None = None
    message = ""
    try:
        with registry_session(settings) as session:
            if canary == 0:
                row = model_rollout.stop(session, kind, model_rollout.CANARY, actor)
                message = (f"stopped the canary of {kind} {_version(session, row.model_id)}; every job runs on the "
                           "active model")
            else:
                target = model_registry.find_model(session, kind, ref)
                if criteria is not None:
                    stored = model_registry.evaluation_on(target, criteria.evaluation_set.sha256)
                    check = model_acceptance.check(criteria, stored.report if stored is not None else None,
                                                   file=str(plan_path), file_sha256=file_sha256)
                overridden = override_reason if check is not None and not check.passed else None
                detail = model_acceptance.audit_detail(check, overridden)
                if check is not None and not check.passed and override_reason is None:
                    audit.append(session, audit.AuditEntry(
                        None, actor, action, "model", str(target.id), outcome=audit.INVALID,
                        detail={"kind": kind, "version": target.version, **detail}))
                    refused = check
                elif promote:
                    message = _promote(session, kind, target, actor, check, overridden)
                else:
                    assert canary is not None
                    model_rollout.start_canary(session, kind, str(target.id), canary, actor, detail)
                    message = (f"{kind} {target.version} is the canary for {canary:g}% of new jobs (by a stable hash "
                               f"of the analysis id); promote it with `dermasentinel models activate {kind} "
                               f"{target.version} --promote`")
    except (model_registry.ModelNotFound, model_rollout.RolloutError) as exc:
        raise click.ClickException(str(exc)) from None
    if refused is not None:
        failed = "\n".join(f"  {result.message}" for result in refused.failed)
        click.echo(f"{kind} {ref} fails its acceptance criteria ({refused.file}):\n{failed}", err=True)
        raise click.ClickException(f"{kind} {ref} was not {'promoted' if promote else 'started as a canary'}; "
                                   "go ahead anyway with --override \"REASON\" (recorded in the audit trail)")
    if check is not None:
        click.echo(f"acceptance: {'passed' if check.passed else 'FAILED, overridden: ' + str(override_reason)}")
    elif canary != 0:
        click.echo("no acceptance criteria were checked (no --acceptance file and no ACCEPTANCE_FILE)")
    click.echo(message)


def _promote(session: Session, kind: str, target: ModelVersion, actor: str, check: AcceptanceCheck | None,
             overridden: str | None) -> str:
    from shared import model_acceptance, model_rollout

    active, previous = model_rollout.promote(session, kind, str(target.id), actor)
    record = model_acceptance.activation_record(actor, check, overridden,
                                                retired=previous.version if previous is not None else None)
    active.governance = model_acceptance.with_activation(active.governance, record)
    return f"promoted the canary: {kind} {active.version} is active" + (
        f" (retired {previous.version})" if previous is not None else "")


def acceptance_plan(
    kind: str, acceptance_path: Path | None, settings: Settings
) -> tuple[Path | None, AcceptanceCriteria | None, str | None]:
    """The acceptance file a change of the active model is checked against (``--acceptance`` or
    ``ACCEPTANCE_FILE``), its criteria and sha256; all None without one. Fusion models only."""
    from shared import model_acceptance

    plan_path = acceptance_path or settings.acceptance_file
    if plan_path is None:
        return None, None, None
    if kind != "fusion":
        raise click.UsageError(f"acceptance criteria apply to fusion models, not {kind}; activate {kind} models "
                               "without --acceptance (and without ACCEPTANCE_FILE)")
    try:
        criteria, file_sha256 = model_acceptance.load_acceptance(plan_path)
    except model_acceptance.AcceptanceFileError as exc:
        raise click.ClickException(str(exc)) from None
    return Path(plan_path), criteria, file_sha256
