"""Batches: create, list, progress, seal and the triage list. All SQL for the route lives here.

Progress never scans a batch: counts per status come from the (batch_id, status) index and
throughput from the (batch_id, completed_at) index, so a 100,000-item batch answers as fast as
a ten-item one. The triage list is an export and reads every item once, streamed.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, nulls_last, select
from sqlalchemy.orm import Session, sessionmaker

from api.deps import TenantRef
from api.pagination import newest_first
from api.problems import Unprocessable
from api.services.owned import get_owned
from shared import clinical, lifecycle
from shared.clock import iso, utcnow
from shared.context import AppContext
from shared.csv_export import SafeDictWriter
from shared.schemas import BatchIn
from shared.tables import Analysis, AnalysisStatus, Batch

THROUGHPUT_WINDOW = timedelta(minutes=5)
# A rate measured over a few seconds swings wildly; never divide by less than this.
MIN_RATE_SPAN = timedelta(seconds=15)

# The review rule, retake advice and skin groups are shared.clinical's (docs/CLINICAL_RULES.md).
REVIEW_RULE = clinical.review_rule_text()

# Triage order: results first (highest risk first), then what staff must act on
# (retakes, failures), then what is still in flight.
_SECTION = {
    AnalysisStatus.succeeded.value: 0,
    AnalysisStatus.rejected.value: 1,
    AnalysisStatus.failed.value: 2,
    AnalysisStatus.canceled.value: 3,
    AnalysisStatus.processing.value: 4,
    AnalysisStatus.queued.value: 4,
}
FINAL = frozenset(
    s.value for s in (AnalysisStatus.succeeded, AnalysisStatus.rejected, AnalysisStatus.failed, AnalysisStatus.canceled)
)

CSV_COLUMNS = (
    "rank",
    "analysis_id",
    "external_id",
    "status",
    "weights",
    "risk_band",
    "probability",
    "uncertainty",
    "needs_review",
    "review_reason",
    "diagnosis",
    "skin_group",
    "ita_degrees",
    "bias_warning",
    "rejection_code",
    "rejection_detail",
    "retake_advice",
    "error_code",
    "error_detail",
    "age",
    "sex",
    "site",
    "completed_at",
)

# `format=isic`: the ISIC challenge layout (`image_name`, `target` = melanoma probability; the
# metadata under ISIC's names, `age_approx` in 5-year steps as ISIC publishes it), then ours.
ISIC_COLUMNS = (
    "image_name",
    "target",
    "weights",
    "analysis_id",
    "external_id",
    "status",
    "risk_band",
    "uncertainty",
    "needs_review",
    "review_reason",
    "predicted_diagnosis",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "skin_group",
    "ita_degrees",
    "bias_warning",
    "rejection_code",
    "error_code",
    "completed_at",
)


def age_approx(age: int | None) -> int | None:
    """ISIC's ``age_approx``: the age to the nearest multiple of 5 (halves round up)."""
    return None if age is None else 5 * ((age + 2) // 5)


# ---------------------------------------------------------------- batches


def create(session: Session, tenant: TenantRef, body: BatchIn, max_cancel_after_seconds: int | None = None) -> Batch:
    now = utcnow()
    if body.cancel_after is not None and max_cancel_after_seconds and body.cancel_after > max_cancel_after_seconds:
        raise Unprocessable(
            f"cancel_after: must be at most {max_cancel_after_seconds} seconds",
            errors=[{"field": "cancel_after", "message": f"must be at most {max_cancel_after_seconds} seconds"}],
        )
    batch = Batch(
        tenant_id=tenant.id,
        name=body.name,
        external_id=body.external_id,
        created_at=now,
        deadline_at=now + timedelta(seconds=body.cancel_after) if body.cancel_after is not None else None,
    )
    session.add(batch)
    session.flush()
    return batch


def get(session: Session, tenant: TenantRef, batch_id: uuid.UUID, *, for_update: bool = False) -> Batch:
    return get_owned(session, Batch, batch_id, tenant, "batch", for_update=for_update)


def list_page(
    session: Session, tenant: TenantRef, *, limit: int, cursor: str | None, name: str | None
) -> tuple[list[Batch], str | None]:
    query = select(Batch).where(Batch.tenant_id == tenant.id)
    if name is not None:
        query = query.where(Batch.name == name)
    return newest_first(session, query, Batch, limit=limit, cursor=cursor)


def counts_for(session: Session, batch_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, int]]:
    """Counts per status for a page of batches in one query on the (batch_id, status) index."""
    empty = {s.value: 0 for s in AnalysisStatus}
    counts = {batch_id: dict(empty) for batch_id in batch_ids}
    if batch_ids:
        rows = session.execute(
            select(Analysis.batch_id, Analysis.status, func.count())
            .where(Analysis.batch_id.in_(batch_ids))
            .group_by(Analysis.batch_id, Analysis.status)
        ).all()
        for batch_id, status, n in rows:
            assert batch_id is not None  # IN (...) never matches a NULL batch_id
            counts[batch_id][status] = n
    return counts


