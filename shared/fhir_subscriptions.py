"""FHIR Subscriptions, R5 Backport IG v1.1 on R4B (issue 23; docs/FHIR_SUBSCRIPTIONS.md).

What the API (``/fhir``) and the io workers (``worker/fhir_subscriptions.py``) share: the two
topics, how a posted ``Subscription`` becomes a ``webhook_endpoints`` row of kind
``fhir-subscription`` (``parse_subscription``) and is shown again (``subscription_resource``),
the batch and patient filters (``passes_filters``), the outbox events of handshakes and
heartbeats, and the notification ``Bundle`` (``notification_bundle``), which the workers POST
and ``$status`` / ``$events`` answer with.

R4B has a ``SubscriptionStatus`` resource, and the IG's R4B notification
(``backport-subscription-notification``) carries one as its first entry; the IG's R4 form
(``backport-subscription-notification-r4``) carries a ``Parameters`` resource
(``backport-subscription-status-r4``) instead. A Subscription gets the R4B form, or the R4 form
when its ``channel.payload`` asks for ``application/fhir+json;fhirVersion=4.0``. Both are R4B
``Bundle``s of type ``history`` and validate with ``fhir.resources.R4B``.

No PHI: a notification names analyses by id and the DiagnosticReport by its ``urn:uuid``
(the one the stored report bundle gives it); only ``full-resource`` content carries the report
itself, read from the ``reports`` row.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast
from urllib.parse import parse_qsl

from celery import Celery
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.subscription import Subscription
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.clock import iso, utcnow
from shared.db import after_commit
from shared.events import new_event_id
from shared.jobs import enqueue_event_dispatch
from shared.tables import Event, Report

KIND = "fhir-subscription"  # worker.destinations.FHIR_SUBSCRIPTION
FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.3.0"
R4_MIME_VERSION = "4.0"  # `application/fhir+json;fhirVersion=4.0`: the IG's R4 notification form

IG = "http://hl7.org/fhir/uv/subscriptions-backport"
IG_VERSION = "1.1.0"
FILTER_CRITERIA = f"{IG}/StructureDefinition/backport-filter-criteria"
PAYLOAD_CONTENT = f"{IG}/StructureDefinition/backport-payload-content"
HEARTBEAT_PERIOD = f"{IG}/StructureDefinition/backport-heartbeat-period"
TIMEOUT = f"{IG}/StructureDefinition/backport-timeout"
TOPIC_CANONICAL = f"{IG}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
SUBSCRIPTION_PROFILE = f"{IG}/StructureDefinition/backport-subscription"
NOTIFICATION_PROFILE = f"{IG}/StructureDefinition/backport-subscription-notification"
NOTIFICATION_PROFILE_R4 = f"{IG}/StructureDefinition/backport-subscription-notification-r4"
STATUS_PROFILE_R4 = f"{IG}/StructureDefinition/backport-subscription-status-r4"
SERVER_CAPABILITIES = f"{IG}/CapabilityStatement/backport-subscription-server"
SERVER_CAPABILITIES_R4 = f"{IG}/CapabilityStatement/backport-subscription-server-r4"
STATUS_OPERATION = f"{IG}/OperationDefinition/backport-subscription-status"
EVENTS_OPERATION = f"{IG}/OperationDefinition/backport-subscription-events"

OUR_FHIR = "https://dermasentinel.dev/fhir"
TOPIC_BASE = f"{OUR_FHIR}/SubscriptionTopic"
TOPIC_EVENT_CODES = f"{OUR_FHIR}/CodeSystem/subscription-event"
# As worker/reporting/fhir.py writes them (tests/shared/test_fhir_subscriptions.py holds them equal):
# the DiagnosticReport of analysis X is urn:uuid:uuid5(REPORT_NAMESPACE, "X/report") in every bundle.
REPORT_NAMESPACE = uuid.UUID("4f6b7c3e-8f0e-5d7a-9b1c-2e3d4f5a6b7c")
ANALYSIS_ID_SYSTEM = "https://dermasentinel.org/fhir/NamingSystem/analysis-id"

Content = Literal["empty", "id-only", "full-resource"]
CONTENTS: tuple[str, ...] = ("empty", "id-only", "full-resource")
DEFAULT_CONTENT: Content = "id-only"
NotificationType = Literal["handshake", "heartbeat", "event-notification", "query-status", "query-event"]
Status = Literal["requested", "active", "error", "off"]

# Outbox event types of a Subscription's own notifications (sent to it alone: only_endpoint_id),
# and of the pre-dispatched row that records the number a Subscription gave a topic event.
HANDSHAKE_EVENT = "fhir.subscription.handshake"
HEARTBEAT_EVENT = "fhir.subscription.heartbeat"
NUMBERED_EVENT = "fhir.subscription.numbered"
OWN_EVENTS: dict[str, NotificationType] = {HANDSHAKE_EVENT: "handshake", HEARTBEAT_EVENT: "heartbeat"}

MIN_HEARTBEAT_SECONDS = 10
MAX_HEARTBEAT_SECONDS = 7 * 24 * 3600
# How often beat looks for Subscriptions whose heartbeat is due (a heartbeat is late by at most this).
HEARTBEAT_CHECK_SECONDS = 10.0
MAX_HEADERS = 10
MAX_HEADER_LENGTH = 1024
MAX_FILTERS = 10
MAX_FILTER_VALUES = 50
# Headers the sender sets itself (or that would change the exchange): never from a Subscription.
RESERVED_HEADERS = frozenset({
    "content-type", "content-length", "content-encoding", "transfer-encoding", "host", "connection",
    "accept-encoding", "user-agent", "te", "trailer", "upgrade", "keep-alive", "proxy-authorization",
    "expect",
})
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")


@dataclass(frozen=True)
class Topic:
    """A SubscriptionTopic of ours: its canonical URL and the outbox events that trigger it."""

    id: str
    title: str
    description: str
    events: tuple[str, ...]

    @property
    def url(self) -> str:
        return f"{TOPIC_BASE}/{self.id}"


ANALYSIS_FINALIZED = Topic(
    "analysis-finalized",
    "Analysis finalized",
    "An analysis reached a final status: succeeded, rejected (the image could not be assessed), failed or "
    "canceled. The focus is the analysis' DiagnosticReport (its report may not be rendered yet: "
    "the report-ready topic says when it is).",
    ("analysis.succeeded", "analysis.rejected", "analysis.failed", "analysis.canceled"),
)
REPORT_READY = Topic(
    "report-ready",
    "Report ready",
    "An analysis' report (PDF and FHIR DiagnosticReport) was rendered and stored. The focus is the "
    "DiagnosticReport.",
    ("analysis.report_ready",),
)
TOPICS: dict[str, Topic] = {topic.url: topic for topic in (ANALYSIS_FINALIZED, REPORT_READY)}
TOPICS_BY_ID: dict[str, Topic] = {topic.id: topic for topic in TOPICS.values()}
# The filter parameters a Subscription may use, and the spellings accepted for each.
FILTER_PARAMETERS = {"batch": "batch", "patient": "patient", "subject": "patient"}
FILTER_RESOURCES = ("", "DiagnosticReport", "Analysis")


class InvalidSubscription(ValueError):
    """A Subscription this server will not take; ``code`` is the OperationOutcome issue code."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


