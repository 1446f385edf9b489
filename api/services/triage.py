"""A batch's triage list (``GET /v1/batches/{id}/results``): every item in triage order (by
disposition, then risk) with its disposition, review flags and retake advice, the summary
counted while it streams, and the same items as triage CSV or ISIC-style CSV.

Each item's result and provenance are read as the typed record (``shared.lifecycle``) and
judged by the one set of clinical rules (``shared.clinical``, docs/CLINICAL_RULES.md).
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, func, nulls_last, select
from sqlalchemy.orm import Session, sessionmaker

from shared import clinical, lifecycle
from shared.clinical import disposition
from shared.clock import iso
from shared.csv_export import SafeDictWriter
from shared.schemas import AnalysisResult, EquityRow, ModelInfo, StatusCounts, TriageItem, TriageSummaryOut
from shared.schemas.batches import DispositionCounts
from shared.tables import Analysis, AnalysisStatus

# The review rule, retake advice and skin groups are shared.clinical's (docs/CLINICAL_RULES.md).
REVIEW_RULE = clinical.review_rule_text()

# Triage order: by disposition first (urgent referrals, then clinician review, then routine,
# then items without one), then results before what staff must act on (retakes, failures) and
# what is still in flight, then highest risk first.
_DISPOSITION_RANK = {name: rank for rank, name in enumerate(disposition.DISPOSITIONS)}
_SECTION = {
    AnalysisStatus.succeeded.value: 0,
    AnalysisStatus.rejected.value: 1,
    AnalysisStatus.failed.value: 2,
    AnalysisStatus.canceled.value: 3,
    AnalysisStatus.processing.value: 4,
    AnalysisStatus.queued.value: 4,
}

# The triage CSV has one column per field of a triage item, in the same order.
CSV_COLUMNS = tuple(TriageItem.model_fields)

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
    "disposition",
    "disposition_reasons",
)


# What an ISIC `image_name` may be when it comes from a client's external id: a plain file name
# (no path separator, no leading dot, no drive letter or stream); anything else is named by the
# analysis id (issue 25: an external id must never become a file name as it is).
_SAFE_IMAGE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._\-]{0,199}")


def isic_image_name(external_id: str | None, analysis_id: uuid.UUID) -> str:
    """ISIC's ``image_name``: the client's ``external_id`` when it is a plain file name, such as
    ISIC's own ``ISIC_0000000``; else the analysis id. ``external_id`` stays its own column."""
    if external_id and _SAFE_IMAGE_NAME.fullmatch(external_id):
        return external_id
    return str(analysis_id)