def seal(context: AppContext, session: Session, tenant: TenantRef, batch_id: uuid.UUID) -> Batch:
    """Close the batch for new items (idempotent). A batch whose items are all final
    completes right here and emits ``batch.completed`` (once: the lifecycle guards it)."""
    batch = get(session, tenant, batch_id, for_update=True)
    if batch.sealed_at is None:
        batch.sealed_at = utcnow()
        session.flush()
    lifecycle.complete_batch_if_done(session, context.celery, context.settings, batch.id)
    return batch


def cancel(context: AppContext, session: Session, tenant: TenantRef, batch_id: uuid.UUID) -> tuple[Batch, int]:
    """Cancel every unfinished item once and close the batch; returns the batch and how many
    items this call canceled (0 on a repeat: nothing changes, nothing is emitted)."""
    batch = get(session, tenant, batch_id, for_update=True)
    canceled = lifecycle.cancel_batch(session, context.celery, context.settings, batch)
    return batch, len(canceled)


# ---------------------------------------------------------------- progress


@dataclass(frozen=True)
class Progress:
    counts: dict[str, int]
    total: int
    done: int
    percent_done: float
    throughput_per_minute: float | None
    eta_seconds: float | None
    eta_at: datetime | None


def progress(session: Session, batch: Batch, counts: dict[str, int] | None = None) -> Progress:
    counts = counts if counts is not None else lifecycle.batch_counts(session, batch.id)
    total = sum(counts.values())
    done = sum(n for status, n in counts.items() if status in FINAL)
    remaining = total - done
    now = utcnow()
    since = now - THROUGHPUT_WINDOW
    finished_recently = session.execute(
        select(func.count()).where(Analysis.batch_id == batch.id, Analysis.completed_at >= since)
    ).scalar_one()
    rate = None
    if finished_recently:
        # Over the window, or over the batch's life when it is younger than that.
        span = max(now - max(since, batch.created_at), MIN_RATE_SPAN)
        rate = finished_recently / span.total_seconds() * 60.0
    eta_seconds = None
    if remaining == 0:
        eta_seconds = 0.0 if total else None
    elif rate:
        eta_seconds = remaining / rate * 60.0
    return Progress(
        counts=counts,
        total=total,
        done=done,
        percent_done=round(100.0 * done / total, 1) if total else 0.0,
        throughput_per_minute=round(rate, 2) if rate is not None else None,
        eta_seconds=round(eta_seconds, 1) if eta_seconds is not None else None,
        eta_at=now + timedelta(seconds=eta_seconds) if eta_seconds else None,
    )


# ---------------------------------------------------------------- triage


