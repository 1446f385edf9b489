"""Monitoring a model in service (issue 24; docs/MONITORING.md): per tenant and model version,
over a rolling window of its newest final results, what the model sees and says against what
it said when it was evaluated.

- The **reference** of a model version: the quantiles of its probabilities (101 points: an
  equal-frequency histogram), its skin-group mix and its rejections, recorded by
  ``dermasentinel evaluate`` (``model_references``), else the validation fold's quantiles that
  training wrote into the Fusion card (``calibration.reference``). A version without one is
  not judged for drift (``no_reference``): a baseline taken from its own first window would
  call whatever it saw first normal, a shifted stream included.
- The **window** of a (tenant, version): its newest ``MONITOR_WINDOW`` final results
  (succeeded, rejected, failed), none older than ``MONITOR_WINDOW_HOURS`` nor than the last
  time an operator cleared that version's drift (clearing starts a fresh window). Read
  backwards from ``ix_analyses_monitor`` with a LIMIT: a narrow projection of at most
  ``MONITOR_WINDOW`` rows, summed up here.
- **Drift measures**: the population stability index (PSI) of the probabilities over the
  reference's deciles, their Kolmogorov–Smirnov statistic against the reference's
  distribution (piecewise linear between its percentiles), and the PSI of the skin-group mix
  against the reference's mix. A window with at least ``DRIFT_MIN_RESULTS`` scored results
  crosses when any is above its threshold (``DRIFT_PSI_THRESHOLD``, ``DRIFT_KS_THRESHOLD``).
- **Mixes and rates**: rejections by code, failures, skin groups, sex, site, age bands and
  shown dispositions (the generated column).
- **Confirmed outcomes**: feedback with a histopathology (else a final diagnosis) read as
  melanoma or benign (``outcome_of``), against the model's diagnosis: sensitivity and
  specificity overall and per skin group, with counts and Wilson 95% intervals, over the
  analyses of the last ``MONITOR_OUTCOME_DAYS``.

What drift triggers (the event, safety mode) is ``shared.drift``.
"""

from __future__ import annotations

import math
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.clinical.disposition import DISPOSITIONS
from shared.clinical.rules import SKIN_GROUPS
from shared.clinical.vocabulary import SEXES, SITES
from shared.clock import iso, utcnow
from shared.config import Settings
from shared.schemas.monitoring import (
    REFERENCE_QUANTILES,
    DriftEpisodeOut,
    DriftMeasureName,
    DriftMeasures,
    DriftState,
    DriftThresholds,
    MetadataMix,
    ModelMonitoring,
    MonitoringOut,
    MonitoringWindow,
    OutcomeBlock,
    Outcomes,
    ProbabilityDistribution,
    ProbabilityStatus,
    Proportion,
    Reference,
    ReferenceInfo,
    ReferenceSource,
    SafetyMode,
    Share,
    SkinGroupMix,
    WindowInfo,
)
from shared.tables import FINAL_STATUSES_SQL, MODEL_VERSION_SQL, DriftEpisode, ModelReference, ModelVersion

# z for a two-sided 95% interval.
Z95 = 1.959963984540054
# A share of 0 in either distribution would make the PSI infinite: each share is floored here.
PSI_FLOOR = 1e-4
# PSI bins of the probabilities: the reference's deciles.
PSI_BINS = 10
AGE_BANDS = ("under 18", "18-39", "40-64", "65 and over", "unknown")
REVIEW_ALL = "review_all"
Outcome = Literal["melanoma", "benign"]


# ---------------------------------------------------------------- statistics


