"""The model registry: checkpoints in the object store, one Postgres row each (docs/MODELS.md).

All registry SQL lives here; the CLI, the API and the GPU workers call these functions. At
most one model per kind is ``active`` (a partial unique index guarantees it); activating
another retires it, and rollback re-activates the one active before. With no active row for
a kind, workers use what ``MODEL_DIR`` holds (or, for Fusion, seeded untrained weights).
No torch here: callers prove a checkpoint loads before registering it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session, undefer

from shared.clinical import SYNTHETIC, TRAINED
from shared.clock import iso, utcnow
from shared.schemas.evaluation import EvaluationReport, EvaluationSet
from shared.storage import ARTIFACTS, IMAGES, ObjectStore, image_key
from shared.tables import Analysis, ModelStatus, ModelVersion
from shared.tracing import current_traceparent

if TYPE_CHECKING:
    from celery import Celery

MODEL_KINDS = ("scalpel", "fusion")
MODELS_PURPOSE = ARTIFACTS  # checkpoints share the artifacts bucket, under models/ (no tenant)
CHECKPOINT_TYPE = "application/octet-stream"


class Calibration(BaseModel):
    """A Fusion card's operating point, fitted on the validation fold by training: temperature
    scaling, then the threshold that reaches ``target_sensitivity``, and the rule-out threshold
    (the highest whose sensitivity reaches ``rule_out_sensitivity``: below it a result with no
    review reason is ``routine``)."""

    model_config = ConfigDict(extra="allow")

    temperature: float | None = None
    threshold: float | None = None
    target_sensitivity: float | None = None
    chosen_on: str | None = None
    sensitivity: float | None = None  # reached on validation at the threshold
    specificity: float | None = None
    rule_out_threshold: float | None = None
    rule_out_sensitivity: float | None = None  # the target it was chosen for
    rule_out_sensitivity_reached: float | None = None  # on validation at the rule-out threshold
    rule_out_specificity: float | None = None
    rule_out_npv: float | None = None  # negative predictive value on validation at it


class TrainingData(BaseModel):
    model_config = ConfigDict(extra="allow")

    description: str | None = None
    synthetic: bool = False  # learnt from generated images: results say weights "synthetic"


class ModelCard(BaseModel):
    """What the registry, the workers and the CLI read of a model card (training writes it,
    training/checkpoints.py; an operator may write one by hand). Every other field of the card
    rides along untouched: it is stored and shown as given."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    kind: str | None = None
    version: str | None = None
    training_data: TrainingData | None = None
    calibration: Calibration | None = None
    metrics: dict[str, Any] | None = None

    @classmethod
    def of(cls, card: Mapping[str, Any] | None) -> ModelCard:
        """The card as typed data (an empty card when there is none)."""
        return cls.model_validate(card or {})

    @property
    def weights(self) -> str:
        """``synthetic`` when the card says the model learnt from generated images, else ``trained``."""
        return SYNTHETIC if self.training_data is not None and self.training_data.synthetic else TRAINED


class RegisteredModel(BaseModel):
    """A registry row as the CLI shows it (``models list --json`` prints these fields, in this order)."""

    id: str
    kind: str
    version: str
    sha256: str
    status: str
    weights: str
    threshold: float | None
    temperature: float | None
    target_sensitivity: float | None
    rule_out_threshold: float | None
    rule_out_sensitivity: float | None
    metrics: dict[str, Any] | None
    training_data: TrainingData | None
    created_at: str | None
    activated_at: str | None

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values; the card's training data exactly as the card gave it."""
        return self.model_dump(mode="json", exclude_unset=True)


class ModelNotFound(LookupError):
    pass


class NothingToRollBack(LookupError):
    pass


def model_object_key(kind: str, sha256: str) -> str:
    return f"models/{kind}/{sha256}.pth"


@dataclass(frozen=True)
class ActiveModel:
    """What a worker needs to run a registered model (plain values, safe across threads)."""

    id: uuid.UUID
    kind: str
    version: str
    sha256: str
    object_key: str
    card: dict
    threshold: float | None
    temperature: float | None

    @classmethod
    def of(cls, row: ModelVersion) -> ActiveModel:
        return cls(row.id, row.kind, row.version, row.sha256, row.object_key, dict(row.card or {}),
                   row.threshold, row.temperature)


