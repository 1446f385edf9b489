"""The ``dermasentinel`` command."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.errors import CliGroup
from shared.clinical.vocabulary import AGE_MAX, AGE_MIN, SEXES
from shared.config import ENV_PREFIX, get_settings
from shared.priority import lower_priority
from shared.queues import ROLE_QUEUES, queue_list
from shared.scopes import Scope

if TYPE_CHECKING:
    from dermasentinel_client import Client
    from sqlalchemy.orm import Session

    from shared.config import Settings
    from shared.model_acceptance import AcceptanceCheck
    from shared.model_registry import RegisteredModel

ROLES = {
    # role: (queues, pool, default concurrency, preload models)
    "gpu": (queue_list(ROLE_QUEUES["gpu"]), "prefork", 1, True),
    "cpu": (queue_list(ROLE_QUEUES["cpu"]), "prefork", 1, False),
    "io": (queue_list(ROLE_QUEUES["io"]), "threads", 16, False),
    "all": (queue_list(ROLE_QUEUES["all"]), "prefork", 2, False),
}
# shared.model_registry.MODEL_KINDS (a test holds them equal), named here so that starting the
# command does not load the registry's database code.
MODEL_KINDS = ("scalpel", "fusion")


def _client_options(func):
    func = click.option("--api-key", "--key", "api_key", envvar="DERMASENTINEL_API_KEY",
                        help="API key (dsk_…); default: DERMASENTINEL_API_KEY, else the development key of `up`")(func)
    func = click.option("--api-url", envvar="DERMASENTINEL_API_URL", help="API base URL")(func)
    return func


def _client(api_url: str | None, api_key: str | None) -> Client:
    from cli.client import connect

    settings = get_settings()
    return connect(api_url or settings.api_url, api_key or settings.api_key.get_secret_value())


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING… (DEBUG: a failing command prints its traceback)")
def cli(log_level: str | None) -> None:
    """DermaSentinel: asynchronous melanoma screening (research use; NOT a certified medical device)."""
    from shared.logs import configure_logging

    # JSON lines, or a readable line on a terminal (LOG_FORMAT); per-request and per-migration
    # chatter (httpx, alembic) stays below WARNING unless DEBUG (docs/OBSERVABILITY.md).
    configure_logging(get_settings(), level=log_level)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="API port (0 picks a free one)")
@click.option("--demo", is_flag=True, help="Submit a synthetic lesion once the stack is up and print the result")
@click.option("--exit-after-demo", is_flag=True, help="Stop everything after the demo (for scripts and CI)")
def up(host: str, port: int, demo: bool, exit_after_demo: bool) -> None:
    """Run the whole stack on this machine: Postgres, Redis, S3, api, workers, beat."""
    from cli.up import run_stack

    sys.exit(run_stack(host=host, port=port, demo=demo or exit_after_demo, exit_after_demo=exit_after_demo))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """The stack client commands use: its API (ready or not), where its settings come from, and
    the Prometheus metrics URL of each of its processes (the API's and each worker role's)."""
    from dermasentinel_client import Client

    from cli.up import read_metrics_file
    from shared.config import settings_files

    settings = get_settings()
    if not settings.api_url:
        raise click.ClickException(
            "no stack found: start one with `dermasentinel up` (client commands then find it from any folder), "
            "or set DERMASENTINEL_API_URL"
        )
    with Client(base_url=settings.api_url, timeout=5.0) as client:  # /readyz needs no key
        readiness = client.readiness()
    metrics = read_metrics_file(settings.data_dir)
    report = {
        "api_url": settings.api_url,
        "status": readiness.status,
        "failing": sorted(name for name, check in readiness.checks.items() if not check.ok),
        "data_dir": str(settings.data_dir.resolve()),
        "settings_files": [str(path) for path in settings_files()],
        "metrics": metrics,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    failing = f" ({', '.join(report['failing'])} failing)" if report["failing"] else ""
    click.echo(f"API        {settings.api_url}  {readiness.status}{failing}")
    click.echo(f"data dir   {report['data_dir']}")
    click.echo(f"settings   {', '.join(report['settings_files']) or 'the environment only'}")
    if not metrics:
        click.echo("metrics    none recorded (`dermasentinel up` records each process' metrics port)")
    for name, url in metrics.items():
        click.echo(f"metrics    {name:<11} {url}")


@cli.command()
@click.option("--timeout", type=click.FloatRange(0), default=60.0, show_default=True,
              help="seconds to wait for the database to accept connections")
def migrate(timeout: float) -> None:
    """Apply database migrations (waits for the database first)."""
    from shared.migrate import upgrade

    upgrade(get_settings().database_url, wait_seconds=timeout)
    click.echo("database is at the latest migration")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=1, show_default=True)
@click.option("--metrics-port", type=int, default=None,
              help="Serve the API's Prometheus metrics on this port, apart from the public one "
              "(0: any free port; default METRICS_PORT; unset: not served)")
def api(host: str, port: int, workers: int, metrics_port: int | None) -> None:
    """Serve the HTTP API."""
    import os

    import uvicorn

    if metrics_port is not None:
        # Read by the app factory's settings, in this process and uvicorn's worker processes.
        os.environ[ENV_PREFIX + "METRICS_PORT"] = str(metrics_port)

    # No access log: query strings can carry client references (external_id); metrics cover traffic.
    uvicorn.run(
        "api.main:create_app", factory=True, host=host, port=port, workers=workers,
        proxy_headers=True, access_log=False,
    )


@cli.command()
@click.option("--role", type=click.Choice(sorted(ROLES)), default="all", show_default=True,
              help="gpu: analysis queues; cpu: ingest + reports + maintenance; io: webhooks")
@click.option("--concurrency", type=int, default=None)
@click.option("--metrics-port", type=int, default=None,
              help="Serve this worker's Prometheus metrics on this port (0: any free port; default METRICS_PORT)")
def worker(role: str, concurrency: int | None, metrics_port: int | None) -> None:
    """Run a Celery worker for one role."""
    from worker.celery_app import create_celery, prepare_metrics_dir

    settings = get_settings()
    if metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": metrics_port})
    prepare_metrics_dir(settings, role)
    lower_priority(settings.nice)  # before the pool forks: its processes and threads inherit it
    queues, pool, default_concurrency, preload = ROLES[role]
    app = create_celery(settings, preload_models=preload)
    app.worker_main(
        [
            *_quiet_when_json(settings),
            "worker",
            "--queues", queues,
            "--pool", pool,
            "--concurrency", str(concurrency or default_concurrency),
            "--hostname", f"{role}@%h",
            "--loglevel", get_settings().log_level,
            "--without-gossip",
            "--without-mingle",
        ]
    )


@cli.command("worker-alive")
@click.option("--max-age", type=float, default=60.0, show_default=True,
              help="Seconds since the worker's main process last reported in, at most")
def worker_alive(max_age: float) -> None:
    """Exit 0 when a worker main process here reported in within MAX_AGE seconds: the
    Kubernetes liveness probe (a stopped or hung worker stops reporting; issue 26)."""
    from shared.liveness import freshest_worker

    data_dir = get_settings().data_dir
    found = freshest_worker(data_dir)
    if found is None:
        raise click.ClickException(f"no worker process has reported in under {data_dir / 'heartbeats'}")
    pid, age = found
    if age > max_age:
        raise click.ClickException(f"worker process {pid} last reported in {age:.0f} s ago (over {max_age:g} s): hung")
    click.echo(f"worker process {pid} reported in {age:.1f} s ago")


def _quiet_when_json(settings: Settings) -> list[str]:
    """Celery's start-up banner is printed, not logged: without it, a process that logs JSON
    writes nothing but JSON lines (issue 25)."""
    from shared.logs import wants_console

    return [] if wants_console(settings.log_format) else ["--quiet"]


@cli.command()
def beat() -> None:
    """Run the scheduler: sweeper, webhook retries, retention purge."""
    from worker.celery_app import create_celery

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lower_priority(settings.nice)
    app = create_celery()
    # ---- issue 26: the sweeper in a thread of its own here, not queued behind a CPU worker's backlog
    if settings.sweep_in_beat:
        from worker import runtime
        from worker.maintenance import SweepLoop

        app.conf.beat_schedule.pop("sweep", None)
        SweepLoop(lambda: runtime.runtime().context, settings.sweep_interval_seconds).start()
    # ---- end issue 26
    app.start([*_quiet_when_json(settings), "beat", "--schedule", str(settings.data_dir / "celerybeat-schedule"),
               "--loglevel", settings.log_level])


@cli.group()
def tenants() -> None:
    """Manage tenants and API keys."""


@tenants.command("create")
@click.argument("name")
def tenants_create(name: str) -> None:
    """Create tenant NAME (or add a key to it) and print a new admin API key (every scope),
    shown only once."""
    from shared import audit
    from shared import tenants as service

    with _key_session() as session:
        try:
            service.find_tenant(session, name)
            created = False
        except service.TenantNotFound:
            created = True
        tenant, key = service.issue_key(session, name)
        actor = audit.operator_actor()
        if created:
            audit.append(session, audit.AuditEntry(None, actor, "tenant.create", "tenant", str(tenant.id)))
            audit.append(session, audit.AuditEntry(tenant.id, actor, "tenant.create", "tenant", str(tenant.id)))
        audit.append(session, audit.AuditEntry(tenant.id, actor, "key.create", "api_key", None,
                                               detail={"scopes": "all"}))
    click.echo(f"tenant {tenant.name} ({tenant.id}): an admin key, with every scope")
    click.echo(f"API key (shown once): {key}")


@tenants.group("keys")
def tenants_keys() -> None:
    """List, create and revoke a tenant's API keys."""


