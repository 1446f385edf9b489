"""Shadow and canary rollout of a candidate model (issue 24; docs/MODELS.md).

- A **shadow** of a candidate runs it on a share of live jobs *after* the active model's result
  is stored (``worker/shadow.py``), never changing that result, and skipped while the GPU lane
  is behind. Its outputs are kept apart (``shadow_outputs``) beside the active model's; ``compare``
  sums up how far the two agree.
- A **canary** answers a share of new jobs itself: the GPU worker sends an analysis to it when
  the stable hash of its id falls below the canary's fraction (``selected``), and the result
  records the canary's version (``model.version``, ``model.rollout = "canary"``). Each drift
  check judges it against its incumbent over the results since it began (``judge``) and rolls
  it back when it departs beyond the declared bounds (settings ``CANARY_*``); ``promote`` makes it
  the active model.

All rollout SQL lives here; the CLI and the workers call these functions.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydantic import BaseModel
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared import audit, model_registry, monitoring
from shared.clinical.rules import SKIN_GROUPS
from shared.clock import utcnow
from shared.config import Settings
from shared.tables import (
    FINAL_STATUSES_SQL,
    MODEL_VERSION_SQL,
    ModelRollout,
    ModelVersion,
    RolloutMode,
    ShadowOutput,
)

log = logging.getLogger(__name__)

SHADOW, CANARY = RolloutMode.shadow.value, RolloutMode.canary.value
# Audit actions (``<resource>.<verb>``), on the system chain.
SHADOW_START, SHADOW_STOP = "model.shadow_start", "model.shadow_stop"
CANARY_START, CANARY_STOP = "model.canary_start", "model.canary_stop"
CANARY_ROLLBACK, PROMOTE = "model.canary_rollback", "model.promote"
ROLLOUT_KINDS = ("fusion",)  # what makes the diagnosis: what a shadow or canary is compared on
NOT_SCORED = "accepted"  # the rejection mix's category for results that were not rejected
SYSTEM = "system"  # the actor of an automatic rollback


class RolloutError(ValueError):
    pass


# ---------------------------------------------------------------- selection


def share_of(analysis_id: uuid.UUID, salt: str) -> float:
    """A stable number in [0, 1) for this analysis: the first 8 bytes of sha256(salt + id).
    The same analysis always gets the same number (a retried job stays on its side); another
    salt gives an independent draw (the shadow's choice does not follow the canary's)."""
    digest = hashlib.sha256(salt.encode() + analysis_id.bytes).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def selected(analysis_id: uuid.UUID, fraction: float, salt: str) -> bool:
    """Whether the analysis falls in the ``fraction`` share chosen by ``salt``'s hash."""
    return fraction > 0 and share_of(analysis_id, salt) < fraction


# ---------------------------------------------------------------- rollouts


@dataclass(frozen=True)
class OpenRollout:
    """An open shadow or canary as a worker reads it (plain values, safe across threads)."""

    id: uuid.UUID
    mode: str
    fraction: float
    model: model_registry.ActiveModel


def open_rollouts(session: Session, kind: str | None = None) -> list[ModelRollout]:
    query = select(ModelRollout).where(ModelRollout.ended_at.is_(None)).order_by(ModelRollout.started_at)
    if kind is not None:
        query = query.where(ModelRollout.kind == kind)
    return list(session.scalars(query))


def open_for_workers(session: Session) -> dict[str, OpenRollout]:
    """The open rollouts of fusion by mode, with their models (what the GPU worker's switch reads)."""
    found: dict[str, OpenRollout] = {}
    for rollout in open_rollouts(session, "fusion"):
        row = session.get(ModelVersion, rollout.model_id)
        if row is not None:
            found[rollout.mode] = OpenRollout(rollout.id, rollout.mode, rollout.fraction,
                                              model_registry.ActiveModel.of(row))
    return found


def _check_rollout_kind(kind: str) -> None:
    if kind not in ROLLOUT_KINDS:
        raise RolloutError(f"shadow and canary apply to {', '.join(ROLLOUT_KINDS)} models (the classifier whose "
                           f"probability is compared), not {kind}")


