"""The API's views are typed models (shared.lifecycle, api.routes): what was not set stays off
the wire, exactly as when they were dicts. Pure unit tests on unsaved rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from api.routes import analyses as routes
from shared import clinical, lifecycle
from shared.config import Settings
from shared.events import EVENT_TYPES
from shared.schemas import AnalysisOut, AnalysisRecord, AnalysisSummary, AnalysisWebhook
from shared.tables import Analysis, WebhookEndpoint
from tests.factories import UNTRAINED_MODEL, disposition_of, model, record_data, result

NOW = datetime(2026, 11, 28, 3, 12, tzinfo=UTC)
SETTINGS = Settings(_env_file=None)
STORED_RESULT = result().model_dump(mode="json", exclude={"uncertainty_level"})
STORED_MODEL = model(**UNTRAINED_MODEL).model_dump(mode="json")


class _Store:
    settings = SETTINGS

    def presigned_get(self, bucket: str, key: str) -> str:
        return f"http://s3.local/{bucket}/{key}?sig"


class _Context:
    settings = SETTINGS
    store = _Store()


def _row(**fields) -> Analysis:
    base = dict(
        id=uuid.uuid4(), tenant_id=uuid.uuid4(), batch_id=None, external_id=None, priority="interactive",
        status="queued", stage=None, attempt=0, age=None, sex="unknown", site="unknown", pixel_spacing_mm=None,
        created_at=NOW, started_at=None, completed_at=None, updated_at=NOW, image_key="i", image_sha256="ab" * 32,
        image_content_type="image/jpeg", image_width=400, image_height=300, mask_key=None, overlay_key=None,
        result=None, rejection=None, error=None, model=None, deadline_at=None, cancel_reason=None,
        reprocessed_from=None,
    )
    return Analysis(**{**base, **fields})


def _view(monkeypatch, analysis: Analysis) -> dict:
    monkeypatch.setattr(routes.service, "report_for", lambda session, ident: None)
    monkeypatch.setattr(routes.service, "feedback_for", lambda session, ident: [])
    return routes.json_body(routes.view(_Context(), None, analysis))


def test_a_succeeded_analysis_shows_its_typed_result_provenance_and_links(monkeypatch):
    analysis = _row(status="succeeded", result=STORED_RESULT, model=STORED_MODEL, mask_key="m", overlay_key="o")
    body = _view(monkeypatch, analysis)
    assert body["result"] == {
        **STORED_RESULT, "uncertainty_level": "low", "notice": clinical.UNTRAINED_BANNER,
        "disposition": "clinician_review", "disposition_reasons": ["weights_not_trained"],
    }
    assert body["model"]["banner"] and body["weights"] == "untrained"
    assert set(body["artifacts"]) == {"image", "mask", "overlay", "expires_at"}
    assert body["links"]["report"].endswith(f"/v1/analyses/{analysis.id}/report.pdf")
    assert body["report"] == {"ready": False, "created_at": None} and body["feedback"] == []
    assert "webhook" not in body, "only a submission's answer names its webhook"


def test_what_does_not_apply_is_left_out_not_null(monkeypatch):
    """A rejection names where it happened only when ingest refused it; a direct upload not
    yet ingested has no image link; artifacts that do not exist are not listed."""
    gate = _view(monkeypatch, _row(status="rejected", rejection={"code": "blurry", "detail": "d", "scores": None}))
    assert set(gate["rejection"]) == {"code", "detail", "scores", "advice"}
    ingest = _view(monkeypatch, _row(status="rejected", image_sha256="",
                                     rejection={"code": "unreadable_image", "detail": "d", "at": "ingest"}))
    assert ingest["rejection"]["at"] == "ingest" and set(ingest["artifacts"]) == {"expires_at"}


def test_a_submissions_answer_carries_its_webhook(monkeypatch):
    monkeypatch.setattr(routes.service, "report_for", lambda session, ident: None)
    monkeypatch.setattr(routes.service, "feedback_for", lambda session, ident: [])
    hook = AnalysisWebhook(id=uuid.uuid4(), url="https://hooks.example/x", events=[], secret="whsec_x")
    answer = routes.view(_Context(), None, _row()).model_copy(update={"webhook": hook})
    assert routes.json_body(answer)["webhook"] == {"id": str(hook.id), "url": hook.url, "events": [],
                                                   "secret": "whsec_x"}


def test_the_summary_is_the_record_without_its_provenance():
    analysis = _row(status="succeeded", result=STORED_RESULT, model=STORED_MODEL)
    record = lifecycle.analysis_record(analysis)
    summary = lifecycle.analysis_summary(analysis)
    assert type(record) is AnalysisRecord and type(summary) is AnalysisSummary
    sent = summary.model_dump(mode="json", exclude_unset=True)
    assert "model" not in sent and sent["weights"] == "untrained"
    # Provenance: the model's, and (issue 23) the DICOM instance the image came from.
    provenance = {"model", "dicom_source"}
    assert sent == {k: v for k, v in record.model_dump(mode="json", exclude_unset=True).items() if k not in provenance}


def test_narrowing_keeps_unset_fields_unset():
    record = lifecycle.analysis_record(_row(status="succeeded", result=STORED_RESULT, model=STORED_MODEL))
    out = AnalysisOut(**lifecycle.fields_for(AnalysisOut, record), updated_at="2026-11-28T03:12:00Z",
                      links=lifecycle.links(SETTINGS, record.id),
                      artifacts={"expires_at": "2026-11-28T03:17:00Z"}, report={"ready": False, "created_at": None},
                      feedback=[])
    assert "webhook" not in out.model_fields_set
    assert out.result == record.result and out.model == record.model


def test_event_payloads_set_only_what_applies():
    succeeded = lifecycle.event_data(SETTINGS, _row(status="succeeded", result=STORED_RESULT, model=STORED_MODEL))
    sent = succeeded.model_dump(mode="json", exclude_unset=True)
    assert set(sent) == {"id", "status", "external_id", "batch_id", "links", "result", "weights"}
    assert set(sent["result"]) == {
        "diagnosis", "probability", "uncertainty", "risk_band", "disposition", "disposition_reasons"
    }
    assert (sent["result"]["disposition"], sent["weights"]) == ("clinician_review", "untrained")
    canceled = lifecycle.event_data(SETTINGS, _row(status="canceled", cancel_reason="expired"))
    assert canceled.model_dump(mode="json", exclude_unset=True)["reason"] == "expired"
    assert {"result", "weights", "rejection", "error"}.isdisjoint(canceled.model_fields_set)
    rejected = lifecycle.event_data(SETTINGS, _row(status="rejected", rejection={"code": "blurry", "detail": "d"}))
    assert rejected.rejection is not None and rejected.rejection.advice
    failed = lifecycle.event_data(SETTINGS, _row(status="failed", error={"code": "internal", "detail": "d"}))
    assert failed.model_dump(mode="json", exclude_unset=True)["error"] == {"code": "internal"}
    assert f"analysis.{failed.status}" in EVENT_TYPES


# ---------------------------------------------------------------- issue 21: notice and disposition

SYNTHETIC_MODEL = model(**{**UNTRAINED_MODEL, "weights": "synthetic"}).model_dump(mode="json")
TRAINED_MODEL = model().model_dump(mode="json")


def _succeeded(stored_model: dict | None, **result_changes) -> Analysis:
    stored = result(**result_changes).model_dump(mode="json", exclude={"uncertainty_level"})
    return _row(status="succeeded", result=stored, model=stored_model, age=63, sex="male", site="torso")


def _decided(weights_model: dict, **result_changes) -> dict:
    """A result's recorded disposition, decided by the clinical rules as the pipeline decides it."""
    data = record_data(result=result_changes, model=weights_model)
    return {**result_changes, **disposition_of(data)}