def age_approx(age: int | None) -> int | None:
    """ISIC's ``age_approx``: the age to the nearest multiple of 5 (halves round up)."""
    return None if age is None else 5 * ((age + 2) // 5)


@dataclass(frozen=True)
class TriageRow:
    """One item of the batch as the triage list reads it."""

    analysis_id: uuid.UUID
    external_id: str | None
    status: str
    result: AnalysisResult | None  # as clients see it (lifecycle.read_result: notice, disposition)
    model: ModelInfo | None  # None when no model ran
    rejection_code: str | None
    rejection_detail: str | None
    error_code: str | None
    error_detail: str | None
    age: int | None
    sex: str
    site: str
    completed_at: datetime | None

    @property
    def weights(self) -> str | None:
        return clinical.weights_status(self.model)

    @property
    def succeeded(self) -> bool:
        return self.status == AnalysisStatus.succeeded.value

    def review_reasons(self) -> list[str]:
        if not self.succeeded or self.result is None:
            return []
        return clinical.review_reasons(
            self.result.probability, self.result.uncertainty, self.result.equity.bias_warning,
            weights=self.weights or clinical.UNKNOWN_WEIGHTS, threshold=clinical.threshold_of(self.model),
        )

    def as_item(self, rank: int) -> TriageItem:
        reasons = self.review_reasons()
        advice = None
        if self.status == AnalysisStatus.rejected.value:
            advice = clinical.retake_advice(self.rejection_code)
        elif self.status == AnalysisStatus.failed.value:
            advice = clinical.FAILED_ADVICE
        result = self.result
        return TriageItem(
            rank=rank,
            analysis_id=self.analysis_id,
            external_id=self.external_id,
            status=self.status,
            weights=self.weights,
            risk_band=result.risk_band if result else None,
            probability=result.probability if result else None,
            uncertainty=result.uncertainty if result else None,
            needs_review=bool(reasons),
            review_reason=";".join(reasons) or None,
            diagnosis=result.diagnosis if result else None,
            skin_group=result.equity.skin_group if result else None,
            ita_degrees=round(result.equity.ita_degrees, 2) if result else None,
            bias_warning=result.equity.bias_warning if result else None,
            rejection_code=self.rejection_code,
            rejection_detail=self.rejection_detail,
            retake_advice=advice,
            error_code=self.error_code,
            error_detail=self.error_detail,
            age=self.age,
            sex=self.sex,
            site=self.site,
            completed_at=iso(self.completed_at),
            disposition=result.disposition if result else None,
            disposition_reasons=(";".join(result.disposition_reasons) or None) if result else None,
        )

    def as_isic(self, rank: int) -> dict[str, Any]:
        """One ISIC-style row: ``image_name`` is the client's ``external_id`` when it is a plain
        file name (``isic_image_name``), else the analysis id; ``target`` the melanoma
        probability (empty without a result; read ``weights``: anything but ``trained`` is not
        clinically meaningful). ISIC leaves
        unknown metadata empty, so ``unknown`` sex and site are empty cells."""
        item = self.as_item(rank)
        return {
            "image_name": isic_image_name(self.external_id, self.analysis_id),
            "target": item.probability if self.succeeded else None,
            "weights": item.weights,
            "analysis_id": str(item.analysis_id),
            "external_id": self.external_id,
            "status": self.status,
            "risk_band": item.risk_band,
            "uncertainty": item.uncertainty,
            "needs_review": item.needs_review,
            "review_reason": item.review_reason,
            "predicted_diagnosis": item.diagnosis,
            "sex": None if self.sex in (None, "unknown") else self.sex,
            "age_approx": age_approx(self.age),
            "anatom_site_general_challenge": None if self.site in (None, "unknown") else self.site,
            "skin_group": item.skin_group,
            "ita_degrees": item.ita_degrees,
            "bias_warning": item.bias_warning,
            "rejection_code": self.rejection_code,
            "error_code": self.error_code,
            "completed_at": item.completed_at,
            "disposition": item.disposition,
            "disposition_reasons": item.disposition_reasons,
        }


# The stored result without its scribe note: the note is most of its size (a 100,000-item
# export would fetch ~150 MB of notes), and no column of the list reads it. Items without a
# result store JSON null, which has no key to drop.
RESULT_WITHOUT_NOTE = case(
    (func.jsonb_typeof(Analysis.result) == "object", Analysis.result.delete_path(["scribe_note"])),
    else_=Analysis.result,
)


def _triage_query(batch_id: uuid.UUID, order: str) -> Select[Any]:
    query = select(
        Analysis.id,
        Analysis.external_id,
        Analysis.status,
        RESULT_WITHOUT_NOTE,
        Analysis.model,
        Analysis.rejection["code"].as_string(),
        Analysis.rejection["detail"].as_string(),
        Analysis.error["code"].as_string(),
        Analysis.error["detail"].as_string(),
        Analysis.age,
        Analysis.sex,
        Analysis.site,
        Analysis.completed_at,
    ).where(Analysis.batch_id == batch_id)
    if order == "risk":
        grouped = case(_DISPOSITION_RANK, value=lifecycle.shown_disposition(), else_=len(_DISPOSITION_RANK))
        section = case(*((Analysis.status == s, rank) for s, rank in _SECTION.items()), else_=9)
        return query.order_by(
            grouped, section, nulls_last(Analysis.probability.desc()), Analysis.created_at, Analysis.id
        )
    return query.order_by(Analysis.created_at, Analysis.id)


def iter_triage(
    session_factory: sessionmaker[Session], batch_id: uuid.UUID, order: str, chunk: int = 1000
) -> Iterator[TriageRow]:
    """Every item of the batch in triage order, read through a server-side cursor so a large
    batch streams in constant memory. Opens its own session: it outlives the request's."""
    with session_factory() as session:
        rows = session.execute(_triage_query(batch_id, order).execution_options(yield_per=chunk))
        for (analysis_id, external_id, status, result, model, rejection_code, rejection_detail, error_code,
             error_detail, age, sex, site, completed_at) in rows:
            provenance = lifecycle.read_model(model)
            yield TriageRow(
                analysis_id, external_id, status, lifecycle.read_result(result, provenance), provenance,
                rejection_code, rejection_detail, error_code, error_detail, age, sex, site, completed_at,
            )


def triage_csv(rows: Iterable[TriageRow], flush_every: int = 500, *, isic: bool = False) -> Iterator[str]:
    """The triage list as CSV text chunks: a header, then one row per item, every cell made
    formula-safe (external ids, gate details and advice are client- or model-supplied text).
    ``isic``: the ISIC-style columns (``ISIC_COLUMNS``) instead of the triage ones."""
    buffer = io.StringIO()
    writer = SafeDictWriter(buffer, ISIC_COLUMNS if isic else CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rank, row in enumerate(rows, start=1):
        writer.writerow(row.as_isic(rank) if isic else row.as_item(rank).model_dump(mode="json"))
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
    dispositions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(disposition.DISPOSITIONS, 0))

    def add(self, row: TriageRow, item: TriageItem) -> None:
        self.counts[row.status] = self.counts.get(row.status, 0) + 1
        if row.status == AnalysisStatus.rejected.value:
            code = row.rejection_code or "unknown"
            self.retake[code] = self.retake.get(code, 0) + 1
        if not row.succeeded:
            return
        self.needs_review += item.needs_review
        self.weights[row.weights] = self.weights.get(row.weights, 0) + 1
        if item.disposition is not None:
            self.dispositions[item.disposition] += 1
        tally = self.groups.setdefault(item.skin_group or "unknown", GroupTally())
        tally.items += 1
        tally.high_risk += item.risk_band == "high"
        tally.suspicious += item.risk_band in ("high", "medium")
        tally.needs_review += item.needs_review

    def out(self) -> TriageSummaryOut:
        order = list(clinical.SKIN_GROUPS) + sorted(set(self.groups) - set(clinical.SKIN_GROUPS))
        equity = []
        for group in order:
            tally = self.groups.get(group)
            if tally is None:
                continue
            equity.append(
                EquityRow(
                    skin_group=group,
                    items=tally.items,
                    high_risk=tally.high_risk,
                    high_risk_share=round(tally.high_risk / tally.items, 4),
                    suspicious=tally.suspicious,
                    suspicious_share=round(tally.suspicious / tally.items, 4),
                    needs_review=tally.needs_review,
                    bias_warning=clinical.group_bias_warning(group),
                )
            )
        return TriageSummaryOut(
            counts=StatusCounts(**self.counts),
            total=sum(self.counts.values()),
            needs_review=self.needs_review,
            retake=self.retake,
            **clinical.weights_summary(self.weights),
            review_rule=REVIEW_RULE,
            equity=equity,
            dispositions=DispositionCounts(**self.dispositions),
        )