def _open(session: Session, kind: str, mode: str) -> ModelRollout | None:
    return session.scalar(select(ModelRollout).where(
        ModelRollout.kind == kind, ModelRollout.mode == mode, ModelRollout.ended_at.is_(None)).with_for_update())


def _end(rollout: ModelRollout, reason: str, actor: str, verdict: dict | None = None) -> None:
    rollout.ended_at = utcnow()
    rollout.ended_reason = reason
    rollout.ended_by = actor
    if verdict is not None:
        rollout.verdict = verdict


def _audit(session: Session, actor: str, action: str, model_id: uuid.UUID, **detail: object) -> None:
    audit.append(session, audit.AuditEntry(None, actor, action, "model", str(model_id),
                                           detail={k: v for k, v in detail.items() if v is not None}))


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise RolloutError(f"the fraction must be above 0 and at most 1, not {fraction:g}")


def start_shadow(session: Session, kind: str, ref: str, fraction: float, actor: str) -> tuple[ModelRollout, str | None]:
    """Shadow model ``ref`` on ``fraction`` of live jobs (replacing any open shadow of ``kind``).
    Returns (the rollout, the version it replaced or None). Audited."""
    _check_rollout_kind(kind)
    _check_fraction(fraction)
    target = model_registry.find_model(session, kind, ref)
    if target.status == "active":
        raise RolloutError(f"{kind} {target.version} is the active model; shadow a candidate against it")
    replaced = _open(session, kind, SHADOW)
    replaced_version = None
    if replaced is not None:
        replaced_version = _version_of(session, replaced.model_id)
        _end(replaced, "replaced", actor)
        _audit(session, actor, SHADOW_STOP, replaced.model_id, kind=kind, version=replaced_version,
               reason="replaced", by=target.version)
        session.flush()
    rollout = ModelRollout(kind=kind, mode=SHADOW, model_id=target.id, fraction=fraction, started_by=actor)
    session.add(rollout)
    session.flush()
    _audit(session, actor, SHADOW_START, target.id, kind=kind, version=target.version, fraction=fraction)
    return rollout, replaced_version


def stop(session: Session, kind: str, mode: str, actor: str) -> ModelRollout:
    """End the open shadow or canary of ``kind`` (reason ``stopped``). Audited."""
    rollout = _open(session, kind, mode)
    if rollout is None:
        raise RolloutError(f"no {mode} of a {kind} model is running")
    _end(rollout, "stopped", actor)
    _audit(session, actor, SHADOW_STOP if mode == SHADOW else CANARY_STOP, rollout.model_id, kind=kind,
           version=_version_of(session, rollout.model_id), reason="stopped")
    session.flush()
    return rollout


def start_canary(session: Session, kind: str, ref: str, percent: float, actor: str,
                 acceptance: dict | None = None) -> ModelRollout:
    """Send ``percent`` % of new jobs of ``kind`` to model ``ref`` (replacing an open canary's
    share when it is the same model). Needs an active incumbent to judge it against. Audited,
    with the acceptance check's detail when one was made."""
    _check_rollout_kind(kind)
    _check_fraction(percent / 100.0)
    model_registry._lock_kind(session, kind)
    target = model_registry.find_model(session, kind, ref)
    incumbent = model_registry._active_row(session, kind)
    if incumbent is None:
        raise RolloutError(f"no {kind} model is active, so a canary has nothing to be judged against; "
                           f"activate {target.version} outright (without --canary)")
    if incumbent.id == target.id:
        raise RolloutError(f"{kind} {target.version} is already the active model")
    existing = _open(session, kind, CANARY)
    if existing is not None:
        if existing.model_id != target.id:
            raise RolloutError(f"a canary of {kind} {_version_of(session, existing.model_id)} is running; promote "
                               "it or stop it (`--canary 0`) first")
        existing.fraction = percent / 100.0
        _audit(session, actor, CANARY_START, target.id, kind=kind, version=target.version, percent=percent,
               incumbent=incumbent.version, changed=True, **(acceptance or {}))
        session.flush()
        return existing
    rollout = ModelRollout(kind=kind, mode=CANARY, model_id=target.id, incumbent_id=incumbent.id,
                           fraction=percent / 100.0, started_by=actor)
    session.add(rollout)
    session.flush()
    _audit(session, actor, CANARY_START, target.id, kind=kind, version=target.version, percent=percent,
           incumbent=incumbent.version, **(acceptance or {}))
    return rollout