def _check_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}, not {kind!r}")


def register(
    session: Session,
    store: ObjectStore,
    *,
    kind: str,
    data: bytes,
    sha256: str,
    version: str | None = None,
    card: dict | None = None,
) -> tuple[ModelVersion, bool]:
    """Store the checkpoint and add it as a candidate; the same file again returns its row.
    Returns (row, created)."""
    _check_kind(kind)
    existing = session.scalar(select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.sha256 == sha256))
    if existing is not None:
        return existing, False
    card = dict(card or {})
    described = ModelCard.of(card)
    calibration = described.calibration or Calibration()
    version = version or described.version or _next_version(session, kind)
    if session.scalar(select(ModelVersion.id).where(ModelVersion.kind == kind, ModelVersion.version == version)):
        raise ValueError(f"{kind} version {version!r} already exists with other weights; pass another --version")
    key = model_object_key(kind, sha256)
    store.put(MODELS_PURPOSE, key, data, CHECKPOINT_TYPE)
    row = ModelVersion(
        kind=kind,
        version=str(version),
        sha256=sha256,
        object_key=key,
        card=card,
        metrics=dict(described.metrics or {}),
        threshold=calibration.threshold,
        temperature=calibration.temperature,
        status=ModelStatus.candidate.value,
    )
    session.add(row)
    session.flush()
    return row, True


def _next_version(session: Session, kind: str) -> str:
    count = len(session.scalars(select(ModelVersion.id).where(ModelVersion.kind == kind)).all())
    return f"{kind}-{count + 1}"


def list_models(session: Session, kind: str | None = None, *, with_evaluations: bool = False) -> list[ModelVersion]:
    """Registered models by kind, newest first; ``with_evaluations`` loads the (deferred) stored
    evaluations in the same query."""
    query = select(ModelVersion).order_by(ModelVersion.kind, ModelVersion.created_at.desc())
    if with_evaluations:
        query = query.options(undefer(ModelVersion.evaluations))
    if kind is not None:
        query = query.where(ModelVersion.kind == kind)
    return list(session.scalars(query))


def find_model(session: Session, kind: str, ref: str) -> ModelVersion:
    """A model of ``kind`` by version name, id, or sha256 prefix (at least 8 characters)."""
    _check_kind(kind)
    rows = session.scalars(select(ModelVersion).where(ModelVersion.kind == kind)).all()
    matches = [r for r in rows if r.version == ref or str(r.id) == ref]
    if not matches and len(ref) >= 8:
        matches = [r for r in rows if r.sha256.startswith(ref)]
    if len(matches) != 1:
        raise ModelNotFound(
            f"no single {kind} model {ref!r}; `dermasentinel models list` shows versions and ids"
        )
    return matches[0]


def activate(session: Session, kind: str, ref: str) -> tuple[ModelVersion, ModelVersion | None]:
    """Make ``ref`` the active model of its kind; the previous active one is retired.
    Returns (now active, previously active)."""
    _lock_kind(session, kind)
    target = find_model(session, kind, ref)
    previous = _active_row(session, kind)
    if previous is not None and previous.id == target.id:
        return target, None
    if previous is not None:
        previous.status = ModelStatus.retired.value
        session.flush()  # the partial unique index allows one active row per kind
    target.status = ModelStatus.active.value
    target.activated_at = datetime.now(UTC)
    session.flush()
    return target, previous


def rollback(session: Session, kind: str) -> tuple[ModelVersion | None, ModelVersion]:
    """Retire the active model of ``kind`` and re-activate the one active before it; with
    none before it, no model of that kind is active (workers fall back to MODEL_DIR /
    untrained). Returns (now active or None, rolled back)."""
    _lock_kind(session, kind)
    current = _active_row(session, kind)
    if current is None:
        raise NothingToRollBack(f"no {kind} model is active; nothing to roll back")
    earlier = session.scalar(
        select(ModelVersion)
        .where(
            ModelVersion.kind == kind,
            ModelVersion.id != current.id,
            ModelVersion.activated_at.is_not(None),
            ModelVersion.activated_at < current.activated_at,
        )
        .order_by(ModelVersion.activated_at.desc())
        .limit(1)
    )
    current.status = ModelStatus.retired.value
    session.flush()
    if earlier is not None:
        earlier.status = ModelStatus.active.value
        # Not re-stamped: its place in the activation history stays where it was, so a second
        # rollback goes one further back.
        session.flush()
    # The rolled-back model leaves the history, so the next rollback does not bring it back.
    current.activated_at = None
    session.flush()
    return earlier, current