class SubscriptionConfig(BaseModel):
    """What ``webhook_endpoints.config`` holds for a Subscription (never its headers: those may
    carry credentials and are sealed in ``secret_encrypted``)."""

    model_config = ConfigDict(extra="ignore")

    topic: str
    reason: str = ""
    filters: list[str] = Field(default_factory=list, description="The filter criteria as given")
    criteria: list[dict[str, list[str]]] = Field(
        default_factory=list, description="Each filter parsed: parameter (batch, patient) → accepted values"
    )
    content: Content = DEFAULT_CONTENT
    payload: str = FHIR_JSON
    heartbeat_period: int | None = None
    timeout: int | None = None
    end: str | None = None
    # Topic events numbered so far (worker.fhir_subscriptions numbers each one it takes).
    events_since_start: int = 0

    @property
    def r4(self) -> bool:
        """The IG's R4 notification form (Parameters) rather than the R4B one (SubscriptionStatus)."""
        return _mime_version(self.payload) == R4_MIME_VERSION

    @property
    def end_at(self) -> datetime | None:
        return datetime.fromisoformat(self.end.replace("Z", "+00:00")) if self.end else None


@dataclass(frozen=True)
class ParsedSubscription:
    endpoint: str
    config: SubscriptionConfig
    headers: list[str] = field(default_factory=list)

    @property
    def topic(self) -> Topic:
        return TOPICS[self.config.topic]


