"""FHIR Subscriptions (issue 23), without services: what a posted Subscription becomes, the
filters, and the notification Bundles (validated with fhir.resources R4B)."""

from __future__ import annotations

import copy
import uuid
from datetime import timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.subscription import Subscription
from fhir.resources.R4B.subscriptionstatus import SubscriptionStatus
from fhir.resources.R4B.subscriptiontopic import SubscriptionTopic

from shared import fhir_subscriptions as fs
from shared.clock import iso, utcnow
from tests.factories import high_risk_trained
from worker.reporting import fhir as report_fhir
from worker.reporting.fhir import BundleLinks, build_fhir_bundle

BATCH = "0b6f1c9e-2f4e-4a57-9c55-2d5d3e1b7f00"
OTHER_BATCH = "9a7e55a4-0c1b-4a3e-8a34-8c5bd1f0a001"
LINKS = BundleLinks(report="https://api.example.test/r.pdf", image="https://api.example.test/i")


def subscription(**changes) -> dict:
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "EHR inbox",
        "criteria": fs.ANALYSIS_FINALIZED.url,
        "_criteria": {"extension": [{"url": fs.FILTER_CRITERIA, "valueString": f"DiagnosticReport?batch={BATCH}"}]},
        "channel": {
            "extension": [{"url": fs.HEARTBEAT_PERIOD, "valueUnsignedInt": 60}],
            "type": "rest-hook",
            "endpoint": "https://ehr.example.org/notify",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": fs.PAYLOAD_CONTENT, "valueCode": "full-resource"}]},
            "header": ["Authorization: Bearer abc"],
        },
    }
    for path, value in changes.items():
        node = body
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return body


def test_a_posted_subscription_becomes_config_and_sealed_headers():
    parsed = fs.parse_subscription(subscription())
    assert parsed.endpoint == "https://ehr.example.org/notify"
    assert parsed.topic is fs.ANALYSIS_FINALIZED
    assert parsed.headers == ["Authorization: Bearer abc"]
    config = parsed.config
    assert (config.content, config.heartbeat_period, config.r4) == ("full-resource", 60, False)
    assert config.filters == [f"DiagnosticReport?batch={BATCH}"] and config.criteria == [{"batch": [BATCH]}]
    stored = config.model_dump(mode="json")
    assert "Bearer" not in str(stored), "headers may carry credentials: never in config"
    assert fs.headers_of(fs.seal_headers(parsed.headers)) == {"Authorization": "Bearer abc"}
    # Shown again without its headers, and valid as an R4B Subscription.
    shown = fs.subscription_resource(uuid.uuid4(), parsed.endpoint, config, "active")
    Subscription.model_validate(shown)
    assert "header" not in shown["channel"]
    assert shown["_criteria"]["extension"][0]["valueString"] == f"DiagnosticReport?batch={BATCH}"
    assert shown["channel"]["_payload"]["extension"][0]["valueCode"] == "full-resource"


def test_defaults_and_the_r4_form():
    parsed = fs.parse_subscription(subscription(**{"channel._payload": None, "channel.header": None,
                                                  "channel.extension": None, "_criteria": None,
                                                  "channel.payload": "application/fhir+json;fhirVersion=4.0"}))
    assert parsed.config.content == fs.DEFAULT_CONTENT == "id-only"
    assert parsed.config.r4 and parsed.headers == [] and parsed.config.criteria == []


@pytest.mark.parametrize(("changes", "code", "words"), [
    ({"criteria": "https://example.org/SubscriptionTopic/admission"}, "not-supported", "SubscriptionTopic"),
    ({"channel.type": "websocket"}, "not-supported", "rest-hook"),
    ({"channel.endpoint": None}, "required", "endpoint"),
    ({"channel.payload": "application/fhir+xml"}, "not-supported", "payload"),
    ({"channel._payload": {"extension": [{"url": fs.PAYLOAD_CONTENT, "valueCode": "everything"}]}},
     "not-supported", "content"),
    ({"channel.extension": [{"url": fs.HEARTBEAT_PERIOD, "valueUnsignedInt": 1}]}, "invalid", "heartbeat"),
    ({"channel.header": ["Host: evil.example"]}, "invalid", "set by the server"),
    ({"channel.header": ["no colon here"]}, "invalid", "Name: value"),
    ({"status": "off"}, "invalid", "requested"),
    ({"reason": None}, "structure", "reason"),
    ({"bogus": 1}, "structure", "bogus"),
    ({"end": iso(utcnow() - timedelta(days=1))}, "invalid", "past"),
    ({"_criteria": {"extension": [{"url": fs.FILTER_CRITERIA, "valueString": "Encounter?patient=Patient/1"}]}},
     "not-supported", "DiagnosticReport"),
])
def test_what_is_refused_and_why(changes, code, words):
    with pytest.raises(fs.InvalidSubscription) as refused:
        fs.parse_subscription(subscription(**changes))
    assert refused.value.code == code
    assert words.lower() in str(refused.value).lower()