@contextlib.contextmanager
def _key_session():
    from shared.context import AppContext
    from shared.db import session_scope

    context = AppContext(get_settings())
    try:
        with session_scope(context.session_factory) as session:
            yield session
    finally:
        context.close()


@tenants_keys.command("list")
@click.argument("tenant")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def tenants_keys_list(tenant: str, as_json: bool) -> None:
    """TENANT's keys (name or id): id, prefix, label, scopes, created, last used, revoked."""
    from shared import tenants as service

    with _key_session() as session:
        try:
            found = service.find_tenant(session, tenant)
        except service.TenantNotFound as exc:
            raise click.ClickException(str(exc)) from None
        keys = service.list_keys(session, found.id)
    rows = [
        {
            "id": str(k.id), "prefix": k.prefix, "label": k.label, "created_at": _when(k.created_at),
            "last_used_at": _when(k.last_used_at), "revoked_at": _when(k.revoked_at), "scopes": list(k.scopes),
        }
        for k in keys
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row, k in zip(rows, keys, strict=True):
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        click.echo(
            f"{row['id']}  {row['prefix']}…  {state:<33} created {row['created_at']}  "
            f"last used {row['last_used_at'] or 'never'}  {_scope_text(list(k.scopes))}  {row['label'] or ''}".rstrip()
        )


def _scope_text(scopes: list[str]) -> str:
    from shared.scopes import ALL_SCOPES

    return "all scopes" if set(scopes) >= {scope.value for scope in ALL_SCOPES} else ",".join(scopes)


@tenants_keys.command("create")
@click.argument("tenant")
@click.option("--label", "--name", "label", help="what the key is for, e.g. 'EHR bridge'")
@click.option("--scope", "scopes", multiple=True, type=click.Choice([s.value for s in Scope]),
              help="what the key may do (repeat for several); default: every scope (an admin key)")
def tenants_keys_create(tenant: str, label: str | None, scopes: tuple[str, ...]) -> None:
    """A new key for the existing TENANT, printed once."""
    from shared import audit
    from shared import tenants as service
    from shared.scopes import parse_scopes

    chosen = parse_scopes(scopes) if scopes else None
    with _key_session() as session:
        try:
            found = service.find_tenant(session, tenant)
            info, key = service.create_key(session, found.id, label, quota=get_settings().api_keys_per_tenant,
                                           scopes=chosen)
        except (service.TenantNotFound, service.KeyQuotaExceeded) as exc:
            raise click.ClickException(str(exc)) from None
        audit.append(session, audit.AuditEntry(found.id, audit.operator_actor(), "key.create", "api_key",
                                               str(info.id), detail={"scopes": list(info.scopes)}))
    click.echo(f"key {info.id} for tenant {found.name} ({_scope_text(list(info.scopes))})")
    click.echo(f"API key (shown once): {key}")


@tenants_keys.command("revoke")
@click.argument("tenant")
@click.argument("key_id")
@click.option("--allow-last", is_flag=True, help="revoke even the tenant's last active key (locks it out)")
def tenants_keys_revoke(tenant: str, key_id: str, allow_last: bool) -> None:
    """Revoke KEY_ID (from `keys list`) of TENANT; the API refuses it within seconds."""
    import uuid

    from shared import audit
    from shared import tenants as service

    try:
        ident = uuid.UUID(key_id)
    except ValueError:
        raise click.ClickException(
            f"{key_id!r} is not a key id; `dermasentinel tenants keys list {tenant}` shows them"
        ) from None
    with _key_session() as session:
        try:
            found = service.find_tenant(session, tenant)
            info = service.revoke_key(session, found.id, ident, allow_last=allow_last)
            audit.append(session, audit.AuditEntry(found.id, audit.operator_actor(), "key.revoke", "api_key",
                                                   str(info.id)))
        except (service.TenantNotFound, service.ApiKeyNotFound) as exc:
            raise click.ClickException(str(exc)) from None
        except service.LastKeyError as exc:
            raise click.ClickException(f"{exc} (or pass --allow-last)") from None
    from shared import revocations

    revocations.announce(get_settings(), key_id=info.id)  # every API process forgets it now
    click.echo(f"revoked {info.prefix}… ({info.id}) of tenant {found.name} at {_when(info.revoked_at)}")


@cli.group("secrets")
def secrets_group() -> None:
    """Webhook secrets at rest."""


@secrets_group.command("reencrypt")
def secrets_reencrypt() -> None:
    """Re-encrypt every webhook secret under the first SECRET_KEY, so older keys can be removed."""
    from shared.security import SecretDecryptionError, reencrypt_webhook_secrets, secret_box

    settings = get_settings()
    with _key_session() as session:
        try:
            count = reencrypt_webhook_secrets(session, secret_box(settings))
        except SecretDecryptionError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"re-encrypted {count} webhook endpoints under the first SECRET_KEY; older keys may now be removed")