# ---------------------------------------------------------------- a posted Subscription


def parse_subscription(resource: object) -> ParsedSubscription:
    """The Subscription as this server keeps it, or ``InvalidSubscription`` saying what to change.

    Validated as an R4B ``Subscription`` first; then: the topic is one of ours (``criteria``),
    the channel a ``rest-hook`` with an ``endpoint``, the payload ``application/fhir+json``, the
    content ``empty | id-only | full-resource``, filters ``batch`` or ``patient`` only, headers
    ``Name: value`` lines. The endpoint's address is checked by the caller (the SSRF rules)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Subscription":
        raise InvalidSubscription("the body must be a FHIR Subscription resource (resourceType 'Subscription')",
                                  "structure")
    try:
        subscription = Subscription.model_validate(resource)
    except ValidationError as exc:
        raise InvalidSubscription(_validation_summary(exc), "structure") from None
    topic = TOPICS.get(subscription.criteria or "")
    if topic is None:
        raise InvalidSubscription(
            f"Subscription.criteria must be the canonical URL of one of this server's SubscriptionTopics: "
            f"{', '.join(TOPICS)} (got {str(subscription.criteria)[:200]!r})",
            "not-supported",
        )
    if subscription.status not in ("requested", "active"):
        raise InvalidSubscription("Subscription.status must be 'requested' when a Subscription is created")
    channel = subscription.channel
    if channel.type != "rest-hook":
        raise InvalidSubscription(
            f"Subscription.channel.type {channel.type!r} is not supported; this server sends 'rest-hook' only",
            "not-supported",
        )
    if not channel.endpoint:
        raise InvalidSubscription("Subscription.channel.endpoint is required for a rest-hook channel", "required")
    payload = _checked_payload(channel.payload)
    content = _extension_value(channel.payload__ext, PAYLOAD_CONTENT, "valueCode") or DEFAULT_CONTENT
    if content not in CONTENTS:
        raise InvalidSubscription(
            f"the payload content (extension {PAYLOAD_CONTENT}) must be one of {', '.join(CONTENTS)}; got {content!r}",
            "not-supported",
        )
    heartbeat = _extension_value(channel.extension, HEARTBEAT_PERIOD, "valueUnsignedInt")
    if heartbeat is not None and not MIN_HEARTBEAT_SECONDS <= int(heartbeat) <= MAX_HEARTBEAT_SECONDS:
        raise InvalidSubscription(
            f"the heartbeat period must be between {MIN_HEARTBEAT_SECONDS} and {MAX_HEARTBEAT_SECONDS} seconds"
        )
    timeout = _extension_value(channel.extension, TIMEOUT, "valueUnsignedInt")
    if timeout is not None and int(timeout) < 1:
        raise InvalidSubscription("the timeout (extension backport-timeout) must be at least 1 second")
    filters = [str(v) for v in _extension_values(subscription.criteria__ext, FILTER_CRITERIA, "valueString")]
    if len(filters) > MAX_FILTERS:
        raise InvalidSubscription(f"at most {MAX_FILTERS} filter criteria per Subscription")
    end = subscription.end
    if end is not None and end <= utcnow():
        raise InvalidSubscription("Subscription.end is in the past")
    config = SubscriptionConfig(
        topic=topic.url,
        reason=(subscription.reason or "")[:500],
        filters=filters,
        criteria=[parse_filter(text) for text in filters],
        content=cast(Content, content),
        payload=payload,
        heartbeat_period=None if heartbeat is None else int(heartbeat),
        timeout=None if timeout is None else int(timeout),
        end=iso(end) if end is not None else None,
    )
    return ParsedSubscription(str(channel.endpoint), config, _checked_headers(channel.header or []))


def parse_filter(text: str) -> dict[str, list[str]]:
    """One filter criteria, ``[DiagnosticReport|Analysis]?batch=<batch id>`` or
    ``…?patient=<reference>`` (both may be given, joined by ``&``: all must hold; values
    separated by commas: any may match), as parameter → values."""
    resource, _, query = text.strip().rpartition("?")
    if resource not in FILTER_RESOURCES:
        raise InvalidSubscription(
            f"filter criteria {text[:200]!r}: filter on DiagnosticReport (or Analysis), e.g. "
            "'DiagnosticReport?batch=<batch id>' or 'DiagnosticReport?patient=Patient/123'",
            "not-supported",
        )
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidSubscription(f"filter criteria {text[:200]!r} is not a FHIR search query") from None
    parsed: dict[str, list[str]] = {}
    for name, value in pairs:
        parameter = FILTER_PARAMETERS.get(name)
        if parameter is None:
            raise InvalidSubscription(
                f"filter criteria {text[:200]!r}: the parameter {name[:50]!r} is not supported; filter by "
                "'batch' (a batch id) or 'patient' (the analysis' patient reference)",
                "not-supported",
            )
        values = [v.strip() for v in value.split(",") if v.strip()]
        if not values or len(values) > MAX_FILTER_VALUES:
            raise InvalidSubscription(
                f"filter criteria {text[:200]!r}: '{name}' needs between 1 and {MAX_FILTER_VALUES} values"
            )
        if parameter == "batch":
            try:
                values = [str(uuid.UUID(v)) for v in values]
            except ValueError:
                raise InvalidSubscription(f"filter criteria {text[:200]!r}: 'batch' takes batch ids") from None
        elif any(len(v) > 200 for v in values):
            raise InvalidSubscription(f"filter criteria {text[:200]!r}: a patient reference is at most 200 characters")
        # The same parameter twice in one criteria: both must hold, i.e. the values both lists share.
        parsed[parameter] = values if parameter not in parsed else [v for v in parsed[parameter] if v in values]
    if not parsed:
        raise InvalidSubscription(f"filter criteria {text[:200]!r} names no parameter")
    return parsed


def passes_filters(config: SubscriptionConfig, payload: dict[str, Any]) -> bool:
    """Whether a topic event's payload passes every filter of the Subscription. ``batch`` is the
    event's ``data.batch_id``; ``patient`` its ``data.patient_reference`` (the submission's):
    an event without one matches no patient filter."""
    data = payload.get("data")
    if not isinstance(data, dict):
        return not config.criteria
    for criteria in config.criteria:
        batches = criteria.get("batch")
        if batches is not None and str(data.get("batch_id")) not in batches:
            return False
        patients = criteria.get("patient")
        if patients is not None:
            reference = data.get("patient_reference")
            if not isinstance(reference, str) or reference not in patients:
                return False
    return True


def headers_of(secret: str) -> dict[str, str]:
    """The channel headers sealed in ``secret_encrypted`` (a JSON list of ``Name: value``)."""
    lines = json.loads(secret) if secret else []
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = str(line).partition(":")
        headers[name.strip()] = value.strip()
    return headers


def seal_headers(headers: list[str]) -> str:
    return json.dumps(headers)


def _checked_headers(lines: list[str | None]) -> list[str]:
    if len(lines) > MAX_HEADERS:
        raise InvalidSubscription(f"at most {MAX_HEADERS} channel headers")
    checked: list[str] = []
    for line in lines:
        text = str(line or "")
        name, colon, value = text.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not HEADER_NAME.match(name) or len(text) > MAX_HEADER_LENGTH:
            raise InvalidSubscription(
                f"each Subscription.channel.header is 'Name: value' (at most {MAX_HEADER_LENGTH} characters)"
            )
        if any(c in value for c in "\r\n\x00"):
            raise InvalidSubscription("a channel header value may not contain line breaks")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidSubscription(f"the channel header {name!r} is set by the server and may not be given")
        checked.append(f"{name}: {value}")
    return checked


def _checked_payload(payload: str | None) -> str:
    if payload is None:
        return FHIR_JSON
    mime = payload.split(";", 1)[0].strip().lower()
    if mime not in (FHIR_JSON, "application/json"):
        raise InvalidSubscription(
            f"Subscription.channel.payload {payload[:100]!r} is not supported; notifications are "
            f"'{FHIR_JSON}' (add ';fhirVersion=4.0' for the IG's R4 form)",
            "not-supported",
        )
    version = _mime_version(payload)
    if version not in (None, "4.3", R4_MIME_VERSION):
        raise InvalidSubscription(f"fhirVersion {version!r} is not supported: 4.3 (R4B) or 4.0 (the IG's R4 form)",
                                  "not-supported")
    return FHIR_JSON if version is None else f"{FHIR_JSON}; fhirVersion={version}"


def _mime_version(payload: str) -> str | None:
    for parameter in payload.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "fhirversion":
            return value.strip().strip('"')
    return None


def _extension_values(element: Any, url: str, value_field: str) -> list[Any]:
    extensions = getattr(element, "extension", None) if not isinstance(element, list) else element
    found = []
    for extension in extensions or []:
        if getattr(extension, "url", None) == url:
            value = getattr(extension, value_field, None)
            if value is None:
                raise InvalidSubscription(f"the extension {url} needs a {value_field}")
            found.append(value)
    return found


def _extension_value(element: Any, url: str, value_field: str) -> Any:
    values = _extension_values(element, url, value_field)
    if len(values) > 1:
        raise InvalidSubscription(f"the extension {url} may be given once")
    return values[0] if values else None


def _validation_summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "Subscription"
        parts.append(f"{where}: {error['msg']}")
    return "not a valid R4B Subscription: " + "; ".join(parts)


# ---------------------------------------------------------------- a stored Subscription


def subscription_status(enabled: bool, failing_since: datetime | None, end: datetime | None,
                        now: datetime | None = None) -> Status:
    """``off`` once disabled (by the tenant, a 410 from the receiver, days of failures) or past
    its ``end``; ``error`` while its notifications are failing (retried on the schedule);
    ``active`` otherwise. A Subscription is active from its creation: its handshake goes
    through the outbox like any notification, and a receiver that refuses it puts it in ``error``."""
    if not enabled or (end is not None and end <= (now or utcnow())):
        return "off"
    return "error" if failing_since is not None else "active"


def subscription_url(base: str, subscription_id: uuid.UUID) -> str:
    """The Subscription's URL under this server's ``/fhir`` base (relative without a base URL)."""
    return f"{base}/fhir/Subscription/{subscription_id}" if base else f"Subscription/{subscription_id}"


def subscription_resource(
    subscription_id: uuid.UUID, endpoint: str, config: SubscriptionConfig, status: Status, error: str | None = None
) -> dict[str, Any]:
    """The Subscription as ``GET /fhir/Subscription/{id}`` shows it. Its channel headers are
    never shown again (they may carry credentials, like a webhook's secret)."""
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": config.payload,
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": config.content}]},
    }
    extensions = []
    if config.heartbeat_period is not None:
        extensions.append({"url": HEARTBEAT_PERIOD, "valueUnsignedInt": config.heartbeat_period})
    if config.timeout is not None:
        extensions.append({"url": TIMEOUT, "valueUnsignedInt": config.timeout})
    if extensions:
        channel["extension"] = extensions
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": str(subscription_id),
        "meta": {"profile": [SUBSCRIPTION_PROFILE]},
        "status": status,
        "reason": config.reason or "DermaSentinel notifications",
        "criteria": config.topic,
        "channel": channel,
    }
    if config.filters:
        resource["_criteria"] = {"extension": [{"url": FILTER_CRITERIA, "valueString": f} for f in config.filters]}
    if config.end:
        resource["end"] = config.end
    if error:
        resource["error"] = error[:500]
    Subscription.model_validate(resource)
    return resource