def promote(session: Session, kind: str, ref: str, actor: str) -> tuple[ModelVersion, ModelVersion | None]:
    """Finish the canary of model ``ref``: it becomes the active model (100 % of jobs) and the
    incumbent is retired. Returns (now active, retired). Audited (``model.promote``)."""
    _check_rollout_kind(kind)
    target = model_registry.find_model(session, kind, ref)
    rollout = _open(session, kind, CANARY)
    if rollout is None or rollout.model_id != target.id:
        raise RolloutError(f"no canary of {kind} {target.version} is running; start one with "
                           f"`dermasentinel models activate {kind} {target.version} --canary PERCENT`")
    active, previous = model_registry.activate(session, kind, str(target.id))
    _end(rollout, "promoted", actor)
    _audit(session, actor, PROMOTE, active.id, kind=kind, version=active.version,
           retired=previous.version if previous is not None else None, percent=rollout.fraction * 100)
    session.flush()
    return active, previous


def _version_of(session: Session, model_id: uuid.UUID) -> str | None:
    return session.scalar(select(ModelVersion.version).where(ModelVersion.id == model_id))


# ---------------------------------------------------------------- shadow outputs


@dataclass(frozen=True)
class Said:
    """One model's outcome of one analysis, as the shadow lane compares them."""

    version: str | None
    status: str  # succeeded | rejected | failed
    probability: float | None = None
    disposition: str | None = None
    rejection: str | None = None
    skin_group: str | None = None


def store_shadow_output(session: Session, *, analysis_id: uuid.UUID, tenant_id: uuid.UUID, model_id: uuid.UUID,
                        shadow: Said, active: Said) -> bool:
    """Keep the shadow's outcome beside the active model's (once per analysis and model).
    Returns whether a row was written."""
    result = session.execute(
        insert(ShadowOutput).values(
            analysis_id=analysis_id, tenant_id=tenant_id, model_id=model_id, model_version=shadow.version or "",
            status=shadow.status, probability=shadow.probability, disposition=shadow.disposition,
            rejection=shadow.rejection, active_version=active.version, active_status=active.status,
            active_probability=active.probability, active_disposition=active.disposition,
            skin_group=active.skin_group,
        ).on_conflict_do_nothing(constraint="uq_shadow_outputs_analysis_model")
        .returning(ShadowOutput.id)
    )
    return result.scalar_one_or_none() is not None


def shadow_outputs(session: Session, model_id: uuid.UUID, limit: int = 100_000) -> list[ShadowOutput]:
    return list(session.scalars(select(ShadowOutput).where(ShadowOutput.model_id == model_id)
                                .order_by(ShadowOutput.created_at.desc()).limit(limit)))


# ---------------------------------------------------------------- compare


class Agreement(BaseModel):
    """How far a shadowed candidate agrees with the active model on the same analyses."""

    cases: int  # shadowed analyses
    scored: int  # both gave a probability
    abs_delta_p50: float | None
    abs_delta_p95: float | None
    abs_delta_max: float | None
    mean_delta: float | None  # candidate minus active: its sign says which way the candidate leans
    disposition_agreement: float | None  # share of scored cases with the same disposition
    dispositions_agreeing: int
    outcome_agreement: float | None  # share of cases where both scored, or both rejected/failed alike


class Comparison(BaseModel):
    model_id: str
    version: str
    overall: Agreement
    by_skin_group: dict[str, Agreement]


