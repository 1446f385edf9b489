"""What a drift triggers (issue 24; docs/MONITORING.md), and the tenant's safety mode.

``check_drift`` runs every ``DRIFT_CHECK_SECONDS`` (the beat task
``dermasentinel.maintenance.drift_check``, on a cpu worker). For each (tenant, model version)
with a final result lately (and each with an open episode or a series in this process), it
measures the window (``shared.monitoring``), sets the Prometheus gauges, and where a measure
crosses its threshold opens a **drift episode**: in one transaction, the episode row (at most
one open per tenant and version: a partial unique index), one ``model.drift_detected`` outbox
event (dedupe key ``model.drift_detected:<tenant>:<version>:<episode>``; webhooks and every
other destination of the outbox get it) and the audit rows (actor ``system``):
``drift.detect``, and with ``DRIFT_ACTION=review_all`` ``safety_mode.set``.

While an episode whose action is ``review_all`` is open, the tenant is in **safety mode**: the
GPU worker, when it records a result of that tenant, turns its disposition into
``clinician_review`` with the reason ``drift`` (``under_safety_mode``; the flag is read per
tenant at most every ``SAFETY_MODE_CACHE_SECONDS`` per process). ``clear`` (`dermasentinel
monitor clear`) closes open episodes, audited as ``drift.clear`` and ``safety_mode.clear``
(actor ``operator:<user>``); the cleared version's window starts afresh from that moment.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from shared import audit, monitoring
from shared.clinical.disposition import CLINICIAN_REVIEW, DispositionDecision, under_drift
from shared.clock import iso, utcnow
from shared.context import AppContext
from shared.db import session_scope
from shared.events import record_event
from shared.lifecycle.views import api_base
from shared.metrics import (
    DRIFT_DETECTED,
    DRIFT_EVENTS,
    DRIFT_KS,
    DRIFT_PSI,
    DRIFT_SKIN_GROUP_PSI,
    MONITOR_FAILURE_RATE,
    MONITOR_GAUGES,
    MONITOR_REJECTION_RATE,
    MONITOR_WINDOW_RESULTS,
    SAFETY_MODE,
)
from shared.schemas.analyses import AnalysisResult
from shared.schemas.monitoring import DriftMeasures, ModelDriftData, MonitoringLinks
from shared.tables import DriftEpisode, Tenant

log = logging.getLogger(__name__)

DRIFT_EVENT = "model.drift_detected"
SYSTEM = "system"
# Audit actions (``<resource>.<verb>``).
DETECT = "drift.detect"
CLEAR = "drift.clear"
SAFETY_SET = "safety_mode.set"
SAFETY_CLEAR = "safety_mode.clear"
# A (tenant, version) is checked when its newest final result is at most this old (or at least
# three check intervals, if longer); an idle one's window cannot have changed.
MIN_LOOKBACK = timedelta(hours=1)


@dataclass(frozen=True)
class Pair:
    tenant_id: uuid.UUID
    tenant: str  # the tenant's name: the gauges' label, what `monitor clear --tenant` takes
    model_version: str


@dataclass
class CheckReport:
    checked: int = 0
    opened: list[uuid.UUID] = field(default_factory=list)  # episodes opened by this check
    failed: int = 0


# The pairs this process has series for, with their newest result (most recent first wins
# when there are more than MONITOR_MAX_SERIES).
_SERIES: dict[Pair, datetime] = {}
_SERIES_LOCK = threading.Lock()


def check_drift(context: AppContext, *, now: datetime | None = None,
                tenant_ids: Sequence[uuid.UUID] | None = None) -> CheckReport:
    """Measure every recently active (tenant, version), set the gauges, and open an episode
    (event, audit, safety mode) where a window crosses a threshold and none is open."""
    settings = context.settings
    now = now or utcnow()
    report = CheckReport()
    with session_scope(context.session_factory) as session:
        pairs = _pairs_to_check(session, settings.drift_check_seconds, now, tenant_ids)
    for pair in pairs:
        try:
            with session_scope(context.session_factory) as session:
                opened = _check_pair(session, context, pair, now)
        except Exception:
            report.failed += 1
            log.exception("drift check of tenant %s, model %s failed; the next check tries again",
                          pair.tenant_id, pair.model_version)
            continue
        report.checked += 1
        if opened is not None:
            report.opened.append(opened)
    with session_scope(context.session_factory) as session:
        for tenant_id, name in {(p.tenant_id, p.tenant) for p in pairs}:
            SAFETY_MODE.labels(name).set(1.0 if monitoring.in_safety_mode(session, tenant_id) else 0.0)
    if report.opened or report.failed:
        log.info("drift check: %d pairs, %d episodes opened, %d failed", report.checked, len(report.opened),
                 report.failed)
    return report


def _pairs_to_check(session: Session, check_seconds: float, now: datetime,
                    tenant_ids: Sequence[uuid.UUID] | None) -> list[Pair]:
    """(tenant, version) pairs with a final result within the lookback, those with an open
    episode, and those this process already has series for; enabled tenants only."""
    lookback = now - max(MIN_LOOKBACK, timedelta(seconds=3 * check_seconds))
    query = select(Tenant.id, Tenant.name).where(Tenant.disabled_at.is_(None))
    if tenant_ids is not None:
        query = query.where(Tenant.id.in_(list(tenant_ids)))
    tenants: dict[uuid.UUID, str] = {row.id: row.name for row in session.execute(query)}
    found: dict[Pair, datetime] = {}
    for tenant_id, name in tenants.items():
        for version in monitoring.model_versions(session, tenant_id):
            last = monitoring.last_completed(session, tenant_id, version)
            if last is not None and last >= lookback:
                found[Pair(tenant_id, name, version)] = last
    episodes = session.execute(
        select(DriftEpisode.tenant_id, DriftEpisode.model_version).where(DriftEpisode.cleared_at.is_(None))
    ).all()
    with _SERIES_LOCK:
        for tenant_id, version in episodes:
            if tenant_id in tenants:
                found.setdefault(Pair(tenant_id, tenants[tenant_id], version), now)
        for pair, last in _SERIES.items():
            if pair.tenant_id in tenants:
                found.setdefault(pair, last)
    return list(found)


def _check_pair(session: Session, context: AppContext, pair: Pair, now: datetime) -> uuid.UUID | None:
    settings = context.settings
    window = monitoring.read_window(session, settings, pair.tenant_id, pair.model_version, now)
    reference = monitoring.reference_for(session, pair.model_version)
    measures = monitoring.drift_measures(settings, reference, window.probabilities, window.skin_groups)
    opened = None
    episode_open = monitoring.open_episode(session, pair.tenant_id, pair.model_version) is not None
    if measures.exceeded and not episode_open:
        weights = next((row.weights for row in window.rows if row.weights), None)
        opened = open_episode(session, context, pair, measures, weights, now)
        # None: another check opened it meanwhile.
        episode_open = True
    newest = max((row.completed_at for row in window.rows if row.completed_at is not None), default=now)
    _set_gauges(settings.monitor_max_series, pair, newest, measures, window, episode_open)
    return opened


def open_episode(session: Session, context: AppContext, pair: Pair, measures: DriftMeasures,
                 weights: str | None, now: datetime) -> uuid.UUID | None:
    """Open a drift episode for ``pair``, with its event and audit rows, in ``session``'s
    transaction; None when one is already open (another check got there first)."""
    settings = context.settings
    action = settings.drift_action
    episode_id = uuid.uuid4()
    inserted = session.execute(
        insert(DriftEpisode)
        .values(id=episode_id, tenant_id=pair.tenant_id, model_version=pair.model_version, opened_at=now,
                action=action, measures=measures.model_dump(mode="json"))
        .on_conflict_do_nothing(index_elements=["tenant_id", "model_version"], index_where=text("cleared_at IS NULL"))
        .returning(DriftEpisode.id)
    ).scalar_one_or_none()
    if inserted is None:
        return None
    safety = action == monitoring.REVIEW_ALL
    data = ModelDriftData(
        episode_id=episode_id,
        model_version=pair.model_version,
        weights=weights if weights in ("trained", "synthetic", "untrained") else None,
        detected_at=iso(now),
        action=action,
        safety_mode=safety,
        measures=measures,
        links=MonitoringLinks(monitoring=f"{api_base(settings)}/v1/monitoring"),
    )
    event_id = record_event(
        session, context.celery, tenant_id=pair.tenant_id, type=DRIFT_EVENT, data=data,
        dedupe_key=f"{DRIFT_EVENT}:{pair.tenant_id}:{pair.model_version}:{episode_id}",
    )
    session.execute(update(DriftEpisode).where(DriftEpisode.id == episode_id).values(event_id=event_id))
    detail = {"episode": str(episode_id), "action": action, "exceeded": list(measures.exceeded),
              "results": measures.results, "psi": measures.psi, "ks": measures.ks,
              "skin_group_psi": measures.skin_group_psi}
    entries = [audit.AuditEntry(pair.tenant_id, SYSTEM, DETECT, "model", pair.model_version, detail=detail)]
    if safety:
        entries.append(audit.AuditEntry(pair.tenant_id, SYSTEM, SAFETY_SET, "tenant", str(pair.tenant_id),
                                        detail={"episode": str(episode_id), "model_version": pair.model_version}))
    audit.append_many(session, entries)
    DRIFT_EVENTS.labels(action).inc()
    log.warning("drift detected: tenant %s, model %s (%s); action %s", pair.tenant_id, pair.model_version,
                ", ".join(measures.exceeded), action)
    return episode_id


@dataclass(frozen=True)
class Cleared:
    episode_id: uuid.UUID
    tenant_id: uuid.UUID
    model_version: str
    action: str


def clear(session: Session, *, actor: str, tenant_id: uuid.UUID | None = None, model_version: str | None = None,
          now: datetime | None = None) -> list[Cleared]:
    """Close the open drift episodes (of one tenant, one version, or all), ending safety mode
    where it came from them; each is audited on its tenant's chain (``drift.clear``, and
    ``safety_mode.clear`` for a tenant whose safety mode ends). The cleared versions' windows
    start afresh from ``now``."""
    now = now or utcnow()
    statement = (
        update(DriftEpisode).where(DriftEpisode.cleared_at.is_(None))
        .values(cleared_at=now, cleared_by=actor[:200])
        .returning(DriftEpisode.id, DriftEpisode.tenant_id, DriftEpisode.model_version, DriftEpisode.action)
    )
    if tenant_id is not None:
        statement = statement.where(DriftEpisode.tenant_id == tenant_id)
    if model_version is not None:
        statement = statement.where(DriftEpisode.model_version == model_version)
    cleared = [Cleared(*row) for row in session.execute(statement.execution_options(synchronize_session=False))]
    entries = [
        audit.AuditEntry(c.tenant_id, actor, CLEAR, "model", c.model_version,
                         detail={"episode": str(c.episode_id), "action": c.action})
        for c in cleared
    ]
    ended = sorted({c.tenant_id for c in cleared if c.action == monitoring.REVIEW_ALL}, key=str)
    for tenant in ended:
        if not monitoring.in_safety_mode(session, tenant):
            entries.append(audit.AuditEntry(tenant, actor, SAFETY_CLEAR, "tenant", str(tenant),
                                            detail={"episodes": [str(c.episode_id) for c in cleared
                                                                 if c.tenant_id == tenant]}))
    if entries:
        audit.append_many(session, entries)
    return cleared


# ---------------------------------------------------------------- safety mode in the worker


def under_safety_mode(result: AnalysisResult) -> AnalysisResult:
    """``result`` as recorded while its tenant is in safety mode (``disposition.under_drift``)."""
    decided = under_drift(DispositionDecision(result.disposition or CLINICIAN_REVIEW, list(result.disposition_reasons),
                                              result.safety_netting))
    return result.model_copy(update={
        "disposition": decided.disposition, "disposition_reasons": decided.reasons, "safety_netting": None,
    })


class SafetyModeCache:
    """Whether a tenant is in safety mode, read from Postgres at most every ``ttl`` seconds per
    tenant (one indexed query on a tiny table); thread-safe (the engine's finish lane records
    outcomes from a thread pool)."""

    MAX_TENANTS = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[uuid.UUID, tuple[float, bool]] = {}

    def active(self, session_factory: sessionmaker[Session], tenant_id: uuid.UUID, ttl: float) -> bool:
        now = self._clock()
        with self._lock:
            hit = self._seen.get(tenant_id)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        with session_scope(session_factory) as session:
            value = monitoring.in_safety_mode(session, tenant_id)
        with self._lock:
            if len(self._seen) >= self.MAX_TENANTS:
                self._seen.clear()
            self._seen[tenant_id] = (now, value)
        return value


# ---------------------------------------------------------------- gauges


def _set_gauges(max_series: int, pair: Pair, newest: datetime, measures: DriftMeasures,
                window: monitoring.Window, episode_open: bool) -> None:
    labels = (pair.tenant, pair.model_version)
    with _SERIES_LOCK:
        _SERIES[pair] = newest
        while len(_SERIES) > max_series:
            oldest = min(_SERIES, key=lambda p: _SERIES[p])
            del _SERIES[oldest]
            _forget(oldest)
        if pair not in _SERIES:  # it was the oldest itself
            return
    # NaN where there is nothing to measure (no reference, an empty window).
    for gauge, value in ((DRIFT_PSI, measures.psi), (DRIFT_KS, measures.ks),
                         (DRIFT_SKIN_GROUP_PSI, measures.skin_group_psi),
                         (MONITOR_REJECTION_RATE, window.rate("rejected")),
                         (MONITOR_FAILURE_RATE, window.rate("failed"))):
        gauge.labels(*labels).set(math.nan if value is None else value)
    MONITOR_WINDOW_RESULTS.labels(*labels).set(len(window.rows))
    DRIFT_DETECTED.labels(*labels).set(1.0 if episode_open else 0.0)


def _forget(pair: Pair) -> None:
    """Drop a pair's series. In a worker's multiprocess files a value cannot be removed
    (prometheus_client keeps it until the worker restarts): there the cap bounds what this
    process sets, not what its files remember."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    for gauge in MONITOR_GAUGES:
        try:
            gauge.remove(pair.tenant, pair.model_version)
        except KeyError:
            pass