def report_full_url(analysis_id: uuid.UUID | str) -> str:
    """The DiagnosticReport's fullUrl in the analysis' report bundle (and in every notification)."""
    return f"urn:uuid:{uuid.uuid5(REPORT_NAMESPACE, f'{analysis_id}/report')}"


# ---------------------------------------------------------------- notifications


@dataclass(frozen=True)
class TopicEvent:
    """One numbered topic event of a Subscription, as a notification reports it."""

    number: int
    timestamp: str
    event_type: str
    analysis_id: uuid.UUID | None
    report_bundle: dict[str, Any] | None = None  # the reports row's FHIR bundle, when there is one


@dataclass(frozen=True)
class NotificationStatus:
    """What the first entry of a notification says."""

    subscription_url: str
    topic: str
    status: Status
    type: NotificationType
    events_since_start: int
    r4: bool = False
    error: str | None = None


def topic_event(number: int, event_payload: dict[str, Any], event_type: str,
                report: dict[str, Any] | None = None) -> TopicEvent:
    """The topic event as a notification reports it, from the outbox event's payload."""
    raw = event_payload.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    try:
        analysis_id: uuid.UUID | None = uuid.UUID(str(data.get("id"))) if event_type.startswith("analysis.") else None
    except ValueError:
        analysis_id = None
    return TopicEvent(number, str(event_payload.get("timestamp") or iso(utcnow())), event_type, analysis_id, report)