def wilson(count: int, total: int, z: float = Z95) -> Proportion:
    """``count`` of ``total`` with its Wilson score interval (95% by default)."""
    if total <= 0:
        return Proportion(value=None, count=count, total=total, ci95=None)
    p = count / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return Proportion(value=p, count=count, total=total, ci95=(max(0.0, centre - half), min(1.0, centre + half)))


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of ``actual`` shares against ``expected`` ones (same bins):
    sum of (a - e) * ln(a / e), each share floored at ``PSI_FLOOR``. 0.1 is commonly read as a
    moderate shift, 0.25 as a major one."""
    if len(expected) != len(actual):
        raise ValueError("expected and actual shares need the same bins")
    e = np.maximum(np.asarray(expected, dtype=float), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=float), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def reference_from(
    probabilities: Iterable[float],
    *,
    source: ReferenceSource,
    skin_groups: Iterable[str | None] | None = None,
    rejections: Iterable[str | None] | None = None,
    images: int | None = None,
    recorded_at: datetime | None = None,
) -> Reference:
    """The reference of a model from the probabilities it gave (and the skin groups and
    rejection codes it saw) on the data it was judged on."""
    values = np.asarray([float(p) for p in probabilities], dtype=float)
    if values.size == 0:
        raise ValueError("a reference needs at least one scored image")
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, REFERENCE_QUANTILES))
    return Reference(
        source=source,
        count=int(values.size),
        probability_quantiles=[float(q) for q in quantiles],
        skin_groups=dict(Counter(g for g in skin_groups if g)) if skin_groups is not None else None,
        rejections=dict(Counter(r for r in rejections if r)) if rejections is not None else None,
        images=images,
        recorded_at=iso(recorded_at or utcnow()),
    )


def _cdf_points(quantiles: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The reference's distribution function as points for ``np.interp``: linear between its
    percentiles, with a jump (from the lowest to the highest level) where several percentiles
    coincide (a point mass, e.g. many probabilities of exactly 0)."""
    q = np.asarray(quantiles, dtype=float)
    levels = np.linspace(0.0, 1.0, q.size)
    xs: list[float] = []
    fs: list[float] = []
    start = 0
    while start < q.size:
        end = start
        while end + 1 < q.size and q[end + 1] == q[start]:
            end += 1
        value = float(q[start])
        if end > start or start == 0:
            # A jump at this value: just below it the lower level, at it the upper one.
            below = float(np.nextafter(value, -np.inf))
            if not xs or below > xs[-1]:
                xs.append(below)
                fs.append(float(levels[start]) if start > 0 else 0.0)
        xs.append(value)
        fs.append(float(levels[end]))
        start = end + 1
    return np.asarray(xs), np.asarray(fs)


def _reference_cdf(reference: Reference, x: np.ndarray) -> np.ndarray:
    xp, fp = _cdf_points(reference.probability_quantiles)
    return np.interp(x, xp, fp, left=0.0, right=1.0)


def probability_shares(reference: Reference, probabilities: Sequence[float]) -> tuple[list[float], list[float]]:
    """The reference's and the window's shares in the reference's decile bins (right-closed;
    coinciding deciles merge)."""
    q = reference.probability_quantiles
    step = (REFERENCE_QUANTILES - 1) // PSI_BINS
    edges = np.unique(np.asarray([q[i * step] for i in range(1, PSI_BINS)], dtype=float))
    expected_cdf = np.concatenate([[0.0], _reference_cdf(reference, edges), [1.0]])
    values = np.sort(np.asarray(probabilities, dtype=float))
    below = np.searchsorted(values, edges, side="right") / max(values.size, 1)
    actual_cdf = np.concatenate([[0.0], below, [1.0]])
    return [float(v) for v in np.diff(expected_cdf)], [float(v) for v in np.diff(actual_cdf)]


def probability_psi(reference: Reference, probabilities: Sequence[float]) -> float:
    expected, actual = probability_shares(reference, probabilities)
    return psi(expected, actual)


def ks_statistic(reference: Reference, probabilities: Sequence[float]) -> float:
    """sup |F_window - F_reference|, both distribution functions compared at every jump of the
    window's (from either side), where the supremum lies."""
    values = np.sort(np.asarray(probabilities, dtype=float))
    n = values.size
    if n == 0:
        raise ValueError("the KS statistic needs at least one probability")
    after = np.searchsorted(values, values, side="right") / n
    before = np.searchsorted(values, values, side="left") / n
    ref_at = _reference_cdf(reference, values)
    ref_below = _reference_cdf(reference, np.nextafter(values, -np.inf))
    return float(max(np.max(np.abs(after - ref_at)), np.max(np.abs(before - ref_below))))


def mix_psi(expected_counts: Mapping[str, int], counts: Mapping[str, int], categories: Sequence[str]) -> float | None:
    """PSI of a categorical mix (e.g. skin groups) against the reference's; None when either is empty."""
    expected_total = sum(expected_counts.get(c, 0) for c in categories)
    total = sum(counts.get(c, 0) for c in categories)
    if expected_total == 0 or total == 0:
        return None
    return psi([expected_counts.get(c, 0) / expected_total for c in categories],
               [counts.get(c, 0) / total for c in categories])


