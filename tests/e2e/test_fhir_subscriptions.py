"""FHIR Subscriptions (issue 23) through the real API, worker and beat, to real loopback
receivers: the /fhir base answers FHIR R4B, notifications validate as R4B history Bundles with
the status first, and they travel the webhooks' outbox, retry schedule and delivery log."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.subscription import Subscription
from fhir.resources.R4B.subscriptionstatus import SubscriptionStatus
from fhir.resources.R4B.subscriptiontopic import SubscriptionTopic
from sqlalchemy import select

from devstack import Receiver
from shared import fhir_subscriptions as fs
from shared.tables import AuditEvent, Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from worker.pipeline.synthetic import encode_jpeg, make_lesion

FHIR_JSON = "application/fhir+json"


@pytest.fixture
def receiver():
    receivers = []

    def make(*script):
        receivers.append(Receiver(*(script or (200,))))
        return receivers[-1]

    yield make
    for r in receivers:
        r.close()


def subscription(endpoint: str, *, topic=fs.ANALYSIS_FINALIZED, content="id-only", filters=(), headers=(),
                 payload=FHIR_JSON) -> dict:
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "EHR inbox",
        "criteria": topic.url,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": payload,
            "_payload": {"extension": [{"url": fs.PAYLOAD_CONTENT, "valueCode": content}]},
        },
    }
    if filters:
        body["_criteria"] = {"extension": [{"url": fs.FILTER_CRITERIA, "valueString": f} for f in filters]}
    if headers:
        body["channel"]["header"] = list(headers)
    return body


def create(api: httpx.Client, body: dict) -> dict:
    response = api.post("/fhir/Subscription", json=body, headers={"content-type": FHIR_JSON})
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    created = response.json()
    Subscription.model_validate(created)
    assert response.headers["location"].endswith(f"/fhir/Subscription/{created['id']}")
    return created


def outcome(response: httpx.Response, status: int) -> dict:
    """The error as a FHIR client gets it: an R4B OperationOutcome, application/fhir+json."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    OperationOutcome.model_validate(body)
    return body["issue"][0]


def submit(api: httpx.Client, seed: int, batch_id: str | None = None, **fields: str) -> str:
    image = encode_jpeg(make_lesion(seed=seed, size=(300, 400), radius_frac=0.2).image)
    data = {"external_id": f"ext-{seed}", "age": "50", **({"batch_id": batch_id} if batch_id else {}), **fields}
    response = api.post("/v1/analyses", files={"image": ("l.jpg", image, "image/jpeg")}, data=data)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def notifications(hook: Receiver, kind: str = "event-notification") -> list[dict]:
    """The Bundles the receiver got whose status (first entry) is of this type, each validated."""
    found = []
    for request in list(hook.requests):
        bundle = json.loads(request.body)
        Bundle.model_validate(bundle)
        first = bundle["entry"][0]["resource"]
        if first["resourceType"] == "Parameters":
            kind_of = next(p["valueCode"] for p in first["parameter"] if p["name"] == "type")
        else:
            kind_of = first["type"]
        if kind_of == kind:
            found.append(bundle)
    return found


def focus_ids(bundle: dict) -> list[str]:
    status = SubscriptionStatus.model_validate(bundle["entry"][0]["resource"])
    return [event.focus.identifier.value for event in status.notificationEvent or [] if event.focus]


def test_metadata_and_topics_are_public_r4b(api_url):
    with httpx.Client(base_url=api_url, timeout=30) as anonymous:
        metadata = anonymous.get("/fhir/metadata")
        assert metadata.status_code == 200 and metadata.headers["content-type"].startswith(FHIR_JSON)
        statement = CapabilityStatement.model_validate(metadata.json())
        assert statement.fhirVersion == "4.3.0"
        assert fs.SERVER_CAPABILITIES in statement.instantiates
        (resource,) = [r for r in statement.rest[0].resource if r.type == "Subscription"]
        assert {i.code for i in resource.interaction} >= {"create", "read", "delete"}
        assert {o.name for o in resource.operation} == {"status", "events"}
        assert {e.valueCanonical for e in resource.extension} == set(fs.TOPICS)

        topics = anonymous.get("/fhir/SubscriptionTopic").json()
        Bundle.model_validate(topics)
        assert {e["resource"]["url"] for e in topics["entry"]} == set(fs.TOPICS)
        topic = anonymous.get("/fhir/SubscriptionTopic/report-ready")
        assert SubscriptionTopic.model_validate(topic.json()).url == fs.REPORT_READY.url
        assert outcome(anonymous.get("/fhir/SubscriptionTopic/admission"), 404)["code"] == "not-found"
        assert outcome(anonymous.get("/fhir/Subscription"), 401)["code"] == "login"


