"""A tenant's data rights (issue 22; docs/DATA_RIGHTS.md): erasure of one analysis and of a
whole tenant (GDPR Art. 17), export of everything a tenant holds (Art. 20), and disabling a
tenant. The one home for erasure: ``RETENTION_DAYS``' purge (``worker.maintenance``) erases
through ``erase_final_before``.

Erasure deletes rows first, in one transaction, and objects after it commits, so no row ever
points at a deleted object. An object that cannot be deleted (after a few tries) is logged by
its key (tenant and analysis ids, never patient data) and reported to the caller; it is
under the analysis' or tenant's prefix, which a rerun sweeps again. A worker that finishes
work for an analysis erased meanwhile deletes what it just wrote (``discard_if_erased``).

Every operation leaves a PHI-free row in the audit trail (``shared.audit``): ids, counts and
outcomes, never an external id, age, site, image or free text. The audit trail has no
foreign key, so it outlives what it records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

from minio.error import S3Error
from sqlalchemy import CursorResult, Delete, delete, func, or_, select, tuple_
from sqlalchemy.orm import Session
from tenacity import Retrying, stop_after_attempt, wait_exponential

from shared import audit, lifecycle, revocations
from shared.clock import iso, utcnow
from shared.config import Settings
from shared.context import AppContext
from shared.db import after_commit, session_scope
from shared.storage import (
    ARTIFACTS,
    BATCH_FILES,
    IMAGES,
    PURPOSES,
    ObjectStore,
    analysis_prefix,
    batch_file_key,
    tenant_prefix,
)
from shared.tables import (
    Analysis,
    AnalysisQuestion,
    AuditCheckpoint,
    AuditEvent,
    Base,
    Batch,
    Event,
    Feedback,
    Report,
    Tenant,
    Upload,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from shared.tenants import TenantNotFound

log = logging.getLogger(__name__)

# Audit actions (shared.audit): one per operation.
EXPORT = "tenant.export"
DELETE = "tenant.delete"
DISABLE = "tenant.disable"
ENABLE = "tenant.enable"
ERASE = "analysis.erase"

EXPORT_FORMAT = "dermasentinel-tenant-export/1"
MANIFEST = "manifest.json"
EXPORT_PAGE = 50  # analyses read per short transaction while exporting
OBJECT_TRIES = 3  # each object delete (and prefix listing) is tried this often before it is reported
MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound"})

ObjectRef = tuple[str, str]  # (purpose, key): shared.storage's bucket purpose and the object's key
T = TypeVar("T")


class TenantDataError(Exception):
    """A data-rights operation refused, with a message for the caller."""


class AnalysisNotFound(TenantDataError, LookupError):
    pass


class ErasureRefused(TenantDataError):
    """The analysis is still queued or processing: cancel it first."""


class ExportRefused(TenantDataError):
    """The export's folder is not empty (or not a folder)."""


# The audit trail's actor for a command run by an operator: ``operator:<os user>``.
operator_actor = audit.operator_actor


# ---------------------------------------------------------------------------------- erasure


@dataclass(frozen=True)
class ErasureResult:
    """What erasing an analysis removed: rows per table, object keys deleted (S3 deletes are
    idempotent: a key already gone counts), and the keys that could not be deleted."""

    analysis_id: uuid.UUID
    rows: dict[str, int]
    objects_deleted: int
    objects_left: tuple[str, ...] = ()

    def detail(self) -> dict[str, Any]:
        """PHI-free: counts only."""
        return {"rows": dict(self.rows), "objects_deleted": self.objects_deleted,
                "objects_left": len(self.objects_left)}