# ---------------------------------------------------------------- confirmed outcomes

# "no evidence of melanoma", "negative for melanoma", "not a melanoma", "non-melanoma skin cancer"…
_NEGATED = re.compile(
    r"\b(?:no|not(?:\s+an?)?|without|negative\s+for|free\s+of|excluded?|ruled\s+out)\s+"
    r"(?:evidence\s+of\s+|signs?\s+of\s+)?(?:an?\s+)?(?:malignant\s+)?melanomas?\b"
    r"|\bnon[\s-]?melanoma\w*",
    re.IGNORECASE,
)


def outcome_of(final_diagnosis: str | None, histopathology: str | None) -> Outcome | None:
    """A confirmed outcome from clinician feedback: the histopathology when given, else the
    final diagnosis; ``melanoma`` when it names melanoma (in situ included) other than in a
    negation, ``benign`` for any other diagnosis; None when neither is given."""
    text_value = next((t.strip() for t in (histopathology, final_diagnosis) if t and t.strip()), None)
    if text_value is None:
        return None
    remaining = _NEGATED.sub(" ", text_value)
    return "melanoma" if re.search(r"melanoma", remaining, re.IGNORECASE) else "benign"


# ---------------------------------------------------------------- references


def record_reference(session: Session, model_version: str, reference: Reference, fusion_sha256: str | None) -> None:
    """Store (or replace) the reference of ``model_version`` (``evaluate --record-reference``)."""
    values = {"reference": reference.as_json(), "fusion_sha256": fusion_sha256, "recorded_at": utcnow()}
    session.execute(
        insert(ModelReference).values(model_version=model_version, **values)
        .on_conflict_do_update(index_elements=[ModelReference.model_version], set_=values)
    )


def reference_for(session: Session, model_version: str) -> Reference | None:
    """The version's reference: what ``evaluate`` recorded, else the validation fold's in its
    registered Fusion card; None when neither exists."""
    recorded = session.execute(
        select(ModelReference.reference).where(ModelReference.model_version == model_version)
    ).scalar_one_or_none()
    if recorded:
        return Reference.model_validate(recorded)
    from_card = session.execute(
        select(ModelVersion.card["calibration"]["reference"])
        .where(ModelVersion.kind == "fusion", ModelVersion.version == model_version)
    ).scalar_one_or_none()
    if from_card:
        return Reference.model_validate(from_card)
    return None


# ---------------------------------------------------------------- what is in the window

# The versions a tenant's final results name: a loose scan of ix_analyses_monitor, one index
# descent per version (never a read of every row).
_VERSIONS_SQL = text(f"""
WITH RECURSIVE versions AS (
    (SELECT {MODEL_VERSION_SQL} AS version FROM analyses
     WHERE tenant_id = :tenant AND status IN {FINAL_STATUSES_SQL} AND ({MODEL_VERSION_SQL}) IS NOT NULL
     ORDER BY {MODEL_VERSION_SQL} LIMIT 1)
    UNION ALL
    SELECT (SELECT {MODEL_VERSION_SQL} FROM analyses
            WHERE tenant_id = :tenant AND status IN {FINAL_STATUSES_SQL}
              AND ({MODEL_VERSION_SQL}) > versions.version
            ORDER BY {MODEL_VERSION_SQL} LIMIT 1)
    FROM versions WHERE versions.version IS NOT NULL
)
SELECT version FROM versions WHERE version IS NOT NULL
""")
_LAST_COMPLETED_SQL = text(f"""
SELECT completed_at FROM analyses
WHERE tenant_id = :tenant AND ({MODEL_VERSION_SQL}) = :version AND status IN {FINAL_STATUSES_SQL}
  AND completed_at IS NOT NULL
ORDER BY completed_at DESC LIMIT 1
""")
_WINDOW_SQL = text(f"""
SELECT status, probability, result -> 'equity' ->> 'skin_group' AS skin_group,
       rejection ->> 'code' AS rejection_code, sex, site, age, shown_disposition, weights_status, completed_at
FROM analyses
WHERE tenant_id = :tenant AND ({MODEL_VERSION_SQL}) = :version AND status IN {FINAL_STATUSES_SQL}
  AND completed_at >= :since
ORDER BY completed_at DESC
LIMIT :limit
""")
# The newest feedback with a diagnosis of each succeeded analysis of the version.
_OUTCOMES_SQL = text(f"""
SELECT DISTINCT ON (f.analysis_id) f.final_diagnosis, f.histopathology,
       a.result ->> 'diagnosis' AS diagnosis, a.result -> 'equity' ->> 'skin_group' AS skin_group,
       a.shown_disposition
FROM analyses a JOIN feedback f ON f.analysis_id = a.id
WHERE a.tenant_id = :tenant AND ({MODEL_VERSION_SQL}) = :version AND a.status IN {FINAL_STATUSES_SQL}
  AND a.status = 'succeeded' AND a.completed_at >= :since
  AND (coalesce(f.histopathology, '') <> '' OR coalesce(f.final_diagnosis, '') <> '')
ORDER BY f.analysis_id, f.created_at DESC
""")


