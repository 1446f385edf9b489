"""The triage list (api.services.triage) reads each item's typed result and provenance and
applies the one set of clinical rules: review reasons, retake advice, weights, the ISIC
columns and the equity summary. Pure unit tests: rows are built as the query yields them."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy.dialects import postgresql

from api.services import triage
from shared import clinical, lifecycle
from shared.schemas import TriageItem
from tests.factories import UNTRAINED_MODEL, model, result

NOW = datetime(2026, 11, 28, 3, 12, tzinfo=UTC)


def _row(status="succeeded", probability=0.3, weights="untrained", code=None, group="tan", ita=20.0, **changes):
    """A row as ``iter_triage`` yields it; a result and a model only where they apply."""
    succeeded = status == "succeeded"
    typed = result(
        probability=probability, uncertainty=0.01,
        risk_band=clinical.risk_band(probability), diagnosis=clinical.diagnosis(probability),
        equity={"ita_degrees": ita, "skin_group": group, "bias_warning": clinical.group_bias_warning(group)},
    ) if succeeded else None
    provenance = model(**{**UNTRAINED_MODEL, "weights": weights}) if weights else None
    if typed is not None:
        typed = lifecycle.shown_result(typed, provenance)  # as iter_triage reads it (lifecycle.read_result)
    fields = dict(
        analysis_id=uuid.uuid4(), external_id=None, status=status, result=typed, model=provenance,
        rejection_code=code, rejection_detail=None, error_code=None, error_detail=None,
        age=50, sex="unknown", site="unknown", completed_at=NOW,
    )
    return triage.TriageRow(**{**fields, **changes})


def test_the_csv_columns_are_the_triage_items_fields_as_published():
    """The header is a contract (spreadsheets and scripts read columns by name and place)."""
    assert triage.CSV_COLUMNS == (
        "rank", "analysis_id", "external_id", "status", "weights", "risk_band", "probability", "uncertainty",
        "needs_review", "review_reason", "diagnosis", "skin_group", "ita_degrees", "bias_warning", "rejection_code",
        "rejection_detail", "retake_advice", "error_code", "error_detail", "age", "sex", "site", "completed_at",
        "disposition", "disposition_reasons",
    )
    assert set(triage.CSV_COLUMNS) == set(TriageItem.model_fields)


def test_rows_take_the_rules_from_the_one_home():
    rows = [_row(), _row(probability=0.9, weights="trained"), _row(weights="synthetic", group="dark"),
            _row("rejected", weights="untrained", code="no_lesion")]
    items = [r.as_item(rank) for rank, r in enumerate(rows, 1)]
    assert [i.weights for i in items] == ["untrained", "trained", "synthetic", "untrained"]
    assert items[0].review_reason == "weights_not_trained" and items[1].needs_review is False
    assert items[2].review_reason == "bias_warning;weights_not_trained"
    assert items[3].retake_advice == clinical.retake_advice("no_lesion") and items[3].probability is None
    summary = triage.TriageSummary()
    for r, item in zip(rows, items, strict=True):
        summary.add(r, item)
    body = summary.out()
    assert body.weights == {"untrained": 1, "synthetic": 1, "trained": 1}
    assert body.weights_warning is not None
    assert body.weights_warning.startswith("UNTRAINED MODEL — ranking by probability is not meaningful")
    assert {g.skin_group: g.bias_warning for g in body.equity} == {"tan": False, "dark": True}
    assert body.retake == {"no_lesion": 1} and body.total == 4 and body.counts.succeeded == 3


def test_the_models_own_threshold_decides_the_review_margin():
    """The provenance's operating threshold (a validated model's) moves the near-threshold rule."""
    near_default = _row(probability=0.52, weights="trained")
    assert "near_threshold" in near_default.review_reasons()
    own = _row(probability=0.52, weights="trained", model=model(threshold=0.2))
    assert "near_threshold" not in own.review_reasons()


def test_an_item_without_a_model_or_result_has_no_weights_and_empty_result_columns():
    queued = _row("queued", weights=None, completed_at=None).as_item(1)
    assert (queued.weights, queued.risk_band, queued.ita_degrees, queued.completed_at) == (None, None, None, None)
    assert queued.needs_review is False and queued.retake_advice is None


def test_isic_rows_use_isics_names_and_leave_unknowns_empty():
    succeeded = _row(probability=0.91, weights="trained", external_id="ISIC_0000001", age=62, sex="male",
                     site="torso", ita=12.345)
    row = succeeded.as_isic(1)
    assert list(row) == list(triage.ISIC_COLUMNS)
    assert (row["image_name"], row["target"], row["age_approx"], row["sex"]) == ("ISIC_0000001", 0.91, 60, "male")
    assert row["anatom_site_general_challenge"] == "torso" and row["ita_degrees"] == 12.35
    rejected = _row("rejected", code="blurry").as_isic(2)
    assert rejected["image_name"] == str(rejected["analysis_id"]) and rejected["target"] is None
    assert rejected["sex"] is None and rejected["anatom_site_general_challenge"] is None


def test_the_csv_is_formula_safe_and_numbers_stay_numbers():
    rows = [_row(probability=0.9, ita=-41.7, group="dark"), _row("rejected", code="blurry", external_id="=cmd",
                                                                  rejection_detail="-1+1")]
    text = "".join(triage.triage_csv(rows, flush_every=1))
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [r["rank"] for r in parsed] == ["1", "2"]
    assert parsed[0]["ita_degrees"] == "-41.7" and parsed[0]["probability"] == "0.9"
    assert parsed[1]["external_id"] == "'=cmd" and parsed[1]["rejection_detail"] == "'-1+1"


# ---------------------------------------------------------------- issue 21: the disposition


def _decided(disposition: str | None, reasons: list[str], probability: float = 0.3, weights: str = "trained"):
    """A row whose result recorded this disposition (None: stored before dispositions existed)."""
    row = _row(probability=probability, weights=weights)
    assert row.result is not None
    stored = row.result.model_copy(update={"disposition": disposition, "disposition_reasons": reasons})
    return triage.TriageRow(**{**row.__dict__, "result": lifecycle.shown_result(stored, row.model)})


def test_items_carry_the_disposition_and_its_reasons_in_json_csv_and_isic():
    rows = [
        _decided("urgent_referral", ["high_probability", "diameter_over_6mm"], 0.93),
        _decided("routine", ["below_rule_out"], 0.02),
        _row(probability=0.95, weights="untrained"),
        _decided(None, [], 0.4),
        _row("rejected", code="blurry"),
    ]
    items = [r.as_item(rank) for rank, r in enumerate(rows, 1)]
    assert [(i.disposition, i.disposition_reasons) for i in items] == [
        ("urgent_referral", "high_probability;diameter_over_6mm"),
        ("routine", "below_rule_out"),
        ("clinician_review", "weights_not_trained"),  # untrained: never urgent, whatever the probability
        (None, None),  # stored before dispositions: none is invented
        (None, None),  # a rejection has no disposition
    ]
    parsed = list(csv.DictReader(io.StringIO("".join(triage.triage_csv(rows)))))
    assert [(r["disposition"], r["disposition_reasons"]) for r in parsed] == [
        (i.disposition or "", i.disposition_reasons or "") for i in items
    ]
    isic = list(csv.DictReader(io.StringIO("".join(triage.triage_csv(rows, isic=True)))))
    assert {"weights", "disposition", "disposition_reasons", "predicted_diagnosis"} <= set(isic[0])
    assert [(r["weights"], r["disposition"]) for r in isic[:3]] == [
        ("trained", "urgent_referral"), ("trained", "routine"), ("untrained", "clinician_review")
    ]
    assert all(r["weights"] for r in isic if r["predicted_diagnosis"]), "never a diagnosis without its weights"


def test_the_summary_counts_results_per_disposition():
    rows = [
        _decided("urgent_referral", ["high_probability"], 0.93),
        _decided("urgent_referral", ["high_probability"], 0.88),
        _decided("routine", ["below_rule_out"], 0.02),
        _row(probability=0.95, weights="untrained"),
        _row(probability=0.05, weights="synthetic"),
        _decided(None, [], 0.4),
        _row("rejected", code="blurry"),
    ]
    summary = triage.TriageSummary()
    for rank, row in enumerate(rows, 1):
        summary.add(row, row.as_item(rank))
    out = summary.out()
    assert out.dispositions.model_dump() == {"urgent_referral": 2, "clinician_review": 2, "routine": 1}
    assert out.model_dump(mode="json", exclude_unset=True)["dispositions"] == out.dispositions.model_dump(), (
        "every disposition is sent, zeros included"
    )


def test_the_risk_order_groups_by_disposition_first():
    """The SQL orders by the shown disposition (lifecycle.shown_disposition) before the status
    sections and the probability; the database test (tests/api/services) runs it."""
    dialect = postgresql.dialect()
    query = triage._triage_query(uuid.uuid4(), "risk")
    sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    order = sql[sql.index("ORDER BY"):]
    first, rest = order.split("ELSE 3 END", 1)
    assert "analyses.shown_disposition" in first  # the generated column, not the JSON
    assert first.index("'urgent_referral' THEN 0") < first.index("'clinician_review' THEN 1")
    assert first.index("'clinician_review' THEN 1") < first.index("'routine' THEN 2")
    assert rest.index("analyses.status = 'succeeded'") < rest.index("analyses.probability DESC")
    submitted = str(triage._triage_query(uuid.uuid4(), "submitted").compile(dialect=dialect))
    assert "disposition" not in submitted[submitted.index("ORDER BY"):]


@pytest.mark.parametrize("external_id", ["../../etc/passwd", "..", ".hidden", "C:evil", "a b", "=cmd", "-x"])
def test_the_isic_image_name_is_never_an_external_id_that_is_no_plain_file_name(external_id):
    """Issue 25: stored ids from before the tighter pattern, or from another writer, too."""
    analysis_id = uuid.uuid4()
    assert triage.isic_image_name(external_id, analysis_id) == str(analysis_id)


def test_the_isic_image_name_is_a_plain_external_id_as_it_is():
    analysis_id = uuid.uuid4()
    assert triage.isic_image_name("ISIC_0000001", analysis_id) == "ISIC_0000001"
    assert triage.isic_image_name("visit-8812.2", analysis_id) == "visit-8812.2"
    assert triage.isic_image_name(None, analysis_id) == str(analysis_id)
