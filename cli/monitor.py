"""`dermasentinel monitor [--tenant NAME] [--chart OUT.png] [--json]` and `monitor clear`:
the operator's view of every tenant's monitoring windows, and the end of a drift episode and of
the safety mode it caused (issue 24; docs/MONITORING.md). Operator commands: they talk to the
database directly, like `tenants`, `models` and `audit`, and are on the audit trail (actor
`operator:<OS user>`)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shared.config import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.context import AppContext
    from shared.schemas.monitoring import ModelMonitoring, Proportion, TenantMonitoring

# What the commands read is imported when they run: `dermasentinel worker` loads this module
# too, and must not import prometheus_client (shared.drift's gauges) before it prepares its
# metrics folder (worker.celery_app.prepare_metrics_dir).

COLUMNS = ("tenant", "model", "weights", "results", "scored", "psi", "ks", "skin psi", "rejected", "failed",
           "sens", "spec", "drift", "safety")


@contextlib.contextmanager
def _context() -> Iterator[AppContext]:
    from shared.context import AppContext

    context = AppContext(get_settings())
    try:
        yield context
    finally:
        context.close()


@click.group("monitor", invoke_without_command=True)
@click.option("--tenant", "tenant_name", metavar="NAME", help="one tenant (name or id); default: every tenant")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.png",
              help="also draw PSI, KS and the rejection and failure rates per tenant and model as a PNG")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (the API's shape, per tenant)")
@click.pass_context
def monitor_group(ctx: click.Context, tenant_name: str | None, chart: Path | None, as_json: bool) -> None:
    """Every tenant's monitoring: per model version, the window's results, the drift measures
    against the model's reference (PSI, KS, skin-group PSI), rejection and failure rates, the
    sensitivity and specificity on confirmed outcomes, open drift episodes and safety mode."""
    if ctx.invoked_subcommand is not None:
        return
    from shared import audit, monitoring
    from shared.db import session_scope
    from shared.schemas.monitoring import TenantMonitoring

    settings = get_settings()
    with _context() as context, session_scope(context.session_factory) as session:
        chosen = _tenants(session, tenant_name)
        views = [
            TenantMonitoring(tenant_id=tenant_id, tenant=name,
                             **monitoring.tenant_monitoring(session, settings, tenant_id).model_dump())
            for tenant_id, name in chosen
        ]
        actor = audit.operator_actor()
        audit.append_many(session, [
            audit.AuditEntry(view.tenant_id, actor, "monitoring.read", "monitoring", None,
                             detail={"models": len(view.models)})
            for view in views
        ])
    if as_json:
        click.echo(json.dumps([view.model_dump(mode="json") for view in views], indent=2))
    else:
        for line in table(views):
            click.echo(line)
    if chart is not None:
        chart.write_bytes(chart_png(views, settings.drift_psi_threshold, settings.drift_ks_threshold))
        click.echo(f"chart: {chart}")


@monitor_group.command("clear")
@click.option("--tenant", "tenant_name", metavar="NAME", help="this tenant's episodes (name or id); default: all")
@click.option("--model-version", metavar="VERSION", help="only this model version's episode")
def monitor_clear(tenant_name: str | None, model_version: str | None) -> None:
    """Close the open drift episodes, ending the safety mode they put tenants in (their new
    results get their own disposition again); the cleared versions' windows start afresh.
    Recorded on each tenant's audit chain (`drift.clear`, `safety_mode.clear`)."""
    from sqlalchemy import select

    from shared import audit, drift, monitoring
    from shared.db import session_scope
    from shared.tables import Tenant

    with _context() as context, session_scope(context.session_factory) as session:
        tenant_id = None
        if tenant_name is not None:
            tenant_id = _tenants(session, tenant_name)[0][0]
        cleared = drift.clear(session, actor=audit.operator_actor(), tenant_id=tenant_id, model_version=model_version)
        names = {row.id: row.name for row in session.execute(select(Tenant.id, Tenant.name))}
    if not cleared:
        click.echo("no open drift episode" + (f" for {tenant_name}" if tenant_name else ""))
        return
    for episode in cleared:
        safety = " (safety mode ended)" if episode.action == monitoring.REVIEW_ALL else ""
        click.echo(f"cleared drift of {names.get(episode.tenant_id, episode.tenant_id)}, model "
                   f"{episode.model_version}{safety}")