def model_versions(session: Session, tenant_id: uuid.UUID) -> list[str]:
    return list(session.execute(_VERSIONS_SQL, {"tenant": tenant_id}).scalars())


def last_completed(session: Session, tenant_id: uuid.UUID, model_version: str) -> datetime | None:
    return session.execute(_LAST_COMPLETED_SQL, {"tenant": tenant_id, "version": model_version}).scalar_one_or_none()


def open_episode(session: Session, tenant_id: uuid.UUID, model_version: str) -> DriftEpisode | None:
    return session.execute(
        select(DriftEpisode).where(DriftEpisode.tenant_id == tenant_id, DriftEpisode.model_version == model_version,
                                   DriftEpisode.cleared_at.is_(None))
    ).scalar_one_or_none()


def window_since(session: Session, settings: Settings, tenant_id: uuid.UUID, model_version: str,
                 now: datetime) -> datetime:
    """Where the window may start: ``MONITOR_WINDOW_HOURS`` ago, or when an operator last
    cleared this version's drift for the tenant, whichever is later."""
    since = now - timedelta(hours=settings.monitor_window_hours)
    cleared = session.execute(
        select(DriftEpisode.cleared_at)
        .where(DriftEpisode.tenant_id == tenant_id, DriftEpisode.model_version == model_version,
               DriftEpisode.cleared_at.is_not(None))
        .order_by(DriftEpisode.cleared_at.desc()).limit(1)
    ).scalar_one_or_none()
    return max(since, cleared) if cleared is not None else since


@dataclass(frozen=True)
class _Row:
    status: str
    probability: float | None
    skin_group: str | None
    rejection_code: str | None
    sex: str | None
    site: str | None
    age: int | None
    shown_disposition: str | None
    weights: str | None
    completed_at: datetime | None


def thresholds(settings: Settings) -> DriftThresholds:
    return DriftThresholds(psi=settings.drift_psi_threshold, ks=settings.drift_ks_threshold,
                           min_results=settings.drift_min_results)


def drift_measures(settings: Settings, reference: Reference | None, probabilities: Sequence[float],
                   skin_groups: Mapping[str, int]) -> DriftMeasures:
    """The window's measures against ``reference`` and those above their threshold (judged only
    with a reference and at least ``DRIFT_MIN_RESULTS`` scored results)."""
    n = len(probabilities)
    psi_value = ks_value = skin_psi = None
    if reference is not None and n > 0:
        psi_value = probability_psi(reference, probabilities)
        ks_value = ks_statistic(reference, probabilities)
        if reference.skin_groups:
            skin_psi = mix_psi(reference.skin_groups, skin_groups, SKIN_GROUPS)
    exceeded: list[DriftMeasureName] = []
    if reference is not None and n >= settings.drift_min_results:
        if psi_value is not None and psi_value > settings.drift_psi_threshold:
            exceeded.append("psi")
        if ks_value is not None and ks_value > settings.drift_ks_threshold:
            exceeded.append("ks")
        if skin_psi is not None and skin_psi > settings.drift_psi_threshold:
            exceeded.append("skin_group_psi")
    return DriftMeasures(results=n, psi=_round(psi_value), ks=_round(ks_value), skin_group_psi=_round(skin_psi),
                         exceeded=exceeded, thresholds=thresholds(settings))


@dataclass(frozen=True)
class Window:
    """A (tenant, version)'s window: its newest final results, newest first."""

    since: datetime
    rows: list[_Row]

    @property
    def counts(self) -> Counter[str]:
        return Counter(row.status for row in self.rows)

    @property
    def succeeded(self) -> list[_Row]:
        return [row for row in self.rows if row.status == "succeeded"]

    @property
    def probabilities(self) -> list[float]:
        return [row.probability for row in self.succeeded if row.probability is not None]

    @property
    def skin_groups(self) -> Counter[str]:
        return Counter(row.skin_group for row in self.succeeded if row.skin_group)

    def rate(self, status: str) -> float | None:
        return self.counts[status] / len(self.rows) if self.rows else None