def active_models(session: Session) -> dict[str, ActiveModel]:
    rows = session.scalars(select(ModelVersion).where(ModelVersion.status == ModelStatus.active.value))
    return {row.kind: ActiveModel.of(row) for row in rows}


def _active_row(session: Session, kind: str) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.status == ModelStatus.active.value)
    )


def _lock_kind(session: Session, kind: str) -> None:
    """Serialise activations of one kind (two operators activating at once)."""
    _check_kind(kind)
    session.execute(select(ModelVersion.id).where(ModelVersion.kind == kind).with_for_update())


def cards_by_id(session: Session, ids: Iterable[str | None]) -> dict[str, dict[str, Any]]:
    """The model cards of the registry rows ``ids`` names (an analysis' checkpoints'
    ``registry_id``), by id: only rows that have a card; ids that are not registry ids are
    skipped. FHIR bundles carry them as DocumentReferences (issue 23)."""
    wanted: set[uuid.UUID] = set()
    for ref in ids:
        if not ref:
            continue
        try:
            wanted.add(uuid.UUID(ref))
        except ValueError:
            continue
    if not wanted:
        return {}
    rows = session.execute(select(ModelVersion.id, ModelVersion.card).where(ModelVersion.id.in_(wanted)))
    return {str(row_id): dict(card) for row_id, card in rows if card}


def read_checkpoint(store: ObjectStore, model: ActiveModel) -> bytes:
    return store.get(MODELS_PURPOSE, model.object_key)


def resolve(session: Session, kind: str, ref: str) -> ActiveModel:
    """A registered model of ``kind``: ``active`` (the one workers run now), or a version
    name, id or sha256 prefix as ``find_model`` takes them."""
    if ref == "active":
        _check_kind(kind)
        row = _active_row(session, kind)
        if row is None:
            raise ModelNotFound(
                f"no {kind} model is active; `dermasentinel models list` shows the registered versions"
            )
        return ActiveModel.of(row)
    return ActiveModel.of(find_model(session, kind, ref))


def cached_checkpoint(store: ObjectStore, model: ActiveModel, data_dir: Path) -> Path:
    """The model's checkpoint as a local file, ``DATA_DIR/models/{kind}-{sha256}.pth``: downloaded
    once, checked against the registered sha256, written atomically (workers and ``evaluate``)."""
    folder = data_dir / "models"
    path = folder / f"{model.kind}-{model.sha256}.pth"
    if path.is_file():
        return path
    data = read_checkpoint(store, model)
    if hashlib.sha256(data).hexdigest() != model.sha256:
        raise ValueError(f"{model.kind} {model.version}: the stored checkpoint does not match its sha256")
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return path


def describe(row: ModelVersion) -> RegisteredModel:
    """The row as the CLI shows it."""
    card = ModelCard.of(row.card)
    calibration = card.calibration or Calibration()
    return RegisteredModel(
        id=str(row.id),
        kind=row.kind,
        version=row.version,
        sha256=row.sha256,
        status=row.status,
        weights=card.weights,
        threshold=row.threshold,
        temperature=row.temperature,
        target_sensitivity=calibration.target_sensitivity,
        rule_out_threshold=calibration.rule_out_threshold,
        rule_out_sensitivity=calibration.rule_out_sensitivity,
        metrics=row.metrics,
        training_data=card.training_data,
        created_at=_iso(row.created_at),
        activated_at=_iso(row.activated_at),
    )


def get_model(session: Session, model_id: uuid.UUID | str) -> ModelVersion | None:
    """The row with this id (any kind), or None; an id that is not a UUID is None too."""
    try:
        ident = model_id if isinstance(model_id, uuid.UUID) else uuid.UUID(str(model_id))
    except ValueError:
        return None
    return session.get(ModelVersion, ident)


# ------------------------------------------------------------------ stored evaluations (issue 24)


class StoredEvaluation(BaseModel):
    """An ``evaluate`` report stored against a registered model: one per evaluation set (the
    latest run on a set replaces the earlier one), read by the acceptance check and the card."""

    evaluation_set: EvaluationSet
    stored_at: str  # ISO 8601, UTC
    report: EvaluationReport