def test_not_a_subscription_at_all():
    for body in ([], {"resourceType": "Patient"}, "text"):
        with pytest.raises(fs.InvalidSubscription):
            fs.parse_subscription(body)


@pytest.mark.parametrize(("text", "parsed"), [
    (f"DiagnosticReport?batch={BATCH}", {"batch": [BATCH]}),
    (f"Analysis?batch={BATCH},{OTHER_BATCH}", {"batch": [BATCH, OTHER_BATCH]}),
    (f"batch={BATCH.upper()}", {"batch": [BATCH]}),
    ("DiagnosticReport?patient=Patient/123", {"patient": ["Patient/123"]}),
    ("?subject=https://ehr.example.org/fhir/Patient/9", {"patient": ["https://ehr.example.org/fhir/Patient/9"]}),
    (f"DiagnosticReport?batch={BATCH}&patient=Patient/1", {"batch": [BATCH], "patient": ["Patient/1"]}),
])
def test_filter_criteria(text, parsed):
    assert fs.parse_filter(text) == parsed


@pytest.mark.parametrize("text", ["DiagnosticReport?status=final", "DiagnosticReport?batch=nope",
                                  "DiagnosticReport?batch=", "Patient?batch=" + BATCH, "DiagnosticReport?"])
def test_filter_criteria_refused(text):
    with pytest.raises(fs.InvalidSubscription):
        fs.parse_filter(text)


def _config(*filters: str) -> fs.SubscriptionConfig:
    return fs.SubscriptionConfig(topic=fs.ANALYSIS_FINALIZED.url, filters=list(filters),
                                 criteria=[fs.parse_filter(f) for f in filters])


def test_filters_by_batch_and_patient():
    in_batch = {"data": {"id": str(uuid.uuid4()), "batch_id": BATCH}}
    elsewhere = {"data": {"id": str(uuid.uuid4()), "batch_id": OTHER_BATCH}}
    loose = {"data": {"id": str(uuid.uuid4()), "batch_id": None}}
    assert fs.passes_filters(_config(), in_batch) and fs.passes_filters(_config(), loose)
    by_batch = _config(f"DiagnosticReport?batch={BATCH}")
    assert fs.passes_filters(by_batch, in_batch)
    assert not fs.passes_filters(by_batch, elsewhere) and not fs.passes_filters(by_batch, loose)
    # The patient reference travels as data.patient_reference when the submission gave one;
    # an event without it matches no patient filter.
    by_patient = _config("DiagnosticReport?patient=Patient/1,Patient/2")
    assert not fs.passes_filters(by_patient, in_batch)
    with_patient = copy.deepcopy(in_batch)
    with_patient["data"]["patient_reference"] = "Patient/2"
    assert fs.passes_filters(by_patient, with_patient)
    with_patient["data"]["patient_reference"] = "Patient/3"
    assert not fs.passes_filters(by_patient, with_patient)
    both = _config(f"DiagnosticReport?batch={BATCH}", "DiagnosticReport?patient=Patient/3")
    assert fs.passes_filters(both, with_patient)
    with_patient["data"]["batch_id"] = OTHER_BATCH
    assert not fs.passes_filters(both, with_patient), "every filter must hold"


def test_our_report_urls_are_the_report_bundles():
    assert fs.REPORT_NAMESPACE == report_fhir.FULL_URL_NAMESPACE
    assert fs.ANALYSIS_ID_SYSTEM == report_fhir.ANALYSIS_ID_SYSTEM
    record = high_risk_trained()
    bundle = build_fhir_bundle(record, LINKS)
    report = bundle["entry"][0]
    assert report["resource"]["resourceType"] == "DiagnosticReport"
    assert report["fullUrl"] == fs.report_full_url(record.id)


def _status(**changes) -> fs.NotificationStatus:
    fields = {"subscription_url": "https://api.example.test/fhir/Subscription/1", "topic": fs.REPORT_READY.url,
              "status": "active", "type": "event-notification", "events_since_start": 3, **changes}
    return fs.NotificationStatus(**fields)


def _event(number: int = 3, with_report: bool = True) -> tuple[fs.TopicEvent, dict]:
    record = high_risk_trained()
    bundle = build_fhir_bundle(record, LINKS)
    payload = {"type": "analysis.report_ready", "timestamp": "2026-12-06T05:00:00Z",
               "data": {"id": str(record.id), "status": "succeeded"}}
    return fs.topic_event(number, payload, "analysis.report_ready", bundle if with_report else None), bundle


