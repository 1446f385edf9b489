"""``GET /v1/batches/{id}/results?format=isic``: ISIC challenge-style CSV from the real API and
Postgres: ``image_name`` and ``target`` first, ISIC's metadata names, our fields (weights
first among them), one row per item, formula-safe."""

from __future__ import annotations

import csv
import io
import itertools
import uuid
from datetime import timedelta

from shared.clock import utcnow
from shared.db import session_scope
from shared.tables import Analysis
from tests.e2e.seeding import model_for, result_for

HEADER = [
    "image_name", "target", "weights", "analysis_id", "external_id", "status", "risk_band", "uncertainty",
    "needs_review", "review_reason", "predicted_diagnosis", "sex", "age_approx", "anatom_site_general_challenge",
    "skin_group", "ita_degrees", "bias_warning", "rejection_code", "error_code", "completed_at",
    "disposition", "disposition_reasons",
]


_CLOCK = itertools.count()


def _item(session, tenant_id, batch_id, external_id, status, probability=None, **fields) -> str:
    now_fields = {}
    if status == "succeeded":
        now_fields = {"result": result_for(probability), "probability": probability, "model": model_for("untrained")}
    analysis = Analysis(
        tenant_id=tenant_id, batch_id=batch_id, external_id=external_id, priority="bulk", status=status,
        image_key=f"tenants/{tenant_id}/{uuid.uuid4()}.jpg", image_sha256="0" * 64, image_content_type="image/jpeg",
        image_width=10, image_height=10, created_at=utcnow() + timedelta(seconds=next(_CLOCK)),
        **now_fields, **fields,
    )
    session.add(analysis)
    session.flush()
    return str(analysis.id)


def test_isic_csv_has_the_isic_columns_and_one_row_per_item(api, tenant_key, context):
    batch = api.post("/v1/batches", json={"name": "isic"}).json()
    batch_id = uuid.UUID(batch["id"])
    with session_scope(context.session_factory) as session:
        high = _item(session, tenant_key[0], batch_id, "lesion-001", "succeeded", 0.91, age=52, sex="female",
                     site="torso")
        low = _item(session, tenant_key[0], batch_id, None, "succeeded", 0.12, age=33)
        blurry = _item(session, tenant_key[0], batch_id, "lesion-003", "rejected", sex="male", site="palms/soles",
                       rejection={"code": "blurry", "detail": "too blurry"})
        formula = _item(session, tenant_key[0], batch_id, '=HYPERLINK("http://evil.example","x")', "succeeded", 0.55)

    response = api.get(f"/v1/batches/{batch['id']}/results", params={"format": "isic"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="isic-{batch["id"]}.csv"' in response.headers["content-disposition"]
    reader = csv.DictReader(io.StringIO(response.text))
    assert reader.fieldnames == HEADER
    rows = list(reader)
    assert len(rows) == 4, "one row per item"
    by_id = {r["analysis_id"]: r for r in rows}
    assert [r["analysis_id"] for r in rows] == [high, formula, low, blurry], "triage order (risk) by default"

    assert by_id[high]["image_name"] == "lesion-001", "external_id when the item has one"
    assert by_id[low]["image_name"] == low, "else the analysis id"
    assert by_id[formula]["image_name"] == formula, "an external id that is no plain file name is not used"
    assert by_id[formula]["external_id"].startswith("'="), "formula-safe"
    assert float(by_id[high]["target"]) == 0.91 and float(by_id[low]["target"]) == 0.12
    assert by_id[blurry]["target"] == "" and by_id[blurry]["status"] == "rejected"
    assert by_id[blurry]["rejection_code"] == "blurry"
    assert {by_id[i]["weights"] for i in (high, low, formula)} == {"untrained"}
    assert by_id[high]["needs_review"] == "true"  # untrained weights are always for review
    assert (by_id[high]["sex"], by_id[high]["age_approx"], by_id[high]["anatom_site_general_challenge"]) == (
        "female", "50", "torso")
    assert (by_id[low]["sex"], by_id[low]["age_approx"], by_id[low]["anatom_site_general_challenge"]) == (
        "", "35", ""), "unknown metadata is an empty cell, as in ISIC's files"
    assert by_id[blurry]["anatom_site_general_challenge"] == "palms/soles"
    assert by_id[high]["predicted_diagnosis"] == "melanoma" and by_id[low]["predicted_diagnosis"] == "benign"
    # Issue 21: the disposition beside the weights; untrained output is clinician review, always.
    assert {by_id[i]["disposition"] for i in (high, low, formula)} == {"clinician_review"}
    assert by_id[high]["disposition_reasons"].split(";")[0] == "weights_not_trained"
    assert by_id[blurry]["disposition"] == "" and by_id[blurry]["disposition_reasons"] == ""
    assert all(r["weights"] for r in rows if r["predicted_diagnosis"]), "never a diagnosis without its weights"

    submitted = api.get(f"/v1/batches/{batch['id']}/results", params={"format": "isic", "order": "submitted"})
    assert [r["analysis_id"] for r in csv.DictReader(io.StringIO(submitted.text))] == [high, low, blurry, formula]
    assert api.get(f"/v1/batches/{batch['id']}/results", params={"format": "xlsx"}).status_code == 422


def test_isic_csv_of_an_empty_batch_is_the_header(api):
    batch = api.post("/v1/batches", json={"name": "empty"}).json()
    response = api.get(f"/v1/batches/{batch['id']}/results", params={"format": "isic"})
    assert response.status_code == 200
    assert response.text.strip() == ",".join(HEADER)