def test_create_read_search_delete(api, receiver, context, tenant_key):
    hook = receiver()
    created = create(api, subscription(hook.url, headers=["Authorization: Bearer secret-ehr-token"]))
    assert created["status"] == "active" and created["criteria"] == fs.ANALYSIS_FINALIZED.url
    assert created["channel"]["endpoint"] == hook.url
    assert "header" not in created["channel"], "the headers may carry credentials: never shown"

    read = api.get(f"/fhir/Subscription/{created['id']}")
    assert read.status_code == 200 and read.json()["id"] == created["id"]
    assert read.headers["cache-control"] == "no-store"
    search = api.get("/fhir/Subscription").json()
    Bundle.model_validate(search)
    assert [e["resource"]["id"] for e in search["entry"]] == [created["id"]]
    assert api.get("/v1/webhook-endpoints").json()["data"] == [], "a Subscription is not a webhook endpoint"
    assert api.get(f"/v1/webhook-endpoints/{created['id']}").status_code == 404

    with context.session_factory() as session:
        row = session.get(WebhookEndpoint, uuid.UUID(created["id"]))
        assert row.kind == "fhir-subscription" and row.events == list(fs.ANALYSIS_FINALIZED.events)
        assert "secret-ehr-token" not in json.dumps(row.config) and "secret-ehr-token" not in row.secret_encrypted
        actions = set(session.execute(select(AuditEvent.action).where(AuditEvent.tenant_id == tenant_key[0]))
                      .scalars())
    assert {"fhir_subscription.create", "fhir_subscription.read", "fhir_subscription.search"} <= actions

    assert api.delete(f"/fhir/Subscription/{created['id']}").status_code == 204
    assert outcome(api.get(f"/fhir/Subscription/{created['id']}"), 404)["code"] == "not-found"
    with context.session_factory() as session:
        left = session.execute(select(Event).where(Event.only_endpoint_id == uuid.UUID(created["id"]))).all()
    assert left == [], "its handshake went with it"


# Metadata, private, IPv4-mapped private: refused as a webhook URL is (loopback is allowed in the tests).
@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://10.0.0.5/hook",
                                 "http://[::ffff:192.168.1.1]/hook"])
def test_a_non_public_endpoint_is_refused_like_a_webhook(api, url):
    issue = outcome(api.post("/fhir/Subscription", json=subscription(url)), 422)
    assert issue["code"] == "security" and "channel.endpoint" in issue["diagnostics"]
    assert api.get("/fhir/Subscription").json().get("total") == 0


def test_what_a_subscription_may_not_be(api, receiver):
    url = receiver().url
    unknown = subscription(url) | {"criteria": "https://example.org/SubscriptionTopic/admission"}
    assert outcome(api.post("/fhir/Subscription", json=unknown), 422)["code"] == "not-supported"
    bad_filter = subscription(url, filters=["DiagnosticReport?status=final"])
    assert "batch" in outcome(api.post("/fhir/Subscription", json=bad_filter), 422)["diagnostics"]
    assert outcome(api.post("/fhir/Subscription", json={"resourceType": "Patient"}), 422)["code"] == "structure"
    assert outcome(api.post("/fhir/Subscription", content=b"[1]", headers={"content-type": FHIR_JSON}), 422)