def test_an_id_only_notification_is_an_r4b_history_bundle_with_the_status_first():
    event, _ = _event()
    bundle = fs.notification_bundle(_status(), [event], "id-only")
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "history" and bundle["meta"]["profile"] == [fs.NOTIFICATION_PROFILE]
    first = bundle["entry"][0]
    status = SubscriptionStatus.model_validate(first["resource"])
    assert (status.type, status.status, status.topic) == ("event-notification", "active", fs.REPORT_READY.url)
    assert status.eventsSinceSubscriptionStart == "3"
    (notified,) = status.notificationEvent
    assert notified.eventNumber == "3" and notified.focus.reference == fs.report_full_url(event.analysis_id)
    assert notified.focus.identifier.value == str(event.analysis_id)
    assert first["request"]["url"].endswith("/Subscription/1/$status")
    # id-only: the focus' fullUrl, no resource.
    assert [e["fullUrl"] for e in bundle["entry"][1:]] == [fs.report_full_url(event.analysis_id)]
    assert "resource" not in bundle["entry"][1]


def test_full_resource_carries_the_report_and_empty_nothing():
    event, report = _event()
    full = fs.notification_bundle(_status(), [event], "full-resource")
    Bundle.model_validate(full)
    resources = [e["resource"] for e in full["entry"][1:]]
    assert resources[0]["resourceType"] == "DiagnosticReport"
    assert len(resources) == len(report["entry"])
    assert all(e["request"]["method"] == "POST" and e["response"]["status"] == "201" for e in full["entry"][1:])
    context = full["entry"][0]["resource"]["notificationEvent"][0]["additionalContext"]
    assert len(context) == len(report["entry"]) - 1
    # Before the report exists, full-resource falls back to the focus alone.
    early, _ = _event(with_report=False)
    assert "resource" not in fs.notification_bundle(_status(), [early], "full-resource")["entry"][1]
    empty = fs.notification_bundle(_status(), [event], "empty")
    Bundle.model_validate(empty)
    assert len(empty["entry"]) == 1 and "focus" not in empty["entry"][0]["resource"]["notificationEvent"][0]


def test_the_r4_form_carries_parameters():
    event, _ = _event(number=7)
    bundle = fs.notification_bundle(_status(r4=True, events_since_start=7), [event], "id-only")
    Bundle.model_validate(bundle)
    assert bundle["meta"]["profile"] == [fs.NOTIFICATION_PROFILE_R4]
    parameters = Parameters.model_validate(bundle["entry"][0]["resource"])
    values = {p.name: p for p in parameters.parameter}
    assert values["topic"].valueCanonical == fs.REPORT_READY.url
    assert values["type"].valueCode == "event-notification"
    assert values["events-since-subscription-start"].valueString == "7"
    parts = {p.name: p for p in values["notification-event"].part}
    assert parts["event-number"].valueString == "7"
    assert parts["focus"].valueReference.reference == fs.report_full_url(event.analysis_id)


@pytest.mark.parametrize("r4", [False, True])
def test_handshake_heartbeat_and_status_bundles(r4):
    for kind in ("handshake", "heartbeat"):
        bundle = fs.notification_bundle(_status(type=kind, r4=r4), [], "id-only")
        Bundle.model_validate(bundle)
        assert len(bundle["entry"]) == 1
    status = fs.notification_bundle(_status(type="query-status", r4=r4, status="error", error="failing"), [],
                                    "id-only", bundle_type="searchset")
    parsed = Bundle.model_validate(status)
    assert parsed.type == "searchset" and parsed.entry[0].search.mode == "match"


def test_the_status_of_a_subscription():
    now = utcnow()
    assert fs.subscription_status(True, None, None, now) == "active"
    assert fs.subscription_status(True, now, None, now) == "error"
    assert fs.subscription_status(False, None, None, now) == "off"
    assert fs.subscription_status(True, None, now - timedelta(seconds=1), now) == "off"


def test_capability_statement_and_topics_validate():
    statement = fs.capability_statement("https://api.example.test", "0.1.0")
    parsed = CapabilityStatement.model_validate(statement)
    assert parsed.fhirVersion == "4.3.0" and fs.SERVER_CAPABILITIES in statement["instantiates"]
    (subscriptions,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription"]
    assert {e["valueCanonical"] for e in subscriptions["extension"]} == set(fs.TOPICS)
    assert {o["name"] for o in subscriptions["operation"]} == {"status", "events"}
    for topic in fs.TOPICS.values():
        SubscriptionTopic.model_validate(fs.subscription_topic(topic))