def test_every_result_from_weights_that_are_not_trained_carries_the_notice_beside_its_diagnosis(monkeypatch):
    cases = {
        "untrained": (STORED_MODEL, clinical.UNTRAINED_BANNER),
        "synthetic": (SYNTHETIC_MODEL, clinical.weights_banner("synthetic")),
        "no provenance": (None, clinical.weights_banner(clinical.UNKNOWN_WEIGHTS)),
    }
    for name, (stored_model, banner) in cases.items():
        analysis = _succeeded(stored_model)
        assert banner and "not clinically meaningful" in banner, name
        single = _view(monkeypatch, analysis)["result"]
        listed = lifecycle.analysis_summary(analysis).model_dump(mode="json", exclude_unset=True)["result"]
        event = lifecycle.event_data(SETTINGS, analysis)
        for shown in (single, listed):
            assert shown["notice"] == banner and shown["diagnosis"] == "melanoma", name
            assert shown["disposition"] == "clinician_review", name
            assert shown["disposition_reasons"][0] == "weights_not_trained", name
            assert shown["safety_netting"] is None, name
        assert event.result is not None and event.result.disposition == "clinician_review", name


def test_a_trained_result_has_a_null_notice_and_its_recorded_disposition(monkeypatch):
    urgent = _view(monkeypatch, _succeeded(TRAINED_MODEL, **_decided(TRAINED_MODEL)))["result"]
    assert "notice" in urgent and urgent["notice"] is None, "sent, as null: the weights are trained"
    assert urgent["disposition"] == "urgent_referral" and urgent["disposition_reasons"][0] == "high_probability"
    low = dict(probability=0.02, risk_band="low", diagnosis="benign", uncertainty=0.01,
               concepts={"diameter_mm": 3.1})
    routine = _view(monkeypatch, _succeeded(TRAINED_MODEL, **_decided(TRAINED_MODEL, **low)))["result"]
    assert (routine["disposition"], routine["notice"]) == ("routine", None)
    assert routine["safety_netting"] == clinical.disposition.SAFETY_NETTING
    event = lifecycle.event_data(SETTINGS, _succeeded(TRAINED_MODEL, **_decided(TRAINED_MODEL, **low)))
    assert event.result is not None and event.result.disposition == "routine"
    assert event.result.disposition_reasons == ["below_rule_out"] and event.weights == "trained"