@dataclass
class TriageRow:
    analysis_id: uuid.UUID
    external_id: str | None
    status: str
    probability: float | None
    uncertainty: float | None
    risk_band: str | None
    diagnosis: str | None
    skin_group: str | None
    ita_degrees: float | None
    bias_warning: bool | None
    rejection_code: str | None
    rejection_detail: str | None
    error_code: str | None
    error_detail: str | None
    age: int | None
    sex: str
    site: str
    completed_at: datetime | None
    weights: str | None = None  # the model's weights status; None when no model ran
    threshold: float | None = None  # the model's operating threshold, when it has its own

    def review_reasons(self) -> list[str]:
        if self.status != AnalysisStatus.succeeded.value:
            return []
        return clinical.review_reasons(
            self.probability, self.uncertainty, self.bias_warning,
            weights=self.weights or clinical.UNKNOWN_WEIGHTS, threshold=self.threshold,
        )

    def as_item(self, rank: int) -> dict:
        reasons = self.review_reasons()
        advice = None
        if self.status == AnalysisStatus.rejected.value:
            advice = clinical.retake_advice(self.rejection_code)
        elif self.status == AnalysisStatus.failed.value:
            advice = clinical.FAILED_ADVICE
        return {
            "rank": rank,
            "analysis_id": str(self.analysis_id),
            "external_id": self.external_id,
            "status": self.status,
            "weights": self.weights,
            "risk_band": self.risk_band,
            "probability": self.probability,
            "uncertainty": self.uncertainty,
            "needs_review": bool(reasons),
            "review_reason": ";".join(reasons) or None,
            "diagnosis": self.diagnosis,
            "skin_group": self.skin_group,
            "ita_degrees": round(self.ita_degrees, 2) if self.ita_degrees is not None else None,
            "bias_warning": self.bias_warning,
            "rejection_code": self.rejection_code,
            "rejection_detail": self.rejection_detail,
            "retake_advice": advice,
            "error_code": self.error_code,
            "error_detail": self.error_detail,
            "age": self.age,
            "sex": self.sex,
            "site": self.site,
            "completed_at": iso(self.completed_at),
        }


    def as_isic(self, rank: int) -> dict:
        """One ISIC-style row: ``image_name`` is the client's ``external_id`` when set, else
        the analysis id; ``target`` the melanoma probability (empty without a result; read
        ``weights``: anything but ``trained`` is not clinically meaningful). ISIC leaves
        unknown metadata empty, so ``unknown`` sex and site are empty cells."""
        item = self.as_item(rank)
        return {
            "image_name": self.external_id or str(self.analysis_id),
            "target": self.probability if self.status == AnalysisStatus.succeeded.value else None,
            "weights": self.weights,
            "analysis_id": item["analysis_id"],
            "external_id": self.external_id,
            "status": self.status,
            "risk_band": self.risk_band,
            "uncertainty": self.uncertainty,
            "needs_review": item["needs_review"],
            "review_reason": item["review_reason"],
            "predicted_diagnosis": self.diagnosis,
            "sex": None if self.sex in (None, "unknown") else self.sex,
            "age_approx": age_approx(self.age),
            "anatom_site_general_challenge": None if self.site in (None, "unknown") else self.site,
            "skin_group": self.skin_group,
            "ita_degrees": item["ita_degrees"],
            "bias_warning": self.bias_warning,
            "rejection_code": self.rejection_code,
            "error_code": self.error_code,
            "completed_at": item["completed_at"],
        }


def _triage_query(batch_id: uuid.UUID, order: str):
    result = Analysis.result
    query = select(
        Analysis.id,
        Analysis.external_id,
        Analysis.status,
        Analysis.probability,
        result["uncertainty"].as_float(),
        result["risk_band"].as_string(),
        result["diagnosis"].as_string(),
        result[("equity", "skin_group")].as_string(),
        result[("equity", "ita_degrees")].as_float(),
        result[("equity", "bias_warning")].as_boolean(),
        Analysis.rejection["code"].as_string(),
        Analysis.rejection["detail"].as_string(),
        Analysis.error["code"].as_string(),
        Analysis.error["detail"].as_string(),
        Analysis.age,
        Analysis.sex,
        Analysis.site,
        Analysis.completed_at,
        Analysis.model["weights"].as_string(),
        Analysis.model[clinical.THRESHOLD_KEY].as_float(),
    ).where(Analysis.batch_id == batch_id)
    if order == "risk":
        section = case(*((Analysis.status == s, rank) for s, rank in _SECTION.items()), else_=9)
        return query.order_by(section, nulls_last(Analysis.probability.desc()), Analysis.created_at, Analysis.id)
    return query.order_by(Analysis.created_at, Analysis.id)