def _when(moment) -> str | None:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


@cli.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--age", type=click.IntRange(AGE_MIN, AGE_MAX))
@click.option("--sex", type=click.Choice(SEXES), default="unknown")
@click.option("--site", default="unknown")
@click.option("--external-id", help="your reference for this analysis (the FHIR report's identifier)")
@click.option("--patient-reference", help="Patient/<id>, an absolute URL ending in Patient/<id>, or system|value")
@click.option("--encounter-reference", help="Encounter/<id>, an absolute URL ending in Encounter/<id>, or system|value")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", default=600.0, show_default=True)
@_client_options
def submit(image: Path, age, sex, site, external_id, patient_reference, encounter_reference, wait: bool,
           timeout: float, api_url, api_key) -> None:
    """Submit IMAGE, wait for the result and print it."""
    from cli.render import printable

    client = _client(api_url, api_key)
    fields = {"age": age, "sex": sex, "site": site, "external_id": external_id,
              "patient_reference": patient_reference, "encounter_reference": encounter_reference}
    try:  # an error of the API is explained by the boundary (cli/errors.py)
        analysis = client.analyses.create(image, **fields)
        if wait:
            analysis = client.analyses.wait(analysis.id, timeout=timeout)
    finally:
        client.close()
    click.echo(json.dumps(printable(analysis), indent=2))
    note = analysis.result.scribe_note if analysis.result is not None else None
    if wait and analysis.status == "succeeded" and note:
        click.echo("\n" + note)