def notification_bundle(status: NotificationStatus, events: list[TopicEvent], content: Content,
                        bundle_type: Literal["history", "searchset"] = "history") -> dict[str, Any]:
    """The notification (``history``; ``$status`` answers a ``searchset`` of the status alone),
    validated as an R4B ``Bundle``. Its first entry is the status (R4B ``SubscriptionStatus``, or
    the R4 form's ``Parameters``); then, per event, nothing (``empty``), the focus' fullUrl
    (``id-only``), or the resources of the report bundle (``full-resource``; the focus' fullUrl
    alone while no report exists: an analysis finalized before its report is rendered)."""
    events = sorted(events, key=lambda event: event.number)
    status_entry: dict[str, Any] = {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": _status_resource(status, events, content),
    }
    if bundle_type == "history":
        status_entry["request"] = {"method": "GET", "url": f"{status.subscription_url}/$status"}
        status_entry["response"] = {"status": "200"}
    else:
        status_entry["search"] = {"mode": "match"}
    entries = [status_entry]
    if bundle_type == "history" and content != "empty":
        for event in events:
            entries += _event_entries(event, content)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE_R4 if status.r4 else NOTIFICATION_PROFILE]},
        "type": bundle_type,
        "timestamp": iso(utcnow()),
        "entry": entries,
    }
    if bundle_type == "searchset":
        del bundle["meta"]
        bundle["total"] = 1
    Bundle.model_validate(bundle)
    return bundle