def erase_analysis(
    context: AppContext, tenant_id: uuid.UUID, analysis_id: uuid.UUID, *, actor: str | None = None
) -> ErasureResult:
    """Erase one of the tenant's analyses: its rows and every row that holds its data (report,
    feedback, questions, its events with their webhook deliveries and attempts, its per-request
    webhook, its direct upload) in one transaction, then its objects (image, mask, overlay,
    report PDF, the raw upload, anything else under its prefix).

    Refused (``ErasureRefused``) while it is queued or processing: the caller cancels it first,
    so no worker writes for it afterwards. ``AnalysisNotFound`` for an unknown id or another
    tenant's. With ``actor``, an ``analysis.erase`` row is appended to the tenant's audit chain in
    the same transaction; the API passes none, since its ``authorized`` dependency writes it.
    """
    with session_scope(context.session_factory) as session:
        analysis = session.execute(
            select(Analysis).where(Analysis.id == analysis_id, Analysis.tenant_id == tenant_id).with_for_update()
        ).scalar_one_or_none()
        if analysis is None:
            raise AnalysisNotFound(f"no analysis with id {analysis_id}")
        if analysis.status in lifecycle.ACTIVE:
            raise ErasureRefused(
                f"analysis {analysis_id} is still {analysis.status}; cancel it first "
                f"(POST /v1/analyses/{analysis_id}/cancel), then erase it"
            )
        refs, rows = _erase_rows(session, [analysis])
        if actor is not None:
            audit.append(session, audit.AuditEntry(
                tenant_id=tenant_id, actor=actor, action=ERASE, resource_type="analysis",
                resource_id=str(analysis_id), detail={"rows": rows},
            ))
    deleted, left = remove_objects(context.store, refs, [analysis_prefix(tenant_id, analysis_id)])
    log.info("analysis %s erased: %s rows, %d objects", analysis_id, sum(rows.values()), deleted)
    return ErasureResult(analysis_id, rows, deleted, tuple(left))


