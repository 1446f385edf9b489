"""The FHIR resources the ``/fhir`` base answers with (issue 23), as the OpenAPI document
describes them: the outline of each resource (``resourceType`` and the elements a client looks
for first); the full definitions are FHIR R4B's (4.3.0), and every answer validates with the
``fhir.resources.R4B`` models (tests/e2e/test_fhir_subscriptions.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from shared.schemas.common import ResponseModel


class FhirCapabilityStatement(ResponseModel):
    """R4B ``CapabilityStatement``: what the ``/fhir`` base supports."""

    resourceType: Literal["CapabilityStatement"]
    status: str
    kind: str
    fhirVersion: str
    format: list[str]
    instantiates: list[str] = Field(description="The Subscriptions Backport IG's server CapabilityStatements")
    rest: list[dict[str, Any]]


class FhirSubscriptionTopic(ResponseModel):
    """R4B ``SubscriptionTopic``: one of the topics a Subscription can name in ``criteria``."""

    resourceType: Literal["SubscriptionTopic"]
    id: str
    url: str
    status: str
    title: str


class FhirSubscription(ResponseModel):
    """R4B ``Subscription`` (the Backport IG's profile): the topic in ``criteria``, its filters in
    ``_criteria.extension``, a ``rest-hook`` channel."""

    resourceType: Literal["Subscription"]
    id: str
    status: Literal["requested", "active", "error", "off"]
    reason: str
    criteria: str = Field(description="The SubscriptionTopic's canonical URL")
    channel: dict[str, Any]


class FhirBundle(ResponseModel):
    """R4B ``Bundle``: a notification (``history``, the status first) or a ``searchset``."""

    resourceType: Literal["Bundle"]
    type: Literal["history", "searchset"]
    entry: list[dict[str, Any]] = Field(default_factory=list)


class OperationOutcomeIssue(ResponseModel):
    severity: Literal["fatal", "error", "warning", "information"]
    code: str = Field(description="FHIR IssueType: invalid, not-found, forbidden, login, throttled, …")
    details: dict[str, Any] = Field(
        description="`coding` carries the problem's stable code (system https://dermasentinel.dev/problems)"
    )
    diagnostics: str


class OperationOutcome(ResponseModel):
    """Every error under ``/fhir``: the problem the rest of the API answers as problem+json."""

    resourceType: Literal["OperationOutcome"]
    issue: list[OperationOutcomeIssue]