def read_window(session: Session, settings: Settings, tenant_id: uuid.UUID, model_version: str,
                now: datetime) -> Window:
    since = window_since(session, settings, tenant_id, model_version, now)
    rows = [_Row(*row) for row in session.execute(
        _WINDOW_SQL, {"tenant": tenant_id, "version": model_version, "since": since, "limit": settings.monitor_window}
    )]
    return Window(since, rows)


def model_monitoring(session: Session, settings: Settings, tenant_id: uuid.UUID, model_version: str,
                     now: datetime | None = None) -> ModelMonitoring:
    """One (tenant, model version)'s window, measured."""
    now = now or utcnow()
    window = read_window(session, settings, tenant_id, model_version, now)
    since, rows = window.since, window.rows
    total = len(rows)
    by_status = window.counts
    succeeded = window.succeeded
    probabilities = window.probabilities
    skin_counts = window.skin_groups
    reference = reference_for(session, model_version)
    measures = drift_measures(settings, reference, probabilities, skin_counts)
    episode = open_episode(session, tenant_id, model_version)
    rejection_counts = Counter(row.rejection_code or "unknown" for row in rows if row.status == "rejected")
    completed = [row.completed_at for row in rows if row.completed_at is not None]
    weights = next((row.weights for row in rows if row.weights), None)
    return ModelMonitoring(
        model_version=model_version,
        weights=weights if weights in ("trained", "synthetic", "untrained") else None,
        window=WindowInfo(
            results=total, succeeded=by_status["succeeded"], rejected=by_status["rejected"],
            failed=by_status["failed"], since=iso(since), first_completed_at=iso(min(completed, default=None)),
            last_completed_at=iso(max(completed, default=None)),
        ),
        failure_rate=wilson(by_status["failed"], total),
        rejection_rate=wilson(by_status["rejected"], total),
        rejections={code: wilson(count, total) for code, count in sorted(rejection_counts.items())},
        probability=ProbabilityDistribution(
            count=len(probabilities),
            mean=_round(float(np.mean(probabilities))) if probabilities else None,
            median=_round(float(np.median(probabilities))) if probabilities else None,
            reference=ReferenceInfo(source=reference.source, count=reference.count,
                                    recorded_at=reference.recorded_at) if reference is not None else None,
            psi=measures.psi,
            ks=measures.ks,
            status=_status(settings, reference, measures),
        ),
        skin_groups=SkinGroupMix(groups=_shares(skin_counts, SKIN_GROUPS), psi=measures.skin_group_psi),
        metadata=MetadataMix(
            sex=_shares(Counter(row.sex or "unknown" for row in rows), SEXES),
            site=_shares(Counter(row.site or "unknown" for row in rows), SITES),
            age_band=_shares(Counter(age_band(row.age) for row in rows), AGE_BANDS),
        ),
        dispositions=_shares(Counter(row.shown_disposition for row in succeeded if row.shown_disposition),
                             DISPOSITIONS),
        drift=DriftState(exceeded=measures.exceeded, open_episode=episode_out(episode) if episode else None),
        outcomes=outcomes(session, settings, tenant_id, model_version, now),
    )


def outcomes(session: Session, settings: Settings, tenant_id: uuid.UUID, model_version: str,
             now: datetime) -> Outcomes:
    since = now - timedelta(days=settings.monitor_outcome_days)
    confirmed: list[tuple[Outcome, str | None, str | None, str | None]] = []
    for final_diagnosis, histopathology, diagnosis, skin_group, shown in session.execute(
        _OUTCOMES_SQL, {"tenant": tenant_id, "version": model_version, "since": since}
    ):
        outcome = outcome_of(final_diagnosis, histopathology)
        if outcome is not None:
            confirmed.append((outcome, diagnosis, skin_group, shown))
    groups = [g for g in SKIN_GROUPS if any(c[2] == g for c in confirmed)]
    return Outcomes(
        days=settings.monitor_outcome_days,
        overall=_outcome_block(confirmed),
        per_skin_group=[
            _outcome_block([c for c in confirmed if c[2] == group]).model_copy(update={"skin_group": group})
            for group in groups
        ],
    )