def erase_final_before(
    context: AppContext, cutoff: datetime, *, limit: int = 1000, tenant_id: uuid.UUID | None = None
) -> int:
    """``RETENTION_DAYS``: erase up to ``limit`` final analyses completed before ``cutoff`` (of
    one tenant, or all), as ``erase_analysis`` does; rows locked by someone else wait for the
    next run. Returns how many were erased."""
    with session_scope(context.session_factory) as session:
        query = (
            select(Analysis)
            .where(Analysis.status.notin_(lifecycle.ACTIVE), Analysis.completed_at < cutoff)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if tenant_id is not None:
            query = query.where(Analysis.tenant_id == tenant_id)
        analyses = list(session.execute(query).scalars())
        if not analyses:
            return 0
        refs, _ = _erase_rows(session, analyses)
        prefixes = [analysis_prefix(a.tenant_id, a.id) for a in analyses]
    remove_objects(context.store, refs, prefixes)
    return len(analyses)


def discard_if_erased(context: AppContext, analysis_id: uuid.UUID, objects: Iterable[ObjectRef]) -> bool:
    """For a worker whose outcome was not recorded: when the analysis no longer exists (erased,
    or its tenant deleted, while the worker ran), delete the objects it just wrote, so nothing
    of the erased analysis comes back. True when they were deleted. Never raises: a worker's
    pass must not fail over this check (what it misses lies under the analysis' prefix)."""
    try:
        with session_scope(context.session_factory) as session:
            present = session.execute(select(Analysis.id).where(Analysis.id == analysis_id)).first() is not None
        if present:
            return False
        remove_objects(context.store, objects, [])
    except Exception as exc:
        log.warning("could not check whether analysis %s was erased (%s)", analysis_id, type(exc).__name__)
        return False
    log.info("analysis %s was erased while a worker wrote for it; what it wrote was deleted", analysis_id)
    return True


def _erase_rows(session: Session, analyses: Sequence[Analysis]) -> tuple[list[ObjectRef], dict[str, int]]:
    """Delete the analyses (locked by the caller) and every row holding their data, children
    first; returns the objects they pointed at and the rows deleted per table."""
    ids = [a.id for a in analyses]
    refs: list[ObjectRef] = []
    for analysis in analyses:
        refs.append((IMAGES, analysis.image_key))
        refs += [(ARTIFACTS, key) for key in (analysis.mask_key, analysis.overlay_key) if key]
    refs += [(ARTIFACTS, key) for key in session.execute(select(Report.pdf_key).where(Report.analysis_id.in_(ids)))
             .scalars()]
    refs += [(IMAGES, key) for key in session.execute(select(Upload.object_key).where(Upload.analysis_id.in_(ids)))
             .scalars()]
    # A batch's output file names its items (issue 25): it goes, and is written again when next asked for.
    batches = {(a.tenant_id, a.batch_id) for a in analyses if a.batch_id is not None}
    refs += [(ARTIFACTS, batch_file_key(tenant_id, batch_id, name))
             for tenant_id, batch_id in batches if batch_id is not None for name in BATCH_FILES]
    # Its events name it in data.id (and carry its external id): they go, and with them every
    # delivery of them (the "delivery bodies") and each delivery's attempts.
    event_ids = list(session.execute(
        select(Event.id).where(
            Event.tenant_id.in_({a.tenant_id for a in analyses}),
            Event.type.like("analysis.%"),
            func.jsonb_extract_path_text(Event.payload, "data", "id").in_([str(i) for i in ids]),
        )
    ).scalars())
    endpoint_ids = list(session.execute(select(WebhookEndpoint.id).where(WebhookEndpoint.analysis_id.in_(ids)))
                        .scalars())
    deliveries = or_(WebhookDelivery.event_id.in_(event_ids), WebhookDelivery.endpoint_id.in_(endpoint_ids))
    rows = {
        "webhook_attempts": _delete(session, delete(WebhookAttempt).where(
            WebhookAttempt.delivery_id.in_(select(WebhookDelivery.id).where(deliveries)))),
        "webhook_deliveries": _delete(session, delete(WebhookDelivery).where(deliveries)),
        "events": _delete(session, delete(Event).where(Event.id.in_(event_ids))),
        "webhook_endpoints": _delete(session, delete(WebhookEndpoint).where(WebhookEndpoint.id.in_(endpoint_ids))),
        "analysis_questions": _delete(session, delete(AnalysisQuestion).where(AnalysisQuestion.analysis_id.in_(ids))),
        "feedback": _delete(session, delete(Feedback).where(Feedback.analysis_id.in_(ids))),
        "reports": _delete(session, delete(Report).where(Report.analysis_id.in_(ids))),
        "uploads": _delete(session, delete(Upload).where(Upload.analysis_id.in_(ids))),
        "analyses": _delete(session, delete(Analysis).where(Analysis.id.in_(ids))),
    }
    return refs, rows


def _delete(session: Session, statement: Delete) -> int:
    result = session.execute(statement.execution_options(synchronize_session=False))
    return int(cast(CursorResult[Any], result).rowcount)


def remove_objects(store: ObjectStore, refs: Iterable[ObjectRef], prefixes: Iterable[str]) -> tuple[int, list[str]]:
    """Delete the objects ``refs`` and every object under ``prefixes`` (in both buckets), each
    tried ``OBJECT_TRIES`` times. Returns how many keys were deleted and the
    ``purpose/key`` (or ``purpose/prefix*``) of those that could not be, each logged."""
    wanted: dict[ObjectRef, None] = dict.fromkeys(ref for ref in refs if ref[1])
    left: list[str] = []
    for prefix in prefixes:
        for purpose in PURPOSES:
            try:
                found = _tried(partial(_keys_under, store, purpose, prefix))
            except Exception as exc:
                log.warning("could not list %s objects under %s (%s); rerun to delete them",
                            purpose, prefix, type(exc).__name__)
                left.append(f"{purpose}/{prefix}*")
                continue
            wanted.update(dict.fromkeys((purpose, key) for key in found))
    deleted = 0
    for purpose, key in wanted:
        try:
            _tried(partial(store.delete, purpose, key))
        except Exception as exc:
            log.warning("object %s/%s not deleted after %d tries (%s)", purpose, key, OBJECT_TRIES,
                        type(exc).__name__)
            left.append(f"{purpose}/{key}")
        else:
            deleted += 1
    return deleted, left


def _keys_under(store: ObjectStore, purpose: str, prefix: str) -> list[str]:
    return list(store.keys_under(purpose, prefix))


def _tried(action: Callable[[], T]) -> T:
    for attempt in Retrying(stop=stop_after_attempt(OBJECT_TRIES), wait=wait_exponential(multiplier=0.2, max=2),
                            reraise=True):
        with attempt:
            return action()
    raise AssertionError("unreachable")  # Retrying either returns above or re-raises


# ---------------------------------------------------------------------------------- tenants


@dataclass(frozen=True)
class TenantDeletion:
    """What deleting a tenant removed: rows per table (counted before the cascade), object keys
    deleted, and those left behind (rerun ``remove_tenant_objects`` with the tenant's id)."""

    tenant_id: uuid.UUID
    name: str
    rows: dict[str, int]
    objects_deleted: int
    objects_left: tuple[str, ...] = ()


# Tables whose rows are a tenant's (they have a tenant_id), besides the audit trail, which outlives it.
AUDIT_TABLES = frozenset({AuditEvent.__tablename__, AuditCheckpoint.__tablename__})


def tenant_row_counts(session: Session, tenant_id: uuid.UUID) -> dict[str, int]:
    """The tenant's rows per table (every table with a ``tenant_id`` but the audit trail's,
    and the webhook attempts of its deliveries)."""
    counts: dict[str, int] = {}
    for table in Base.metadata.sorted_tables:
        if "tenant_id" in table.c and table.name not in AUDIT_TABLES:
            counts[table.name] = int(session.execute(
                select(func.count()).select_from(table).where(table.c.tenant_id == tenant_id)
            ).scalar_one())
    counts[WebhookAttempt.__tablename__] = int(session.execute(
        select(func.count()).select_from(WebhookAttempt)
        .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
        .where(WebhookDelivery.tenant_id == tenant_id)
    ).scalar_one())
    return counts


def delete_tenant(context: AppContext, tenant: Tenant, *, actor: str = "system") -> TenantDeletion:
    """Delete the tenant and everything it holds: its row and, by the foreign keys' cascade,
    every row of its (keys, batches, analyses, reports, feedback, questions, uploads, events,
    webhook endpoints, deliveries and attempts), in one transaction with its ``tenant.delete``
    tombstones (on the tenant's own audit chain and on the system chain); then every object
    under its prefix. Its keys answer 401 from then on (``api.auth``). Analyses still in
    flight are deleted too: a worker finishing one finds no row and records nothing.
    The audit trail stays (no foreign key)."""
    tenant_id, name = tenant.id, tenant.name
    with session_scope(context.session_factory) as session:
        row = session.execute(select(Tenant).where(Tenant.id == tenant_id).with_for_update()).scalar_one_or_none()
        if row is None:
            raise TenantNotFound(f"no tenant named {name!r}")
        rows = tenant_row_counts(session, tenant_id)
        session.execute(delete(Tenant).where(Tenant.id == tenant_id).execution_options(synchronize_session=False))
        detail = {"rows": rows}
        audit.append(session, audit.AuditEntry(
            tenant_id=tenant_id, actor=actor, action=DELETE, resource_type="tenant", resource_id=str(tenant_id),
            detail=detail,
        ))
        # The system chain's tombstone names the tenant (an organisation, not a patient).
        audit.append(session, audit.AuditEntry(
            tenant_id=None, actor=actor, action=DELETE, resource_type="tenant", resource_id=str(tenant_id),
            detail={**detail, "name": name},
        ))
    revocations.announce(context.settings, tenant_id=tenant_id)  # its keys stop at once
    deleted, left = remove_tenant_objects(context, tenant_id)
    log.info("tenant %s deleted: %s rows, %d objects (%d left)", tenant_id, sum(rows.values()), deleted, len(left))
    return TenantDeletion(tenant_id, name, rows, deleted, tuple(left))


def remove_tenant_objects(context: AppContext, tenant_id: uuid.UUID) -> tuple[int, list[str]]:
    """Delete every object under a deleted tenant's prefix (both buckets): the last step of
    ``delete_tenant``, and its retry when objects were left. Refused while the tenant exists."""
    with session_scope(context.session_factory) as session:
        if session.get(Tenant, tenant_id) is not None:
            raise TenantDataError(f"tenant {tenant_id} still exists; delete it first")
    return remove_objects(context.store, [], [tenant_prefix(tenant_id)])


def set_disabled(
    session: Session, tenant: Tenant, disabled: bool, *, actor: str = "system", settings: Settings | None = None
) -> bool:
    """Disable the tenant (every key answers 401: with ``settings``, running API processes hear
    it once this commits, ``shared.revocations``; else within ``AUTH_CACHE_SECONDS``) or enable
    it again; records ``tenant.disable`` or ``tenant.enable`` in this
    session's transaction. True when the state changed (doing it twice is harmless)."""
    row = session.execute(select(Tenant).where(Tenant.id == tenant.id).with_for_update()).scalar_one_or_none()
    if row is None:
        raise TenantNotFound(f"no tenant named {tenant.name!r}")
    changed = (row.disabled_at is None) == disabled
    if changed:
        row.disabled_at = utcnow() if disabled else None
        session.flush()
        if disabled and settings is not None:
            after_commit(session, partial(revocations.announce, settings, tenant_id=row.id))
    audit.append(session, audit.AuditEntry(
        tenant_id=row.id, actor=actor, action=DISABLE if disabled else ENABLE, resource_type="tenant",
        resource_id=str(row.id), detail={"changed": changed},
    ))
    return changed


# ---------------------------------------------------------------------------------- export


@dataclass
class _Files:
    """The files written under the export's root, each with its sha256 and size."""

    root: Path
    entries: list[dict[str, Any]] = field(default_factory=list)

    def write(self, relative: str, chunks: Iterable[bytes]) -> dict[str, Any]:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with path.open("xb") as handle:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                handle.write(chunk)
        entry = {"path": relative, "sha256": digest.hexdigest(), "size": size}
        self.entries.append(entry)
        return entry

    def json(self, relative: str, data: Any) -> dict[str, Any]:
        return self.write(relative, [_json_bytes(data)])

    def json_array(self, relative: str, items: Iterable[Any]) -> tuple[dict[str, Any], int]:
        """A JSON array written item by item (never whole in memory); returns its entry and length."""
        count = 0

        def chunks() -> Iterator[bytes]:
            nonlocal count
            yield b"["
            for item in items:
                yield (b",\n" if count else b"\n") + _json_bytes(item, indent=None)
                count += 1
            yield b"\n]\n"

        return self.write(relative, chunks()), count

    def object(self, store: ObjectStore, purpose: str, key: str, relative: str) -> dict[str, Any] | None:
        """The object streamed to ``relative``; None when the store has no such object."""
        try:
            return self.write(relative, store.stream(purpose, key))
        except S3Error as exc:
            if exc.code not in MISSING_OBJECT_CODES:
                raise
            (self.root / relative).unlink(missing_ok=True)
            return None


def _json_bytes(data: Any, indent: int | None = 2) -> bytes:
    return json.dumps(data, indent=indent, ensure_ascii=False, sort_keys=indent is not None).encode() + (
        b"\n" if indent is not None else b"")


@dataclass(frozen=True)
class _AnalysisExport:
    """One analysis as read in its page's transaction; its objects are streamed afterwards."""

    id: uuid.UUID
    status: str
    result: dict[str, Any]
    fhir: dict[str, Any] | None
    objects: tuple[tuple[str, str, str], ...]  # (purpose, key, file name)


def _basename(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _read_analysis(context: AppContext, session: Session, analysis: Analysis) -> _AnalysisExport:
    report = session.get(Report, analysis.id)
    feedback = session.execute(
        select(Feedback).where(Feedback.analysis_id == analysis.id).order_by(Feedback.created_at)
    ).scalars()
    view = lifecycle.analysis_view(context.settings, context.store, analysis, report, feedback)
    objects: list[tuple[str, str, str]] = []
    if lifecycle.image_stored(analysis):
        name = _basename(analysis.image_key)
        objects.append((IMAGES, analysis.image_key, name if name.startswith("image.") else "image"))
    objects += [(ARTIFACTS, key, _basename(key)) for key in (analysis.mask_key, analysis.overlay_key) if key]
    if report is not None:
        objects.append((ARTIFACTS, report.pdf_key, "report.pdf"))
    return _AnalysisExport(
        id=analysis.id,
        status=analysis.status,
        # What GET /v1/analyses/{id} answers (the fields that were set, as the route sends them).
        result=view.model_dump(mode="json", exclude_unset=True),
        fhir=report.fhir if report is not None else None,
        objects=tuple(objects),
    )


def _analysis_pages(context: AppContext, tenant_id: uuid.UUID) -> Iterator[list[_AnalysisExport]]:
    """The tenant's analyses, oldest first, ``EXPORT_PAGE`` at a time, each page read in a short
    transaction of its own (no transaction stays open while objects stream)."""
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        with session_scope(context.session_factory) as session:
            query = (
                select(Analysis).where(Analysis.tenant_id == tenant_id)
                .order_by(Analysis.created_at, Analysis.id).limit(EXPORT_PAGE)
            )
            if after is not None:
                query = query.where(tuple_(Analysis.created_at, Analysis.id) > after)
            rows = list(session.execute(query).scalars())
            if not rows:
                return
            page = [_read_analysis(context, session, analysis) for analysis in rows]
            after = (rows[-1].created_at, rows[-1].id)
        yield page


def _rows(context: AppContext, query: Any, shape: Callable[[Any], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows of ``query`` streamed from the server in chunks, each shaped to JSON."""
    with session_scope(context.session_factory) as session:
        for row in session.execute(query.execution_options(yield_per=500)).scalars():
            yield shape(row)


def _batch_json(batch: Batch) -> dict[str, Any]:
    return {
        "id": str(batch.id), "name": batch.name, "external_id": batch.external_id,
        "created_at": iso(batch.created_at), "sealed_at": iso(batch.sealed_at),
        "completed_at": iso(batch.completed_at), "canceled_at": iso(batch.canceled_at),
        "deadline_at": iso(batch.deadline_at),
    }


def _feedback_json(row: Feedback) -> dict[str, Any]:
    return {
        "id": str(row.id), "analysis_id": str(row.analysis_id), "agrees": row.agrees,
        "final_diagnosis": row.final_diagnosis, "histopathology": row.histopathology, "notes": row.notes,
        "created_at": iso(row.created_at),
    }


def _question_json(row: AnalysisQuestion) -> dict[str, Any]:
    # The fields GET /v1/analyses/{id}/questions answers with (its disclaimer aside).
    return {
        "id": str(row.id), "analysis_id": str(row.analysis_id), "question": row.question,
        "answer": row.answer, "model_answer": row.model_answer, "created_at": iso(row.created_at),
    }


def export_tenant(context: AppContext, tenant: Tenant, out_dir: Path, *, actor: str = "system") -> dict[str, Any]:
    """Write everything the tenant holds to the new folder ``out_dir`` and return its manifest
    (also written as ``manifest.json``; docs/DATA_RIGHTS.md describes the layout).

    Objects are streamed to disk and analyses read a page at a time, so no tenant is ever
    held in memory. The files are written to a private temporary sibling, renamed to
    ``out_dir`` at the end: a failed export leaves nothing behind. ``ExportRefused`` when
    ``out_dir`` exists and is not an empty folder."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportRefused(f"{out} is not an empty folder; name a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    tenant_id = tenant.id
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))  # mode 0700
    entry = audit.AuditEntry(tenant_id=tenant_id, actor=actor, action=EXPORT, resource_type="tenant",
                             resource_id=str(tenant_id))
    try:
        manifest = _write_export(context, tenant, work)
        if out.exists():
            out.rmdir()  # empty, as checked
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        try:
            audit.record(context.session_factory, replace(entry, outcome=audit.ERROR))
        except Exception as exc:  # the database may be what failed; the export's own error matters more
            log.warning("the failed export of tenant %s was not recorded in the audit trail (%s)",
                        tenant_id, type(exc).__name__)
        raise
    audit.record(context.session_factory, replace(entry, detail=manifest["counts"]))
    return manifest


def _write_export(context: AppContext, tenant: Tenant, root: Path) -> dict[str, Any]:
    store = context.store
    started = utcnow()
    analyses: list[dict[str, Any]] = []
    files = _Files(root)
    for page in _analysis_pages(context, tenant.id):
        for item in page:
            folder = f"analyses/{item.id}"
            own = _Files(root)
            own.json(f"{folder}/result.json", item.result)
            if item.fhir is not None:
                own.json(f"{folder}/fhir.json", item.fhir)
            missing = [name for purpose, key, name in item.objects
                       if own.object(store, purpose, key, f"{folder}/{name}") is None]
            analyses.append({"id": str(item.id), "status": item.status, "folder": folder,
                             "files": own.entries, "missing": missing})
    _, batches = files.json_array(
        "batches.json", _rows(context, select(Batch).where(Batch.tenant_id == tenant.id)
                              .order_by(Batch.created_at, Batch.id), _batch_json))
    _, feedback = files.json_array(
        "feedback.json", _rows(context, select(Feedback).where(Feedback.tenant_id == tenant.id)
                               .order_by(Feedback.created_at, Feedback.id), _feedback_json))
    _, questions = files.json_array(
        "questions.json", _rows(context, select(AnalysisQuestion).where(AnalysisQuestion.tenant_id == tenant.id)
                                .order_by(AnalysisQuestion.created_at, AnalysisQuestion.id), _question_json))
    every = files.entries + [entry for analysis in analyses for entry in analysis["files"]]
    manifest = {
        "format": EXPORT_FORMAT,
        "tenant": {"id": str(tenant.id), "name": tenant.name, "created_at": iso(tenant.created_at),
                   "disabled_at": iso(tenant.disabled_at)},
        "exported_at": iso(started),
        "counts": {"analyses": len(analyses), "batches": batches, "feedback": feedback, "questions": questions,
                   "files": len(every), "bytes": sum(entry["size"] for entry in every)},
        "files": files.entries,
        "analyses": analyses,
    }
    (root / MANIFEST).write_bytes(_json_bytes(manifest))
    return manifest

