"""Where an outbox event can be delivered (issue 23), each kind a ``Destination``.

Every kind travels through the same machinery as the signed webhooks (worker/webhooks.py):
the outbox event, one ``webhook_deliveries`` row per endpoint, the tenant's concurrency slots,
the retry schedule, the lease that survives a killed worker, the delivery log, and the SSRF
guard (``worker.delivery.send``). A kind decides only two things: which events it takes
(``matches``, beyond the endpoint's ``events`` list) and what one attempt sends
(``send``). The kinds:

- ``webhook``: a Standard Webhooks signed POST of the event (worker/webhooks.py);
- ``fhir-subscription``: a FHIR Subscription's rest-hook notification (worker/fhir_subscriptions.py);
- ``fhir-writeback``: a transaction Bundle to the tenant's EHR, SMART Backend Services (worker/fhir_writeback.py);
- ``dicomweb``: the analysis' DICOM objects to the tenant's PACS by STOW-RS (worker/dicomweb.py).

A kind's module registers itself when imported; ``destination(kind)`` imports it on first use,
so this module imports none of them.
"""

from __future__ import annotations

import importlib
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from shared.context import AppContext
from shared.tables import Event, WebhookEndpoint
from worker.delivery import AttemptResult

WEBHOOK = "webhook"
FHIR_SUBSCRIPTION = "fhir-subscription"
FHIR_WRITEBACK = "fhir-writeback"
DICOMWEB = "dicomweb"
KIND_MODULES = {
    WEBHOOK: "worker.webhooks",
    FHIR_SUBSCRIPTION: "worker.fhir_subscriptions",
    FHIR_WRITEBACK: "worker.fhir_writeback",
    DICOMWEB: "worker.dicomweb",
}


@dataclass(frozen=True)
class Claim:
    """One attempt at one delivery, as claimed (worker.webhooks._claim): everything a kind's
    ``send`` needs, read in the claiming transaction, so no session is open while it sends."""

    delivery_id: uuid.UUID
    attempt_count: int
    tenant_id: uuid.UUID
    endpoint_id: uuid.UUID
    kind: str
    url: str
    msg_id: str  # the event's id: the idempotency key receivers see
    event_type: str
    payload: dict[str, Any]  # the event as the webhook body carries it
    body: str  # the same, canonical JSON text (what a webhook signs)
    config: dict[str, Any] = field(default_factory=dict)
    # A webhook's signing secrets (several during a rotation); another kind's one secret
    # (a private key, a password) is the first.
    secrets: list[str] = field(default_factory=list)
    # The event's stored W3C traceparent (issue 25): the delivery's span continues that trace
    # and the receiver gets it in a `traceparent` header.
    traceparent: str | None = None


class Destination(Protocol):
    kind: str

    def matches(self, endpoint: WebhookEndpoint, event: Event) -> bool:
        """Whether this endpoint takes this event, beyond its ``events`` list (a Subscription's
        filter by batch or patient, say)."""
        ...

    def send(self, context: AppContext, claim: Claim, client: httpx.Client | None) -> AttemptResult:
        """One attempt; network trouble and refusals are returned (they are retried on the
        schedule), never raised. ``client`` is a ``worker.delivery.DeliveryClient`` or None."""
        ...


_REGISTERED: dict[str, Destination] = {}


def register(destination: Destination) -> Destination:
    _REGISTERED[destination.kind] = destination
    return destination


def destination(kind: str) -> Destination:
    """The registered ``Destination`` of ``kind`` (its module imported on first use)."""
    if kind not in _REGISTERED and kind in KIND_MODULES:
        importlib.import_module(KIND_MODULES[kind])
    try:
        return _REGISTERED[kind]
    except KeyError:
        raise LookupError(f"no delivery destination of kind {kind!r}") from None