def test_scope_and_tenant(api, api_url, receiver, context):
    from shared.db import session_scope
    from shared.tenants import issue_key

    created = create(api, subscription(receiver().url))
    viewer = api.post("/v1/api-keys", json={"name": "viewer", "scopes": ["analyses:read"]}).json()["key"]
    with session_scope(context.session_factory) as session:
        _, other_key = issue_key(session, "other-" + created["id"][:8])
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {viewer}"}, timeout=30) as client:
        issue = outcome(client.get(f"/fhir/Subscription/{created['id']}"), 403)
        assert issue["code"] == "forbidden" and "webhooks:manage" in issue["diagnostics"]
        outcome(client.post("/fhir/Subscription", json=subscription(receiver().url)), 403)
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}, timeout=30) as other:
        for path in ("", "/$status", "/$events"):
            outcome(other.get(f"/fhir/Subscription/{created['id']}{path}"), 404)
        outcome(other.delete(f"/fhir/Subscription/{created['id']}"), 404)
        assert other.get("/fhir/Subscription").json()["total"] == 0
    assert api.get(f"/fhir/Subscription/{created['id']}").status_code == 200


def test_analyses_notify_their_subscriptions(api, worker, beat, receiver, wait, context):
    batch_id = api.post("/v1/batches", json={"name": "clinic"}).json()["id"]
    finalized_hook, reports_hook, r4_hook = receiver(), receiver(), receiver()
    finalized = create(api, subscription(finalized_hook.url, filters=[f"DiagnosticReport?batch={batch_id}"],
                                         headers=["Authorization: Bearer ehr-token"]))
    reports = create(api, subscription(reports_hook.url, topic=fs.REPORT_READY, content="full-resource"))
    r4 = create(api, subscription(r4_hook.url, topic=fs.REPORT_READY, payload=f"{FHIR_JSON};fhirVersion=4.0"))
    patient_hook = receiver()
    create(api, subscription(patient_hook.url, topic=fs.REPORT_READY,
                             filters=["DiagnosticReport?patient=Patient/p-77"]))

    in_batch = submit(api, seed=31, batch_id=batch_id, patient_reference="Patient/p-77")
    loose = submit(api, seed=32, patient_reference="Patient/p-78")
    wait(lambda: len(notifications(reports_hook)) == 2, timeout=240, message="both reports notified")
    wait(lambda: len(notifications(r4_hook)) == 2, timeout=60, message="the R4 form's notifications")
    wait(lambda: notifications(finalized_hook), timeout=60, message="the finalized notification")

    # The handshake came first to each, through the outbox.
    for hook in (finalized_hook, reports_hook, r4_hook):
        assert len(notifications(hook, "handshake")) == 1

    # analysis-finalized, filtered by batch, id-only: the analysis in the batch only.
    (notified,) = notifications(finalized_hook)
    status = notified["entry"][0]["resource"]
    assert status["resourceType"] == "SubscriptionStatus"
    assert (status["topic"], status["type"], status["status"]) == (fs.ANALYSIS_FINALIZED.url, "event-notification",
                                                                   "active")
    assert status["subscription"]["reference"].endswith(f"/fhir/Subscription/{finalized['id']}")
    assert status["notificationEvent"][0]["eventNumber"] == "1" and status["eventsSinceSubscriptionStart"] == "1"
    assert focus_ids(notified) == [in_batch]
    assert [e.get("resource") for e in notified["entry"][1:]] == [None], "id-only: the focus' fullUrl alone"
    request = next(r for r in finalized_hook.requests if json.loads(r.body) == notified)
    assert request.headers["content-type"] == FHIR_JSON and request.headers["authorization"] == "Bearer ehr-token"

    # report-ready, full-resource: both analyses, numbered 1 and 2, each with its DiagnosticReport.
    by_number = {}
    for bundle in notifications(reports_hook):
        (event,) = bundle["entry"][0]["resource"]["notificationEvent"]
        by_number[event["eventNumber"]] = bundle
        report = bundle["entry"][1]["resource"]
        assert report["resourceType"] == "DiagnosticReport"
        assert bundle["entry"][1]["fullUrl"] == event["focus"]["reference"]
    assert sorted(by_number) == ["1", "2"]
    assert {focus_ids(b)[0] for b in by_number.values()} == {in_batch, loose}

    # The IG's R4 form: Parameters first (and in its $status).
    assert r4["channel"]["payload"] == f"{FHIR_JSON}; fhirVersion=4.0"
    Parameters.model_validate(api.get(f"/fhir/Subscription/{r4['id']}/$status").json()["entry"][0]["resource"])
    for bundle in notifications(r4_hook):
        parameters = Parameters.model_validate(bundle["entry"][0]["resource"])
        assert {p.name for p in parameters.parameter} >= {"subscription", "topic", "status", "type",
                                                          "events-since-subscription-start", "notification-event"}

    # The other analysis finished too, and its finalized event did not reach the batch's Subscription.
    assert len(notifications(finalized_hook)) == 1
    # Filtered by patient: only that patient's report.
    (for_patient,) = notifications(patient_hook)
    assert focus_ids(for_patient) == [in_batch]

    # $status and $events.
    answered = api.get(f"/fhir/Subscription/{reports['id']}/$status")
    assert answered.headers["content-type"].startswith(FHIR_JSON)
    searchset = Bundle.model_validate(answered.json())
    assert searchset.type == "searchset"
    status = SubscriptionStatus.model_validate(answered.json()["entry"][0]["resource"])
    assert (status.type, status.status, status.eventsSinceSubscriptionStart) == ("query-status", "active", "2")
    events = api.get(f"/fhir/Subscription/{reports['id']}/$events", params={"eventsSinceNumber": 1}).json()
    Bundle.model_validate(events)
    assert events["type"] == "history" and events["entry"][0]["resource"]["type"] == "query-event"
    assert [e["eventNumber"] for e in events["entry"][0]["resource"]["notificationEvent"]] == ["1", "2"]
    assert sum(1 for e in events["entry"][1:] if e.get("resource", {}).get("resourceType") == "DiagnosticReport") == 2
    second = api.get(f"/fhir/Subscription/{reports['id']}/$events",
                     params={"eventsSinceNumber": 2, "eventsUntilNumber": 2, "content": "id-only"}).json()
    Bundle.model_validate(second)
    assert [e["eventNumber"] for e in second["entry"][0]["resource"]["notificationEvent"]] == ["2"]
    assert all("resource" not in e for e in second["entry"][1:])
    assert focus_ids(second) == [focus_ids(by_number["2"])[0]]

    # The same delivery log as webhooks.
    with context.session_factory() as session:
        logged = session.execute(select(WebhookDelivery.status).where(
            WebhookDelivery.endpoint_id == uuid.UUID(reports["id"]))).scalars().all()
    assert sorted(logged) == ["delivered"] * 3  # the handshake and two reports