def iter_triage(
    session_factory: sessionmaker[Session], batch_id: uuid.UUID, order: str, chunk: int = 1000
) -> Iterator[TriageRow]:
    """Every item of the batch in triage order, read through a server-side cursor so a large
    batch streams in constant memory. Opens its own session: it outlives the request's."""
    with session_factory() as session:
        rows = session.execute(_triage_query(batch_id, order).execution_options(yield_per=chunk))
        for row in rows:
            yield TriageRow(*row)


def triage_csv(rows: Iterable[TriageRow], flush_every: int = 500, *, isic: bool = False) -> Iterator[str]:
    """The triage list as CSV text chunks: a header, then one row per item, every cell made
    formula-safe (external ids, gate details and advice are client- or model-supplied text).
    ``isic``: the ISIC-style columns (``ISIC_COLUMNS``) instead of the triage ones."""
    buffer = io.StringIO()
    writer = SafeDictWriter(buffer, ISIC_COLUMNS if isic else CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rank, row in enumerate(rows, start=1):
        writer.writerow(row.as_isic(rank) if isic else row.as_item(rank))
        if rank % flush_every == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


@dataclass
class GroupTally:
    items: int = 0
    high_risk: int = 0
    suspicious: int = 0
    needs_review: int = 0


@dataclass
class TriageSummary:
    """Counts for the end of the triage list, gathered while it streams (one pass)."""

    counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in AnalysisStatus})
    needs_review: int = 0
    retake: dict[str, int] = field(default_factory=dict)
    groups: dict[str, GroupTally] = field(default_factory=dict)
    weights: dict[str | None, int] = field(default_factory=dict)  # results per weights status

    def add(self, row: TriageRow, item: dict) -> None:
        self.counts[row.status] = self.counts.get(row.status, 0) + 1
        if row.status == AnalysisStatus.rejected.value:
            code = row.rejection_code or "unknown"
            self.retake[code] = self.retake.get(code, 0) + 1
        if row.status != AnalysisStatus.succeeded.value:
            return
        self.needs_review += item["needs_review"]
        self.weights[row.weights] = self.weights.get(row.weights, 0) + 1
        tally = self.groups.setdefault(row.skin_group or "unknown", GroupTally())
        tally.items += 1
        tally.high_risk += row.risk_band == "high"
        tally.suspicious += row.risk_band in ("high", "medium")
        tally.needs_review += item["needs_review"]

    def as_dict(self) -> dict:
        order = list(clinical.SKIN_GROUPS) + sorted(set(self.groups) - set(clinical.SKIN_GROUPS))
        equity = []
        for group in order:
            tally = self.groups.get(group)
            if tally is None:
                continue
            equity.append(
                {
                    "skin_group": group,
                    "items": tally.items,
                    "high_risk": tally.high_risk,
                    "high_risk_share": round(tally.high_risk / tally.items, 4),
                    "suspicious": tally.suspicious,
                    "suspicious_share": round(tally.suspicious / tally.items, 4),
                    "needs_review": tally.needs_review,
                    "bias_warning": clinical.group_bias_warning(group),
                }
            )
        return {
            "counts": self.counts,
            "total": sum(self.counts.values()),
            "needs_review": self.needs_review,
            "retake": self.retake,
            **clinical.weights_summary(self.weights),
            "review_rule": REVIEW_RULE,
            "equity": equity,
        }