def _outcome_block(confirmed: Sequence[tuple[Outcome, str | None, str | None, str | None]]) -> OutcomeBlock:
    melanomas = [c for c in confirmed if c[0] == "melanoma"]
    benign = [c for c in confirmed if c[0] == "benign"]
    return OutcomeBlock(
        confirmed=len(confirmed),
        melanomas=len(melanomas),
        sensitivity=wilson(sum(c[1] == "melanoma" for c in melanomas), len(melanomas)),
        specificity=wilson(sum(c[1] == "benign" for c in benign), len(benign)),
        routine_melanomas=sum(c[3] == "routine" for c in melanomas),
    )


def tenant_monitoring(session: Session, settings: Settings, tenant_id: uuid.UUID,
                      now: datetime | None = None) -> MonitoringOut:
    """A tenant's monitoring: every model version with a final result in its window (or an
    open drift episode), most recently active first."""
    now = now or utcnow()
    open_versions = set(session.execute(
        select(DriftEpisode.model_version).where(DriftEpisode.tenant_id == tenant_id, DriftEpisode.cleared_at.is_(None))
    ).scalars())
    horizon = now - timedelta(hours=settings.monitor_window_hours)
    models = []
    for version in model_versions(session, tenant_id):
        last = last_completed(session, tenant_id, version)
        if version not in open_versions and (last is None or last < horizon):
            continue  # an old version: nothing in its window (one index descent to know)
        report = model_monitoring(session, settings, tenant_id, version, now)
        if report.window.results or version in open_versions:
            models.append(report)
    models.sort(key=lambda m: m.window.last_completed_at or "", reverse=True)
    return MonitoringOut(
        generated_at=iso(now),
        window=MonitoringWindow(results=settings.monitor_window, hours=settings.monitor_window_hours,
                                outcome_days=settings.monitor_outcome_days),
        thresholds=thresholds(settings),
        drift_action=settings.drift_action,
        safety_mode=safety_mode(session, tenant_id),
        models=models,
    )


def safety_mode(session: Session, tenant_id: uuid.UUID) -> SafetyMode:
    """The tenant's safety mode: its open drift episodes whose action was ``review_all``."""
    rows = session.execute(
        select(DriftEpisode.model_version, DriftEpisode.opened_at)
        .where(DriftEpisode.tenant_id == tenant_id, DriftEpisode.cleared_at.is_(None),
               DriftEpisode.action == REVIEW_ALL)
        .order_by(DriftEpisode.opened_at)
    ).all()
    return SafetyMode(active=bool(rows), since=iso(rows[0][1]) if rows else None,
                      model_versions=[version for version, _ in rows])


def in_safety_mode(session: Session, tenant_id: uuid.UUID) -> bool:
    return session.execute(
        select(DriftEpisode.id)
        .where(DriftEpisode.tenant_id == tenant_id, DriftEpisode.cleared_at.is_(None),
               DriftEpisode.action == REVIEW_ALL)
        .limit(1)
    ).first() is not None


def episode_out(row: DriftEpisode) -> DriftEpisodeOut:
    return DriftEpisodeOut(
        id=row.id, model_version=row.model_version, opened_at=iso(row.opened_at),
        action=REVIEW_ALL if row.action == REVIEW_ALL else "alert",
        measures=DriftMeasures.model_validate(row.measures), cleared_at=iso(row.cleared_at),
    )


def age_band(age: int | None) -> str:
    if age is None:
        return "unknown"
    if age < 18:
        return "under 18"
    if age < 40:
        return "18-39"
    if age < 65:
        return "40-64"
    return "65 and over"


def _status(settings: Settings, reference: Reference | None, measures: DriftMeasures) -> ProbabilityStatus:
    if reference is None:
        return "no_reference"
    if measures.results < settings.drift_min_results:
        return "insufficient_data"
    return "drift" if measures.exceeded else "ok"


def _shares(counts: Mapping[str, int], order: Sequence[str]) -> dict[str, Share]:
    """Counts and shares in ``order``, then any other category counted (a spelling from
    before the vocabulary, say); categories with no count are left out."""
    total = sum(counts.values())
    keys = [k for k in order if counts.get(k)] + sorted(k for k in counts if k not in order and counts[k])
    return {k: Share(count=counts[k], share=counts[k] / total if total else None) for k in keys}


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)