@cli.command()
@click.argument("analysis_ids", metavar="ID [ID...]", nargs=-1, required=True)
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="wait for each new analysis and print its status and model version")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait for each (with --wait)")
@_client_options
def reprocess(analysis_ids: tuple[str, ...], wait: bool, timeout: float, api_url, api_key) -> None:
    """Run finished analyses ID... again on the active models: one new analysis each, the
    original kept. Prints "ID -> NEW_ID" per input; a refused ID is reported on stderr and
    the others still go ahead (exit status 1 if any was refused)."""
    from cli.client import ApiError
    from cli.render import disposition, model_version

    client = _client(api_url, api_key)
    refused = 0
    try:
        for analysis_id in analysis_ids:
            try:
                new = client.analyses.reprocess(analysis_id)
            except ApiError as exc:
                refused += 1
                click.echo(f"{analysis_id}: not reprocessed: {exc}", err=True)
                continue
            line = f"{analysis_id} -> {new.id}"
            if wait:
                try:
                    done = client.analyses.wait(new.id, timeout=timeout)
                except (ApiError, TimeoutError) as exc:
                    line += f"  (not finished: {exc})"
                else:
                    line += f"  {done.status}, model {model_version(done)}"
                    if done.result is not None:
                        line += f", disposition {disposition(done)}"
            click.echo(line)
    finally:
        client.close()
    if refused:
        raise click.ClickException(f"{refused} of {len(analysis_ids)} analyses were not reprocessed")