def test_a_result_stored_before_dispositions_is_never_shown_routine(monkeypatch):
    """Trained: its review reasons were not recorded, so the API shows none (null), never a guess;
    untrained: always clinician review, as every report says."""
    legacy = dict(disposition=None, disposition_reasons=[], safety_netting=None)
    trained = _view(monkeypatch, _succeeded(TRAINED_MODEL, probability=0.02, **legacy))["result"]
    assert (trained["disposition"], trained["disposition_reasons"], trained["notice"]) == (None, [], None)
    untrained = _view(monkeypatch, _succeeded(STORED_MODEL, probability=0.02, **legacy))["result"]
    assert (untrained["disposition"], untrained["disposition_reasons"]) == ("clinician_review", ["weights_not_trained"])


def test_untrained_output_is_never_shown_routine_or_urgent_whatever_was_stored(monkeypatch):
    """A stored routine or urgent disposition beside untrained weights (a row written by hand, or
    by a pipeline that erred) is shown as clinician review, without reasons read off the output."""
    for claimed, reasons in (("routine", ["below_rule_out"]), ("urgent_referral", ["high_probability",
                                                                                   "near_threshold"])):
        shown = _view(monkeypatch, _succeeded(STORED_MODEL, disposition=claimed, disposition_reasons=reasons,
                                              safety_netting="come back"))["result"]
        assert shown["disposition"] == "clinician_review", claimed
        assert shown["disposition_reasons"] == ["weights_not_trained"] and shown["safety_netting"] is None


def test_an_endpoint_without_a_filter_lists_every_event_it_receives():
    """Issue 25: an endpoint that receives every event showed `"events": []`."""
    from api.routes.webhook_endpoints import view
    from api.services.webhook_endpoints import ANALYSIS_EVENT_TYPES

    def endpoint(**fields) -> WebhookEndpoint:
        return WebhookEndpoint(id=uuid.uuid4(), url="https://hooks.example/x", description=None, enabled=True,
                               created_at=NOW, **fields)

    assert view(endpoint(events=[])).events == list(EVENT_TYPES)
    assert view(endpoint(events=None)).events == list(EVENT_TYPES)
    assert view(endpoint(events=["batch.completed"])).events == ["batch.completed"]
    per_request = endpoint(events=[], analysis_id=uuid.uuid4())
    assert view(per_request).events == list(ANALYSIS_EVENT_TYPES) and "batch.completed" not in view(per_request).events