def _focus(event: TopicEvent) -> dict[str, Any] | None:
    if event.analysis_id is None:
        return None
    status = event.event_type.removeprefix("analysis.").replace("_", " ")
    return {
        "reference": report_full_url(event.analysis_id),
        "type": "DiagnosticReport",
        "identifier": {"system": ANALYSIS_ID_SYSTEM, "value": str(event.analysis_id)},
        "display": f"DermaSentinel analysis {event.analysis_id}: {status}",
    }


def _report_entries(event: TopicEvent) -> list[dict[str, Any]]:
    """The report bundle's entries, DiagnosticReport first (the builder puts it there)."""
    if event.report_bundle is None:
        return []
    return [entry for entry in event.report_bundle.get("entry", []) if isinstance(entry, dict)]


def _status_resource(status: NotificationStatus, events: list[TopicEvent], content: Content) -> dict[str, Any]:
    notified = []
    for event in events:
        item: dict[str, Any] = {"eventNumber": str(event.number), "timestamp": event.timestamp}
        focus = _focus(event) if content != "empty" else None
        if focus is not None:
            item["focus"] = focus
            context = [{"reference": e["fullUrl"]} for e in _report_entries(event)[1:] if e.get("fullUrl")]
            if content == "full-resource" and context:
                item["additionalContext"] = context
        notified.append(item)
    if status.r4:
        return _status_parameters(status, notified)
    resource: dict[str, Any] = {
        "resourceType": "SubscriptionStatus",
        "id": str(uuid.uuid4()),
        "status": status.status,
        "type": status.type,
        "eventsSinceSubscriptionStart": str(status.events_since_start),
        "subscription": {"reference": status.subscription_url},
        "topic": status.topic,
    }
    if notified:
        resource["notificationEvent"] = notified
    if status.error:
        resource["error"] = [{"text": status.error[:500]}]
    return resource


def _status_parameters(status: NotificationStatus, notified: list[dict[str, Any]]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": status.subscription_url}},
        {"name": "topic", "valueCanonical": status.topic},
        {"name": "status", "valueCode": status.status},
        {"name": "type", "valueCode": status.type},
        {"name": "events-since-subscription-start", "valueString": str(status.events_since_start)},
    ]
    for item in notified:
        part: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": item["eventNumber"]},
            {"name": "timestamp", "valueInstant": item["timestamp"]},
        ]
        if "focus" in item:
            part.append({"name": "focus", "valueReference": item["focus"]})
        part += [{"name": "additional-context", "valueReference": r} for r in item.get("additionalContext", [])]
        parameters.append({"name": "notification-event", "part": part})
    if status.error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": status.error[:500]}})
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE_R4]},
        "parameter": parameters,
    }