@cli.group()
def models() -> None:
    """Manage model checkpoints."""


@models.command("import")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(MODEL_KINDS), required=True)
@click.option("--card", "card_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="model card JSON (default: <checkpoint>.card.json beside it, or the one embedded by training)")
@click.option("--version", help="version name (default: the card's, else <kind>-N)")
@click.option("--activate", is_flag=True, help="make it the active model at once")
def models_import(checkpoint: Path, kind: str, card_path: Path | None, version: str | None, activate: bool) -> None:
    """Check that CHECKPOINT loads into the model, then register it (object store + database,
    as a candidate) when the stack is configured, and install it into MODEL_DIR when that is set."""
    from training.model_store import import_checkpoint, register_checkpoint
    from worker.pipeline.errors import ModelConfigError

    settings = get_settings()
    if activate and settings.acceptance_file is not None:
        raise click.UsageError(
            "ACCEPTANCE_FILE is set, so a model is activated only after its acceptance check: import without "
            "--activate, store an evaluation (`dermasentinel evaluate --fusion-model VERSION`), then `models activate`"
        )
    registry = bool(settings.database_url and settings.s3_endpoint)
    if settings.model_dir is None and not registry:
        raise click.ClickException(
            "set DERMASENTINEL_MODEL_DIR to the folder that holds the checkpoints, or run the stack "
            "(`dermasentinel up`) so the model registry can be used"
        )
    try:
        if registry:
            row, created = register_checkpoint(settings, checkpoint, kind, card_path=card_path, version=version,
                                               activate=activate)
            from training.model_store import registry_session

            with registry_session(settings) as session:
                _audit_model(session, "model.register" if created else "model.register_again", row.id, kind=kind,
                             version=row.version, activated=activate)
            state = "active" if activate else row.status
            click.echo(f"{'registered' if created else 'already registered'} {kind} {row.version} "
                       f"({row.id}, sha256 {row.sha256}, weights {row.weights}): {state}")
            if not activate and row.status != "active":
                click.echo(f"activate it with: dermasentinel models activate {kind} {row.version}")
        if settings.model_dir is not None:
            target, digest = import_checkpoint(checkpoint, kind, settings.model_dir)
            click.echo(f"installed {target} (sha256 {digest}); restart the GPU workers to use it")
    except (ModelConfigError, ValueError) as exc:
        raise click.ClickException(f"{checkpoint} was not installed: {exc}") from None


@models.command("list")
@click.option("--kind", type=click.Choice(MODEL_KINDS))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def models_list(kind: str | None, as_json: bool) -> None:
    """Registered models, newest first, with status, calibration and validation metrics."""
    from shared import model_registry
    from training.model_store import registry_session

    with registry_session(get_settings()) as session:
        rows = [model_registry.describe(row) for row in model_registry.list_models(session, kind)]
    if as_json:
        click.echo(json.dumps([row.as_json() for row in rows], indent=2))
        return
    if not rows:
        click.echo("no registered models; workers use MODEL_DIR or untrained weights")
    for row in rows:
        auc = (row.metrics or {}).get("validation", {}).get("auc")
        auc_text = f"val AUC {auc:.3f}" if auc is not None else ""
        click.echo(
            f"{row.kind:<8} {row.version:<28} {row.status:<9} {row.weights:<9} {_thresholds(row):<42} "
            f"{auc_text:<13} {row.sha256[:12]}  {row.id}"
        )


def _thresholds(row: RegisteredModel) -> str:
    """Both operating points of a Fusion row: the high-risk (decision) threshold and the rule-out
    one, each with the sensitivity it was chosen for; "default" where the card records none."""
    if row.kind != "fusion":
        return ""
    threshold = f"threshold {row.threshold:.3f}" if row.threshold is not None else "threshold default"
    if row.target_sensitivity is not None and row.threshold is not None:
        threshold += f" (sens {row.target_sensitivity:g})"
    rule_out = "rule-out default"
    if row.rule_out_threshold is not None:
        rule_out = f"rule-out {row.rule_out_threshold:.3f}"
        if row.rule_out_sensitivity is not None:
            rule_out += f" (sens {row.rule_out_sensitivity:g})"
    return f"{threshold}; {rule_out}"


def _audit_model(session: Session, action: str, model_id: object, **detail: object) -> None:
    """An operator's change to the model registry, on the audit trail's system chain."""
    from shared import audit

    audit.append(session, audit.AuditEntry(None, audit.operator_actor(), action, "model", str(model_id),
                                           detail={k: v for k, v in detail.items() if v is not None}))


@models.command("activate")
@click.argument("kind", type=click.Choice(MODEL_KINDS))
@click.argument("ref")
@click.option("--acceptance", "acceptance_path", type=click.Path(dir_okay=False, path_type=Path),
              help="acceptance file (YAML) the candidate's stored evaluation must meet (default: ACCEPTANCE_FILE)")
@click.option("--override", "override_reason", metavar="REASON",
              help="activate a candidate that fails its acceptance criteria; REASON is recorded in the registry "
              "and the audit trail")
def models_activate(kind: str, ref: str, acceptance_path: Path | None, override_reason: str | None) -> None:
    """Make model REF (version, id or sha256 prefix) of KIND active; GPU workers switch to it
    between passes, within MODEL_CHECK_SECONDS, without a restart.

    With an acceptance file (--acceptance, or the ACCEPTANCE_FILE setting) the candidate's
    stored evaluation on the file's evaluation set is checked first: a candidate without one,
    or failing any criterion, is refused with each failed criterion listed, unless --override
    REASON is given (the reason and the failed criteria are recorded on the registry row and in
    the audit row). Without a file the model is activated unchecked, and the command says so."""
    from shared import audit, model_acceptance, model_registry
    from training.model_store import registry_session

    settings = get_settings()
    if override_reason is not None and not override_reason.strip():
        raise click.UsageError("--override needs a reason (it is recorded in the registry and the audit trail)")
    from cli.models_rollout import acceptance_plan

    plan_path, criteria, file_sha256 = acceptance_plan(kind, acceptance_path, settings)
    if plan_path is None and override_reason is not None:
        raise click.UsageError("--override overrides failed acceptance criteria: give --acceptance FILE or set "
                               "ACCEPTANCE_FILE")
    actor = audit.operator_actor()
    refused: model_acceptance.AcceptanceCheck | None = None
    try:
        with registry_session(settings) as session:
            target = model_registry.find_model(session, kind, ref)
            version = target.version
            check = None
            if criteria is not None:
                stored = model_registry.evaluation_on(target, criteria.evaluation_set.sha256)
                check = model_acceptance.check(criteria, stored.report if stored is not None else None,
                                               file=str(plan_path), file_sha256=file_sha256)
            acceptance = model_acceptance.audit_detail(check, override_reason if check and not check.passed else None)
            if check is not None and not check.passed and override_reason is None:
                # Refused: nothing changes but the audit trail, which records the refusal.
                audit.append(session, audit.AuditEntry(
                    None, actor, "model.activate", "model", str(target.id), outcome=audit.INVALID,
                    detail={"kind": kind, "version": target.version, **acceptance},
                ))
                refused = check
            else:
                active, previous = model_registry.activate(session, kind, str(target.id))
                passed_override = override_reason if check is not None and not check.passed else None
                record = model_acceptance.activation_record(
                    actor, check, passed_override, retired=previous.version if previous is not None else None,
                )
                active.governance = model_acceptance.with_activation(active.governance, record)
                _audit_model(session, "model.activate", active.id, kind=kind, version=active.version,
                             retired=previous.version if previous is not None else None, **acceptance)
                message = f"{kind} {active.version} is active"
                if previous is not None:
                    message += f" (retired {previous.version})"
    except (model_registry.ModelNotFound, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if refused is not None:
        click.echo(_acceptance_lines(kind, version, refused, "fails"), err=True)
        raise click.ClickException(
            f"{kind} {version} was not activated; activate it anyway with --override \"REASON\" (the reason "
            "and the failed criteria are recorded in the registry and the audit trail)"
        )
    if check is None:
        click.echo("no acceptance criteria were checked (no --acceptance file and no ACCEPTANCE_FILE)")
    elif check.passed:
        click.echo(f"acceptance: passed {len(check.results)} criteria on evaluation set "
                   f"{check.evaluation_set.name} ({plan_path})")
        if override_reason is not None:
            click.echo("--override was not needed: nothing failed, no override is recorded")
    else:
        click.echo(_acceptance_lines(kind, version, check, "fails"))
        click.echo(f"OVERRIDDEN by {actor}: {override_reason} (recorded in the registry and the audit trail)")
    click.echo(message)


def _acceptance_lines(kind: str, version: str, check: AcceptanceCheck, verb: str) -> str:
    """The failed criteria of an acceptance check, one per line, each with the value measured and its bound."""
    found = check.evaluation_set
    lines = [f"{kind} {version} {verb} its acceptance criteria ({check.file}; evaluation set {found.name}, "
             f"sha256 {found.sha256[:12]}…):"]
    lines += [f"  {result.message}" for result in check.failed]
    return "\n".join(lines)


@models.command("rollback")
@click.argument("kind", type=click.Choice(MODEL_KINDS))
def models_rollback(kind: str) -> None:
    """Retire the active model of KIND and re-activate the one active before it (none before
    it: workers go back to MODEL_DIR or untrained weights)."""
    from shared import model_registry
    from training.model_store import registry_session

    try:
        with registry_session(get_settings()) as session:
            active, rolled_back = model_registry.rollback(session, kind)
            _audit_model(session, "model.rollback", rolled_back.id, kind=kind, retired=rolled_back.version,
                         version=active.version if active is not None else None)
            message = f"retired {kind} {rolled_back.version}; " + (
                f"{active.version} is active again" if active is not None
                else "no registered model is active (MODEL_DIR or untrained weights)"
            )
    except model_registry.NothingToRollBack as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(message)


@cli.group()
def feedback() -> None:
    """Clinician feedback."""


@feedback.command("export")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tenant", "tenant_name", help="this tenant's feedback (needed when there are several tenants)")
@click.option("--all-tenants", is_flag=True, help="every tenant's feedback in one file")
def feedback_export(out: Path, tenant_name: str | None, all_tenants: bool) -> None:
    """Write one tenant's feedback with the predictions it judges to OUT.csv, for retraining."""
    from cli.exports import ExportScopeError, export_feedback

    try:
        count = export_feedback(get_settings(), out, tenant_name, all_tenants=all_tenants)
    except ExportScopeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {count} rows to {out}")


from cli.batch import batch  # noqa: E402  (registered last: it builds on the group above)

cli.add_command(batch)

from training.cli import evaluate, train  # noqa: E402  (model lifecycle commands, docs/MODELS.md)

cli.add_command(train)
cli.add_command(evaluate)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Benchmark the inference engine (raw networks, pipeline, host cost, end to end); --help for options."""
    # benchmarks/ ships with the source tree, not the installed package: run it from there.
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "engine.py").is_file():
        raise click.ClickException(f"benchmarks/engine.py not found under {root}; run from a source checkout")
    sys.exit(subprocess.call([sys.executable, "-m", "benchmarks.engine", *args], cwd=root))

from cli.audit import audit_group  # noqa: E402  (issue 22: verify and export the audit trail, docs/AUDIT.md)

cli.add_command(audit_group)

from cli.monitor import monitor_group  # noqa: E402  (issue 24: monitoring and drift, docs/MONITORING.md)

cli.add_command(monitor_group)

from cli.models_rollout import install as install_rollout  # noqa: E402  (issue 24: shadow, canary, docs/MODELS.md)

install_rollout(models)


# A tenant's data rights (issue 22; docs/DATA_RIGHTS.md).
from cli.tenant_data import tenants_delete, tenants_disable, tenants_enable, tenants_export  # noqa: E402

tenants.add_command(tenants_export)
tenants.add_command(tenants_delete)
tenants.add_command(tenants_disable)
tenants.add_command(tenants_enable)


def main() -> None:
    cli(prog_name="dermasentinel")


if __name__ == "__main__":
    main()