class NotStorable(ValueError):
    pass


def store_evaluation(session: Session, model_id: uuid.UUID | str, report: EvaluationReport) -> StoredEvaluation:
    """Store ``report`` on the registered model it evaluated, under its evaluation set's sha256
    (replacing an earlier report on the same set). Refused (``NotStorable``) for a report
    without metrics (predictions only) or without the set's identity, and for one whose
    provenance names another registry row or other weights."""
    row = get_model(session, model_id)
    if row is None:
        raise ModelNotFound(f"no registered model {model_id}")
    if report.overall is None or report.evaluation_set is None:
        raise NotStorable("only a labelled evaluation with its evaluation set's identity can be stored")
    checkpoint = getattr(report.model, row.kind, None) if report.model is not None else None
    if checkpoint is None or checkpoint.registry_id != str(row.id) or checkpoint.sha256 != row.sha256:
        raise NotStorable(f"the report does not describe {row.kind} {row.version} ({row.id})")
    stored = StoredEvaluation(evaluation_set=report.evaluation_set, stored_at=iso(utcnow()), report=report)
    evaluations = dict(row.evaluations or {})
    evaluations[report.evaluation_set.sha256] = {
        "evaluation_set": stored.evaluation_set.model_dump(mode="json"),
        "stored_at": stored.stored_at,
        "report": report.as_json(),
    }
    row.evaluations = evaluations  # a new dict: SQLAlchemy sees the change
    session.flush()
    return stored


def stored_evaluations(row: ModelVersion) -> list[StoredEvaluation]:
    """Every evaluation stored against ``row``, oldest first."""
    found = [StoredEvaluation.model_validate(value) for value in (row.evaluations or {}).values()]
    return sorted(found, key=lambda stored: stored.stored_at)


def evaluation_on(row: ModelVersion, sha256: str) -> StoredEvaluation | None:
    """The evaluation stored against ``row`` on the evaluation set with this sha256, if any."""
    value = (row.evaluations or {}).get(sha256)
    return StoredEvaluation.model_validate(value) if value is not None else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


# ------------------------------------------------------------------------------ reprocessing


class NotReprocessable(ValueError):
    pass


REPROCESSABLE = frozenset({"succeeded", "rejected", "failed"})


def reprocess(session: Session, store: ObjectStore, celery: Celery, original: Analysis) -> Analysis:
    """A new queued analysis of ``original``'s image and inputs, linked by ``reprocessed_from``;
    it runs on the models active when a worker picks it up. The original and its result stay
    as they were, so both results are kept. The image is copied under the new analysis, so
    purging one never takes the other's image. Enqueued after the commit."""
    from shared.clock import utcnow
    from shared.db import after_commit
    from shared.jobs import enqueue_analysis

    if original.status not in REPROCESSABLE or not original.image_sha256:
        raise NotReprocessable(
            f"analysis {original.id} is {original.status}; only a finished analysis (succeeded, rejected "
            "or failed) whose image was stored can be reprocessed"
        )
    analysis_id = uuid.uuid4()
    extension = original.image_key.rsplit(".", 1)[-1] if "." in original.image_key.rsplit("/", 1)[-1] else "jpg"
    key = image_key(original.tenant_id, analysis_id, extension)
    store.put(IMAGES, key, store.get(IMAGES, original.image_key), original.image_content_type)
    now = utcnow()
    analysis = Analysis(
        id=analysis_id, tenant_id=original.tenant_id, batch_id=None, external_id=original.external_id,
        priority="bulk", status="queued", attempt=0, age=original.age, sex=original.sex, site=original.site,
        pixel_spacing_mm=original.pixel_spacing_mm, patient_reference=original.patient_reference,
        encounter_reference=original.encounter_reference, image_key=key, image_sha256=original.image_sha256,
        image_content_type=original.image_content_type, image_width=original.image_width,
        image_height=original.image_height, created_at=now, updated_at=now, enqueued_at=now,
        reprocessed_from=original.id, dicom_source=original.dicom_source,
        traceparent=current_traceparent(),  # the rerun request's trace (issue 25)
    )
    session.add(analysis)
    session.flush()
    after_commit(session, lambda: enqueue_analysis(celery, analysis_id, "bulk"))
    return analysis