def _event_entries(event: TopicEvent, content: Content) -> list[dict[str, Any]]:
    if event.analysis_id is None:
        return []
    reports = _report_entries(event) if content == "full-resource" else []
    if not reports:
        return [{
            "fullUrl": report_full_url(event.analysis_id),
            "request": {"method": "POST", "url": "DiagnosticReport"},
            "response": {"status": "201"},
        }]
    entries = []
    for entry in reports:
        resource = entry.get("resource") or {}
        entries.append({
            "fullUrl": entry.get("fullUrl"),
            "resource": resource,
            "request": {"method": "POST", "url": str(resource.get("resourceType", "Resource"))},
            "response": {"status": "201"},
        })
    return entries


# ---------------------------------------------------------------- the outbox


def record_notification(
    session: Session, celery: Celery | None, *, tenant_id: uuid.UUID, subscription_id: uuid.UUID,
    event_type: str, dedupe_key: str | None = None,
) -> str | None:
    """An outbox event for one Subscription alone (``only_endpoint_id``): its handshake or a
    heartbeat. Delivered, retried and logged like every event; the io worker renders it as a
    notification of that type. Returns the event id (None: ``dedupe_key`` was used already)."""
    if event_type not in OWN_EVENTS:
        raise ValueError(f"not a Subscription's own notification: {event_type}")
    event_id = new_event_id()
    payload = {"type": event_type, "timestamp": iso(utcnow()), "data": {"subscription": str(subscription_id)}}
    inserted = session.execute(
        insert(Event)
        .values(id=event_id, tenant_id=tenant_id, type=event_type, dedupe_key=dedupe_key, payload=payload,
                only_endpoint_id=subscription_id)
        .on_conflict_do_nothing(index_elements=[Event.dedupe_key])
        .returning(Event.id)
    ).scalar_one_or_none()
    if inserted is None:
        return None
    if celery is not None:
        after_commit(session, lambda: enqueue_event_dispatch(celery, event_id))
    return event_id


def numbered_key(subscription_id: uuid.UUID | str, event_id: str) -> str:
    """The ``dedupe_key`` of the row that records the number a Subscription gave an event."""
    return f"{NUMBERED_EVENT}:{subscription_id}:{event_id}"


def number_of(session: Session, subscription_id: uuid.UUID, event_id: str) -> int | None:
    """The number the Subscription gave this topic event when it took it (None: it did not)."""
    payload = session.execute(
        select(Event.payload).where(Event.dedupe_key == numbered_key(subscription_id, event_id))
    ).scalar_one_or_none()
    return int(payload["number"]) if payload else None


def report_bundle(session: Session, tenant_id: uuid.UUID, analysis_id: uuid.UUID | None) -> dict[str, Any] | None:
    """The stored FHIR bundle of the analysis' report (None until the report is rendered)."""
    if analysis_id is None:
        return None
    return session.execute(
        select(Report.fhir).where(Report.analysis_id == analysis_id, Report.tenant_id == tenant_id)
    ).scalar_one_or_none()


def past_events(
    session: Session, tenant_id: uuid.UUID, subscription_id: uuid.UUID, *, since: int | None, until: int | None,
    limit: int, with_reports: bool,
) -> list[TopicEvent]:
    """The Subscription's numbered topic events from ``since`` to ``until`` (inclusive), oldest
    first, at most ``limit``. An event erased since (its analysis deleted, by request or
    retention) leaves a gap in the numbers: the number stays taken."""
    number = Event.payload["number"].as_integer()
    query = select(Event.payload).where(
        Event.tenant_id == tenant_id, Event.only_endpoint_id == subscription_id, Event.type == NUMBERED_EVENT
    )
    if since is not None:
        query = query.where(number >= since)
    if until is not None:
        query = query.where(number <= until)
    markers = session.execute(query.order_by(number).limit(limit)).scalars().all()
    originals = {
        event.id: event
        for event in session.execute(
            select(Event).where(Event.tenant_id == tenant_id, Event.id.in_([m["event"] for m in markers]))
        ).scalars()
    }
    found = []
    for marker in markers:
        original = originals.get(marker["event"])
        if original is None:
            continue
        event = topic_event(int(marker["number"]), original.payload, original.type)
        if with_reports:
            event = TopicEvent(event.number, event.timestamp, event.event_type, event.analysis_id,
                               report_bundle(session, tenant_id, event.analysis_id))
        found.append(event)
    return found