def agreement(pairs: Sequence[tuple[Said, Said]]) -> Agreement:
    """Agreement statistics of (shadow, active) pairs: |Δp| median, 95th percentile and maximum
    over the cases both scored, disposition agreement among them, and outcome agreement."""
    scored = [(s.probability, a.probability, s.disposition == a.disposition) for s, a in pairs
              if s.probability is not None and a.probability is not None]
    deltas = np.asarray([s - a for s, a, _ in scored], dtype=float)
    magnitudes = np.abs(deltas)
    same_disposition = sum(1 for _, _, same in scored if same)
    same_outcome = sum(1 for s, a in pairs if s.status == a.status and s.rejection == a.rejection)
    return Agreement(
        cases=len(pairs),
        scored=len(scored),
        abs_delta_p50=float(np.quantile(magnitudes, 0.5)) if scored else None,
        abs_delta_p95=float(np.quantile(magnitudes, 0.95)) if scored else None,
        abs_delta_max=float(magnitudes.max()) if scored else None,
        mean_delta=float(deltas.mean()) if scored else None,
        disposition_agreement=same_disposition / len(scored) if scored else None,
        dispositions_agreeing=same_disposition,
        outcome_agreement=same_outcome / len(pairs) if pairs else None,
    )


def compare_pairs(pairs: Sequence[tuple[Said, Said]], model_id: str, version: str) -> Comparison:
    """The agreement overall and per ITA group (the active result's; ``unknown`` when it had none)."""
    groups: dict[str, list[tuple[Said, Said]]] = {}
    for shadow, active in pairs:
        groups.setdefault(active.skin_group or "unknown", []).append((shadow, active))
    order = [g for g in SKIN_GROUPS if g in groups] + sorted(g for g in groups if g not in SKIN_GROUPS)
    return Comparison(model_id=model_id, version=version, overall=agreement(pairs),
                      by_skin_group={group: agreement(groups[group]) for group in order})


def compare(session: Session, kind: str, ref: str) -> Comparison:
    """``dermasentinel models compare``: the shadowed cases of model ``ref``."""
    target = model_registry.find_model(session, kind, ref)
    pairs = [
        (Said(row.model_version, row.status, row.probability, row.disposition, row.rejection, row.skin_group),
         Said(row.active_version, row.active_status, row.active_probability, row.active_disposition, None,
              row.skin_group))
        for row in shadow_outputs(session, target.id)
    ]
    return compare_pairs(pairs, str(target.id), target.version)


# ---------------------------------------------------------------- canary verdict


class CanaryBounds(BaseModel):
    min_results: int
    max_failure_rate_increase: float
    max_rejection_psi: float
    max_psi: float
    max_ks: float

    @classmethod
    def of(cls, settings: Settings) -> CanaryBounds:
        return cls(min_results=settings.canary_min_results,
                   max_failure_rate_increase=settings.canary_max_failure_rate_increase,
                   max_rejection_psi=settings.canary_max_rejection_psi, max_psi=settings.canary_max_psi,
                   max_ks=settings.canary_max_ks)


@dataclass(frozen=True)
class Window:
    """One side's final results since the canary began: statuses, rejection codes, probabilities."""

    statuses: Sequence[str]
    rejections: Sequence[str | None]
    probabilities: Sequence[float]

    @property
    def failure_rate(self) -> float:
        return sum(1 for s in self.statuses if s == "failed") / len(self.statuses) if self.statuses else 0.0

    def rejection_mix(self) -> Counter[str]:
        """Finished jobs that were not failures: scored (``accepted``) or rejected, by code."""
        return Counter(
            (code or "unknown") if status == "rejected" else NOT_SCORED
            for status, code in zip(self.statuses, self.rejections, strict=True) if status != "failed"
        )


class CanaryVerdict(BaseModel):
    decided: bool  # enough results on both sides to judge
    roll_back: bool
    reasons: list[str]  # the bounds crossed, in words
    canary_results: int
    incumbent_results: int
    failure_rate_increase: float | None = None
    rejection_psi: float | None = None
    probability_psi: float | None = None
    probability_ks: float | None = None
    bounds: CanaryBounds


