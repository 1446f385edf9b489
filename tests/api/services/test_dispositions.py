"""Issue 21 on the real Postgres: the triage order groups by disposition (then risk), and batch
progress, the triage summary and ``batch.completed`` count results per disposition. The SQL
reads the stored JSON (``lifecycle.shown_disposition``); these tests hold it to what the
Python view of each result shows (``lifecycle.shown_result``)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from api.services import batches, triage
from shared import lifecycle
from shared.clock import utcnow
from shared.schemas import BatchIn, ModelInfo
from shared.tables import Analysis, Event
from tests import factories

LEGACY: dict[str, Any] = {"disposition": None, "disposition_reasons": [], "safety_netting": None}

# (external id, status, weights, probability, the stored disposition fields), in submission order.
ITEMS: list[tuple[str, str, str | None, float | None, dict[str, Any]]] = [
    ("failed", "failed", None, None, {}),
    ("routine", "succeeded", "trained", 0.02,
     {"disposition": "routine", "disposition_reasons": ["below_rule_out"], "safety_netting": "come back"}),
    ("legacy-trained", "succeeded", "trained", 0.99, LEGACY),
    ("review-low", "succeeded", "trained", 0.3,
     {"disposition": "clinician_review", "disposition_reasons": ["missing_metadata", "above_rule_out"]}),
    ("rejected", "rejected", None, None, {}),
    ("untrained", "succeeded", "untrained", 0.97,
     {"disposition": "clinician_review", "disposition_reasons": ["weights_not_trained", "above_rule_out"]}),
    ("urgent", "succeeded", "trained", 0.93,
     {"disposition": "urgent_referral", "disposition_reasons": ["high_probability"]}),
    ("legacy-untrained", "succeeded", "untrained", 0.1, LEGACY),
    ("review-high", "succeeded", "trained", 0.6,
     {"disposition": "clinician_review", "disposition_reasons": ["near_threshold", "above_rule_out"]}),
    ("no-provenance", "succeeded", None, 0.05,
     {"disposition": "routine", "disposition_reasons": ["below_rule_out"]}),
    ("queued", "queued", None, None, {}),
]
# Urgent referrals, clinician review (untrained and unknown weights included, whatever they
# stored), routine, then what has none (a trained result stored before dispositions existed,
# then rejections, failures and what is still in flight); by probability within a group.
RISK_ORDER = [
    "urgent", "untrained", "review-high", "review-low", "legacy-untrained", "no-provenance", "routine",
    "legacy-trained", "rejected", "failed", "queued",
]
DISPOSITIONS = {"urgent_referral": 1, "clinician_review": 5, "routine": 1}


def _stored_model(weights: str | None) -> dict[str, Any] | None:
    if weights is None:
        return None
    return ModelInfo(weights=weights, segmenter="classical").model_dump(mode="json", exclude_unset=True)


@pytest.fixture
def batch_id(unit, tenant) -> uuid.UUID:
    with unit() as session:
        made = batches.create(session, tenant, BatchIn(name="dispositions")).id
        now = utcnow()
        for n, (external_id, status, weights, probability, decided) in enumerate(ITEMS):
            result = None
            if probability is not None:
                result = factories.result(probability=probability, **decided).model_dump(
                    mode="json", exclude={"uncertainty_level"}
                )
            session.add(Analysis(
                tenant_id=tenant.id, batch_id=made, external_id=external_id, priority="bulk", status=status,
                image_key=f"tenants/{tenant.id}/{uuid.uuid4()}.jpg", image_sha256="0" * 64,
                image_content_type="image/jpeg", image_width=300, image_height=300,
                result=result, probability=probability, model=_stored_model(weights if result else None),
                rejection={"code": "blurry", "detail": "d"} if status == "rejected" else None,
                error={"code": "internal", "detail": "d"} if status == "failed" else None,
                created_at=now + timedelta(milliseconds=n), updated_at=now,
                completed_at=now if status != "queued" else None,
            ))
            session.flush()
    return made


def test_the_triage_list_groups_by_disposition_then_risk(context, batch_id):
    rows = list(triage.iter_triage(context.session_factory, batch_id, "risk"))
    assert [r.external_id for r in rows] == RISK_ORDER
    items = [r.as_item(rank) for rank, r in enumerate(rows, 1)]
    by_ref = {i.external_id: i for i in items}
    assert by_ref["untrained"].disposition == "clinician_review"
    assert by_ref["untrained"].disposition_reasons == "weights_not_trained", "no reason read off untrained output"
    assert by_ref["no-provenance"].disposition == "clinician_review", "unknown weights are never routine"
    assert by_ref["legacy-untrained"].disposition == "clinician_review"
    assert by_ref["legacy-trained"].disposition is None and by_ref["rejected"].disposition is None
    grouped = [i.disposition for i in items]
    assert grouped == sorted(grouped, key=lambda d: list(DISPOSITIONS).index(d) if d else 3)
    submitted = [r.external_id for r in triage.iter_triage(context.session_factory, batch_id, "submitted")]
    assert submitted == [ref for ref, *_ in ITEMS]


def test_progress_the_triage_summary_and_the_sql_count_what_each_result_shows(context, unit, tenant, batch_id):
    with unit() as session:
        progress = batches.progress(session, batches.get(session, tenant, batch_id))
        tally = lifecycle.batch_tally(session, batch_id)
    assert progress.dispositions.model_dump() == DISPOSITIONS
    assert progress.counts == tally.counts and progress.counts["succeeded"] == 8 and progress.total == len(ITEMS)
    assert tally.weights == {"trained": 5, "untrained": 2, None: 1}
    summary = triage.TriageSummary()
    for rank, row in enumerate(triage.iter_triage(context.session_factory, batch_id, "risk"), 1):
        summary.add(row, row.as_item(rank))
    assert summary.out().dispositions == progress.dispositions, "the SQL and the Python view agree"


def test_batch_completed_carries_the_counts_per_disposition(context, unit, tenant, batch_id):
    with unit() as session:
        session.execute(
            Analysis.__table__.update()
            .where(Analysis.batch_id == batch_id, Analysis.status == "queued")
            .values(status="canceled", cancel_reason="batch_canceled", completed_at=utcnow())
        )
    with unit() as session:
        batches.seal(context, session, tenant, batch_id)
    with unit() as session:
        events = session.execute(select(Event).where(Event.dedupe_key == f"batch.completed:{batch_id}")).scalars()
        (event,) = list(events)
        data = event.payload["data"]
    assert data["dispositions"] == DISPOSITIONS
    assert data["counts"]["succeeded"] == 8 and data["counts"]["canceled"] == 1
    assert data["weights"] == {"trained": 5, "untrained": 2, "unknown": 1} and data["weights_warning"]


def test_postgres_keeps_the_shown_disposition_and_weights_of_every_row(context, tenant_key):
    """The generated columns follow the stored JSON on insert and on update, whoever writes it:
    untrained weights are always clinician review; rows that did not succeed have none."""
    from sqlalchemy import update

    from shared.db import session_scope
    from shared.tables import Analysis
    from tests.e2e.seeding import result_for, seed_analysis

    trained = seed_analysis(context, tenant_key[0], weights="trained",
                            result=result_for(0.95, disposition="urgent_referral"))
    untrained = seed_analysis(context, tenant_key[0], weights="untrained",
                              result=result_for(0.95, disposition="urgent_referral"))
    rejected = seed_analysis(context, tenant_key[0], status="rejected", weights="trained",
                             rejection={"code": "blurry", "detail": "x"})
    with session_scope(context.session_factory) as session:
        shown = {row.id: (row.shown_disposition, row.weights_status)
                 for row in session.query(Analysis).filter(Analysis.id.in_([trained, untrained, rejected]))}
        assert shown[trained] == ("urgent_referral", "trained")
        assert shown[untrained] == ("clinician_review", "untrained")
        assert shown[rejected][0] is None
        session.execute(update(Analysis).where(Analysis.id == trained).values(
            model={**session.get(Analysis, trained).model, "weights": "synthetic"}))
    with session_scope(context.session_factory) as session:
        assert session.get(Analysis, trained).shown_disposition == "clinician_review"