# ---------------------------------------------------------------- what the /fhir base declares

CAPABILITY_DATE = "2026-12-06"  # when this CapabilityStatement last changed
DIAGNOSTIC_REPORT = "http://hl7.org/fhir/StructureDefinition/DiagnosticReport"
MAX_EVENTS_PER_QUERY = 100  # $events answers at most this many events per call


def subscription_topic(topic: Topic) -> dict[str, Any]:
    """The R4B ``SubscriptionTopic`` of one of our topics (``GET /fhir/SubscriptionTopic/{id}``)."""
    resource: dict[str, Any] = {
        "resourceType": "SubscriptionTopic",
        "id": topic.id,
        "url": topic.url,
        "version": IG_VERSION,
        "title": topic.title,
        "status": "active",
        "date": CAPABILITY_DATE,
        "publisher": "DermaSentinel",
        "description": topic.description,
        "canFilterBy": [
            {"resource": "DiagnosticReport", "filterParameter": "batch",
             "description": "The batch the analysis was submitted in (its id): `DiagnosticReport?batch=<batch id>`"},
            {"resource": "DiagnosticReport", "filterParameter": "patient",
             "description": "The patient reference the analysis was submitted with: "
                            "`DiagnosticReport?patient=Patient/123`"},
        ],
        "notificationShape": [{"resource": "DiagnosticReport", "include": ["DiagnosticReport:result",
                                                                            "DiagnosticReport:media"]}],
    }
    if topic is REPORT_READY:
        resource["resourceTrigger"] = [{
            "description": "A DiagnosticReport is created when an analysis' report is rendered",
            "resource": DIAGNOSTIC_REPORT,
            "supportedInteraction": ["create"],
        }]
    else:
        resource["eventTrigger"] = [{
            "description": "An analysis reached a final status (succeeded, rejected, failed or canceled)",
            "event": {"coding": [{"system": TOPIC_EVENT_CODES, "code": topic.id, "display": topic.title}]},
            "resource": DIAGNOSTIC_REPORT,
        }]
    return resource


def capability_statement(base: str, software_version: str) -> dict[str, Any]:
    """The ``/fhir`` base's R4B ``CapabilityStatement`` (``GET /fhir/metadata``)."""
    return {
        "resourceType": "CapabilityStatement",
        "id": "dermasentinel",
        "url": f"{OUR_FHIR}/CapabilityStatement/dermasentinel",
        "version": software_version,
        "name": "DermaSentinelFhirSubscriptions",
        "title": "DermaSentinel FHIR Subscriptions",
        "status": "active",
        "date": CAPABILITY_DATE,
        "publisher": "DermaSentinel",
        "description": "Topic-based Subscriptions (R5 Backport IG on R4B) to DermaSentinel's analyses and reports: "
                       "rest-hook notifications, heartbeats, $status and $events.",
        "kind": "instance",
        "instantiates": [SERVER_CAPABILITIES, SERVER_CAPABILITIES_R4],
        "software": {"name": "DermaSentinel", "version": software_version},
        "implementation": {"description": "DermaSentinel FHIR base", **({"url": f"{base}/fhir"} if base else {})},
        "fhirVersion": FHIR_VERSION,
        "format": [FHIR_JSON, "json"],
        "implementationGuide": [f"{IG}/ImplementationGuide/hl7.fhir.uv.subscriptions-backport|{IG_VERSION}"],
        "rest": [{
            "mode": "server",
            "documentation": "Every interaction but metadata and SubscriptionTopic needs an API key "
                             "(`Authorization: Bearer dsk_…`) holding the scope webhooks:manage; a tenant sees "
                             "only its own Subscriptions. Errors are OperationOutcomes.",
            "security": {"description": "Bearer API key (dsk_…) with the webhooks:manage scope"},
            "resource": [
                {
                    "extension": [{"url": TOPIC_CANONICAL, "valueCanonical": url} for url in TOPICS],
                    "type": "Subscription",
                    "supportedProfile": [SUBSCRIPTION_PROFILE],
                    "interaction": [{"code": code} for code in ("create", "read", "delete", "search-type")],
                    "operation": [
                        {"name": "status", "definition": STATUS_OPERATION},
                        {"name": "events", "definition": EVENTS_OPERATION},
                    ],
                },
                {
                    "type": "SubscriptionTopic",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                },
            ],
        }],
    }
