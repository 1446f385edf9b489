"""The submission's input, read and checked before any work is done: the form fields (or
JSON body) of ``POST /v1/analyses`` as ``AnalysisInputs``, its per-request webhook, its
deadline, the ``Prefer`` header, and the 422s that name each refused field.

Apart from the routes so that ``api.routes.analyses`` is only HTTP: what a field means and how
it is refused is here, once, with the schema the OpenAPI document shows for the form.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from api.auth import TenantRef
from api.problems import BadRequest, PayloadTooLarge, Unprocessable
from api.services import webhook_endpoints
from api.services.analyses import RequestWebhook
from shared import json_limits
from shared.context import AppContext
from shared.schemas import CANCEL_AFTER_SCHEMA, AnalysisInputs, RequestWebhookIn, parse_duration


def _input_properties() -> dict[str, Any]:
    """The form fields' schemas from ``AnalysisInputs`` itself (one source for what is
    checked and what is documented); optional fields are simply left out, never null."""
    properties = {}
    schemas = {**AnalysisInputs.model_json_schema()["properties"], **RequestWebhookIn.model_json_schema()["properties"]}
    for name, schema in schemas.items():
        options = [option for option in schema.get("anyOf", [schema]) if option.get("type") != "null"]
        documented = {k: v for k, v in options[0].items() if k != "title"}
        if schema.get("description"):
            documented["description"] = schema["description"]
        properties[name] = documented
    properties["cancel_after"] = CANCEL_AFTER_SCHEMA
    return properties


UPLOAD_ID = {"type": "string", "format": "uuid", "description": "the id of a direct upload (POST /v1/uploads)"}
IMAGE_DESCRIPTION = (
    "JPEG, PNG or DICOM (`application/dicom`: a one-frame VL Photographic, Dermoscopic Photography or Secondary "
    "Capture colour image, uncompressed, JPEG baseline or JPEG lossless), judged from the content. Only the pixels "
    "are stored; a DICOM header's PatientAge, PatientSex and AnatomicRegionSequence (or BodyPartExamined) fill "
    "`age`, `sex` and `site` when the form leaves them out (docs/DICOM.md)"
)
# The request body the OpenAPI document shows for the submission (the route reads it itself).
SUBMIT_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "description": "The photo as `image`, or the `upload_id` of a direct upload instead (not both)",
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": IMAGE_DESCRIPTION},
                        "upload_id": UPLOAD_ID,
                        **_input_properties(),
                    },
                },
                "encoding": {"image": {"contentType": "image/jpeg, image/png, application/dicom"}},
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["upload_id"],
                    "properties": {"upload_id": UPLOAD_ID, **_input_properties()},
                }
            },
        },
    }
}


# ---------------------------------------------------------------- fields


def parse_inputs(fields: dict[str, Any]) -> AnalysisInputs:
    """The patient context and options; an empty field counts as not sent."""
    values = {k: v for k, v in fields.items() if v != "" and v is not None}
    try:
        return AnalysisInputs.model_validate(values)
    except ValidationError as exc:
        raise invalid_fields(exc) from None


def invalid_fields(exc: ValidationError) -> Unprocessable:
    """A 422 naming each form field pydantic refused, and why."""
    errors = [
        {"field": ".".join(str(p) for p in err["loc"]) or "form", "message": err["msg"]} for err in exc.errors()
    ]
    return Unprocessable("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)


def field_error(field: str, message: str) -> Unprocessable:
    return Unprocessable(f"{field}: {message}", errors=[{"field": field, "message": message}])


WEBHOOK_FIELDS = tuple(RequestWebhookIn.model_fields)


async def request_webhook(context: AppContext, tenant: TenantRef, fields: dict[str, Any]) -> RequestWebhook | None:
    """``webhook_url`` and ``webhook_events_filter`` taken out of ``fields``: the URL goes
    through the same SSRF check as a registered endpoint (DNS resolution, in a thread, with
    no database connection held), 422 when refused."""
    values = {name: fields.pop(name) for name in WEBHOOK_FIELDS if name in fields}
    values = {k: v for k, v in values.items() if v != "" and v is not None}
    if not values:
        return None
    try:
        hook = RequestWebhookIn.model_validate(values)
    except ValidationError as exc:
        raise invalid_fields(exc) from None
    if hook.webhook_url is None:
        raise field_error("webhook_events_filter", "needs a webhook_url")
    url = await run_in_threadpool(webhook_endpoints.checked_url, context, str(hook.webhook_url), tenant)
    return RequestWebhook(url, tuple(sorted(set(hook.webhook_events_filter or ()))))


def cancel_after(header: str | None, field: object, limit: int) -> float | None:
    """Seconds from the ``Cancel-After`` header or the ``cancel_after`` field (one of them)."""
    if header is not None and field not in (None, ""):
        raise field_error("cancel_after", "send the deadline as the Cancel-After header or the field, not both")
    name, value = ("Cancel-After", header) if header is not None else ("cancel_after", field)
    if value in (None, ""):
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise field_error(name, str(exc)) from None
    if seconds > limit:
        raise field_error(name, f"must be at most {limit} seconds")
    return seconds


def upload_id(value: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise field_error("upload_id", "is not an upload id (a UUID from POST /v1/uploads)") from None


# ---------------------------------------------------------------- the body and headers


async def read_json_fields(request: Request, max_bytes: int) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"the request body is larger than {max_bytes // 1024} KiB")
    try:
        fields = json_limits.loads(body, object_pairs_hook=_refuse_duplicate_names)
    except json_limits.JsonTooDeep as exc:
        raise BadRequest(f"the JSON body {exc}; send a flat object with an upload_id") from None
    except DuplicateField as exc:
        raise duplicate_field(exc.name) from None
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise BadRequest("the body must be a JSON object with an upload_id")
    return fields


class DuplicateField(ValueError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _refuse_duplicate_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a name given twice (``json`` would keep the last silently)."""
    fields: dict[str, Any] = {}
    for name, value in pairs:
        if name in fields:
            raise DuplicateField(name)
        fields[name] = value
    return fields


def duplicate_field(name: str) -> Unprocessable:
    """422 naming a field sent more than once (issue 22: never "last one wins")."""
    shown = name.replace("\x00", "")[:100]
    return field_error(shown, "was sent more than once; send each field once")


def is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,6})\"?", re.IGNORECASE)
MAX_PREFER_WAIT = 60
PREFER_DESCRIPTION = (
    "`wait=N` (RFC 7240; N at most 60, larger values count as 60): answer once the analysis is final, if "
    "that happens within N seconds (201 with the final analysis, 200 for an idempotent replay); else 202 as "
    "without it. `Preference-Applied: wait=N` says the wait was honoured."
)


def preferred_wait(prefer: str | None) -> int | None:
    """Seconds asked for by ``Prefer: wait=N``; None without a usable one (preferences are
    hints: one we cannot read is ignored, never an error)."""
    match = PREFER_WAIT.search(prefer or "")
    return min(int(match.group(1)), MAX_PREFER_WAIT) if match else None