def _tenants(session: Session, name_or_id: str | None) -> list[tuple[uuid.UUID, str]]:
    from sqlalchemy import select

    from shared import tenants
    from shared.tables import Tenant

    if name_or_id is not None:
        try:
            found = tenants.find_tenant(session, name_or_id)
        except tenants.TenantNotFound as exc:
            raise click.ClickException(str(exc)) from None
        return [(found.id, found.name)]
    rows = session.execute(select(Tenant.id, Tenant.name).order_by(Tenant.name))
    return [(tenant_id, name) for tenant_id, name in rows]


# ---------------------------------------------------------------- rendering


def table(views: list[TenantMonitoring]) -> list[str]:
    """One line per (tenant, model version) with results in its window."""
    rows = [_row(view, model) for view in views for model in view.models]
    if not rows:
        return ["no results in any monitoring window"]
    widths = [max(len(str(row[i])) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [COLUMNS, *rows]]
    safety = [view for view in views if view.safety_mode.active]
    for view in safety:
        lines.append(f"{view.tenant}: safety mode since {view.safety_mode.since} (models "
                     f"{', '.join(view.safety_mode.model_versions)}); `dermasentinel monitor clear --tenant "
                     f"{view.tenant}` ends it")
    return lines


def _row(view: TenantMonitoring, model: ModelMonitoring) -> tuple[str, ...]:
    probability = model.probability
    episode = model.drift.open_episode
    status: str = probability.status
    if episode is not None:
        status = f"open since {episode.opened_at[:19]}"
    elif model.drift.exceeded:
        status = "drift: " + ",".join(model.drift.exceeded)
    return (
        view.tenant, model.model_version, model.weights or "-", str(model.window.results), str(probability.count),
        _number(probability.psi), _number(probability.ks), _number(model.skin_groups.psi),
        _rate(model.rejection_rate), _rate(model.failure_rate),
        _rate(model.outcomes.overall.sensitivity), _rate(model.outcomes.overall.specificity),
        status, "on" if view.safety_mode.active else "off",
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _rate(proportion: Proportion) -> str:
    if proportion.value is None:
        return "-"
    return f"{proportion.value:.2f} ({proportion.count}/{proportion.total})"


def chart_png(views: list[TenantMonitoring], psi_threshold: float, ks_threshold: float) -> bytes:
    """PSI, KS, and the rejection and failure rates of each (tenant, model version), with the
    drift thresholds drawn in."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    pairs = [(f"{view.tenant} / {model.model_version}", model) for view in views for model in view.models]
    labels = [label for label, _ in pairs] or ["(no results)"]
    height = max(3.0, 0.45 * len(labels) + 1.5)
    fig, axes = plt.subplots(1, 3, figsize=(14, height), sharey=True)
    try:
        positions = list(range(len(labels)))
        panels = (
            (axes[0], "PSI (probabilities)", [m.probability.psi for _, m in pairs], psi_threshold),
            (axes[1], "KS statistic", [m.probability.ks for _, m in pairs], ks_threshold),
        )
        for axis, title, values, threshold in panels:
            drawn = [v if v is not None else 0.0 for v in values] or [0.0]
            colours = ["#c0392b" if v is not None and v > threshold else "#2e86c1" for v in values] or ["#2e86c1"]
            axis.barh(positions, drawn, color=colours)
            axis.axvline(threshold, color="#c0392b", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
            axis.set_title(title)
            axis.legend(loc="lower right", fontsize=8)
        rates = axes[2]
        rejected = [m.rejection_rate.value or 0.0 for _, m in pairs] or [0.0]
        failed = [m.failure_rate.value or 0.0 for _, m in pairs] or [0.0]
        rates.barh([p - 0.2 for p in positions], rejected, height=0.4, color="#f39c12", label="rejected")
        rates.barh([p + 0.2 for p in positions], failed, height=0.4, color="#7f8c8d", label="failed")
        rates.set_xlim(0, 1)
        rates.set_title("Rejection and failure rates")
        rates.legend(loc="lower right", fontsize=8)
        axes[0].set_yticks(positions)
        axes[0].set_yticklabels(labels, fontsize=8)
        fig.suptitle("DermaSentinel monitoring (research use only)")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()
    finally:
        plt.close(fig)
