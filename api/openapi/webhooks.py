"""The events DermaSentinel POSTs to registered endpoints, documented in OpenAPI's ``webhooks``.

These operations are documentation only: nothing is served at them. Each describes one event
type's body and the Standard Webhooks headers; the receiver answers 2xx to acknowledge
(anything else, or no answer in time, is retried over about three days; 410 disables the
endpoint).
"""


from typing import Annotated, Any

from fastapi import FastAPI, Header

from shared.schemas import AnalysisEvent, BatchCompletedEvent, ModelDriftEvent, WebhookTestEvent

SIGNING = (
    "Headers: `webhook-id` (the same on every retry: deduplicate on it), `webhook-timestamp` (Unix seconds) and "
    "`webhook-signature`: `v1,<base64 HMAC-SHA256 of \"{id}.{timestamp}.{body}\">` keyed by the endpoint secret "
    "(the bytes after `whsec_`, base64-decoded). During a secret rotation's grace period there are two `v1,` "
    "signatures, space-separated. Answer 2xx within a few seconds; 410 Gone disables the endpoint."
)
ANALYSIS_EVENTS = {
    "analysis.succeeded": "The pipeline produced a result. `data.result` summarises it; read `data.weights` "
    "first: `untrained` output carries no meaning. Research use only, not a certified medical device.",
    "analysis.rejected": "A clinical gate refused the image: `data.rejection.code` is `low_resolution`, "
    "`blurry`, `no_lesion` or `unreadable_image` (or the API's code for a refused direct upload). Retake the photo.",
    "analysis.failed": "A system error survived every retry: `data.error.code`. Submit the image again.",
    "analysis.canceled": "The analysis was canceled: `data.reason` is `requested`, `batch_canceled` or `expired`.",
    "analysis.report_ready": "The PDF report and FHIR bundle are ready at `data.links.report` and `data.links.fhir`.",
}
ACKNOWLEDGED: dict[int | str, dict[str, Any]] = {
    "2XX": {"description": "Acknowledged; anything else is retried with backoff"}
}


WebhookId = Annotated[str, Header(alias="webhook-id", description="msg_…, the same on every retry")]
WebhookTimestamp = Annotated[str, Header(alias="webhook-timestamp", description="Unix seconds")]
WebhookSignature = Annotated[str, Header(alias="webhook-signature", description="v1,<base64 HMAC>")]


def install(app: FastAPI) -> None:
    for event, what in ANALYSIS_EVENTS.items():
        _document(app, event, what, AnalysisEvent)
    _document(
        app,
        "batch.completed",
        "A sealed batch's items are all final (once per batch): `data.counts` per status; the triage list is at "
        "`data.links.results`.",
        BatchCompletedEvent,
    )
    _document(
        app,
        "model.drift_detected",
        "The model's output on this tenant's results drifted from its reference (issue 24; docs/MONITORING.md): "
        "`data.measures` says which measure crossed its threshold (`psi`, `ks`, `skin_group_psi`) over how many "
        "results. Sent once per episode, until an operator clears it. With `data.safety_mode` true (`DRIFT_ACTION="
        "review_all`) every new result is `clinician_review` with the reason `drift` until then. The numbers are at "
        "`data.links.monitoring`.",
        ModelDriftEvent,
    )
    _document(
        app, "webhook.test", "Sent by `POST /v1/webhook-endpoints/{id}/test`, to that endpoint only.", WebhookTestEvent
    )


def _document(app: FastAPI, event: str, what: str, body_model: Any) -> None:
    # ``body_model`` (the event's model class) is read by FastAPI from the annotation at run time.
    async def receive(
        body: body_model,
        webhook_id: WebhookId,
        webhook_timestamp: WebhookTimestamp,
        webhook_signature: WebhookSignature,
    ) -> None:
        """Documentation only."""

    app.webhooks.post(
        event,
        summary=f"{event} event",
        description=f"{what}\n\n{SIGNING}",
        operation_id=f"webhook_{event.replace('.', '_')}",
        responses=ACKNOWLEDGED,
        status_code=200,
    )(receive)