def test_a_failing_receiver_gets_retries_on_the_schedule(api, worker, beat, receiver, wait, context, settings):
    hook = receiver(503, 503, 200)
    created = create(api, subscription(hook.url))
    subscription_id = uuid.UUID(created["id"])

    def delivered():
        with context.session_factory() as session:
            rows = session.execute(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == subscription_id))
            return [d for d in rows.scalars() if d.status == "delivered"]

    (delivery,) = wait(delivered, timeout=90, message="the handshake to be delivered at the third attempt")
    assert delivery.attempt_count == 3
    with context.session_factory() as session:
        attempts = session.execute(select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery.id)
                                   .order_by(WebhookAttempt.attempted_at)).scalars().all()
    assert [a.status_code for a in attempts] == [503, 503, 200]
    first_wait = min(settings.webhook_retry_schedule[:2])
    gaps = [(b.attempted_at - a.attempted_at).total_seconds() for a, b in zip(attempts, attempts[1:], strict=False)]
    assert all(gap >= first_wait * 0.8 - 0.05 for gap in gaps), gaps
    assert [r.status for r in hook.requests] == [503, 503, 200]
    assert len(notifications(hook, "handshake")) == 3, "each attempt carries the handshake"
    assert api.get(f"/fhir/Subscription/{created['id']}").json()["status"] == "active", "recovered"