def judge(canary: Window, incumbent: Window, bounds: CanaryBounds) -> CanaryVerdict:
    """Whether the canary departs from its incumbent beyond ``bounds``: failure rate higher by
    more than allowed, rejection mix PSI, or the PSI / KS statistic of its probabilities against
    the incumbent's (the incumbent's window as the reference distribution, as drift uses a
    model's evaluation). Undecided until both have ``min_results`` final results."""
    base = {"canary_results": len(canary.statuses), "incumbent_results": len(incumbent.statuses), "bounds": bounds}
    if min(len(canary.statuses), len(incumbent.statuses)) < bounds.min_results:
        return CanaryVerdict(decided=False, roll_back=False, reasons=[], **base)
    reasons = []
    increase = canary.failure_rate - incumbent.failure_rate
    if increase > bounds.max_failure_rate_increase:
        reasons.append(f"failure rate {canary.failure_rate:.3f} vs the incumbent's {incumbent.failure_rate:.3f} "
                       f"(at most +{bounds.max_failure_rate_increase:g})")
    incumbent_mix, canary_mix = incumbent.rejection_mix(), canary.rejection_mix()
    categories = sorted(set(incumbent_mix) | set(canary_mix))
    rejection_psi = monitoring.mix_psi(incumbent_mix, canary_mix, categories)
    if rejection_psi is not None and rejection_psi > bounds.max_rejection_psi:
        reasons.append(f"rejection mix PSI {rejection_psi:.3f} (at most {bounds.max_rejection_psi:g})")
    psi = ks = None
    if len(canary.probabilities) >= bounds.min_results and len(incumbent.probabilities) >= bounds.min_results:
        reference = monitoring.reference_from(incumbent.probabilities, source="evaluation")
        psi = monitoring.probability_psi(reference, canary.probabilities)
        ks = monitoring.ks_statistic(reference, canary.probabilities)
        if psi > bounds.max_psi:
            reasons.append(f"probability PSI {psi:.3f} (at most {bounds.max_psi:g})")
        if ks > bounds.max_ks:
            reasons.append(f"probability KS {ks:.3f} (at most {bounds.max_ks:g})")
    return CanaryVerdict(decided=True, roll_back=bool(reasons), reasons=reasons, failure_rate_increase=increase,
                         rejection_psi=rejection_psi, probability_psi=psi, probability_ks=ks, **base)


def read_window(session: Session, version: str, since: datetime, limit: int) -> Window:
    """The newest ``limit`` final results of ``version`` completed since ``since`` (all tenants)."""
    rows = session.execute(
        text(f"SELECT status, rejection ->> 'code', probability FROM analyses "
             f"WHERE status IN {FINAL_STATUSES_SQL} AND ({MODEL_VERSION_SQL}) = :version AND completed_at >= :since "
             "ORDER BY completed_at DESC LIMIT :limit"),
        {"version": version, "since": since, "limit": limit},
    ).all()
    return Window(statuses=[r[0] for r in rows], rejections=[r[1] for r in rows],
                  probabilities=[float(r[2]) for r in rows if r[0] == "succeeded" and r[2] is not None])


def check_canaries(session: Session, settings: Settings) -> list[CanaryVerdict]:
    """Judge every open canary; roll back (end it, audit ``model.canary_rollback`` by ``system``,
    log a warning) each that departs beyond the bounds. Returns the verdicts of the rolled back."""
    rolled_back = []
    bounds = CanaryBounds.of(settings)
    for rollout in [r for r in open_rollouts(session) if r.mode == CANARY]:
        canary_version = _version_of(session, rollout.model_id)
        incumbent_version = _version_of(session, rollout.incumbent_id) if rollout.incumbent_id else None
        if canary_version is None or incumbent_version is None:
            continue
        verdict = judge(read_window(session, canary_version, rollout.started_at, settings.canary_window),
                        read_window(session, incumbent_version, rollout.started_at, settings.canary_window), bounds)
        if not verdict.roll_back:
            continue
        locked = _open(session, rollout.kind, CANARY)
        if locked is None or locked.id != rollout.id:  # promoted or stopped meanwhile
            continue
        _end(locked, "rolled_back", SYSTEM, verdict.model_dump(mode="json"))
        _audit(session, SYSTEM, CANARY_ROLLBACK, rollout.model_id, kind=rollout.kind, version=canary_version,
               incumbent=incumbent_version, reasons=verdict.reasons)
        session.flush()
        log.warning("models: canary %s %s rolled back to %s: %s", rollout.kind, canary_version, incumbent_version,
                    "; ".join(verdict.reasons))
        rolled_back.append(verdict)
    return rolled_back
