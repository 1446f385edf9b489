"""The ``fhir-writeback`` kind (issue 23; docs/FHIR_WRITEBACK.md): every report, as a FHIR
transaction Bundle, to the tenant's EHR, authorised by SMART Backend Services.

On ``analysis.report_ready`` one attempt (``FhirWriteback.send``):

1. reads the report's stored bundle (``reports.fhir``, worker/reporting/fhir.py) and its PDF
   (the artifacts bucket), and builds the transaction (``transaction_bundle``): every stored
   resource, whatever types the bundle holds, as a ``POST`` with ``ifNoneExist`` keyed on
   DermaSentinel's identifiers, the PDF as a DocumentReference, references rewritten to the
   transaction's ``urn:uuid`` fullUrls. A retry, a resend or a second worker after a crash
   therefore matches what the EHR already holds instead of creating it again;
2. gets an access token (``client_credentials`` with a JWT client assertion signed RS384 or
   ES384, ``shared.smart_backend``), cached in Redis, encrypted, until shortly before it
   expires, and dropped when the FHIR server answers 401;
3. POSTs the Bundle to the base URL and checks the transaction-response: success is a 2xx
   whose every entry is 2xx.

Both requests go through ``worker.delivery.send`` (the SSRF guard, pinned addresses, no
redirects) within one deadline, ``WEBHOOK_TIMEOUT_SECONDS``, so the delivery's lease covers the
whole attempt. Failures are returned, never raised, and never quote a token.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import time
import typing
import uuid
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import httpx
import redis
import urllib3
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from minio.error import S3Error
from pydantic import ValidationError

from shared.config import Settings
from shared.context import AppContext
from shared.security import SecretBox, SecretDecryptionError, secret_box
from shared.smart_backend import ASSERTION_TYPE, InvalidPrivateKey, SigningKey, client_assertion, stored_signing_key
from shared.storage import ARTIFACTS
from shared.tables import Event, Report, WebhookEndpoint
from worker.delivery import AttemptResult, send
from worker.destinations import FHIR_WRITEBACK, Claim, register
from worker.reporting.fhir import EXTERNAL_ID_SYSTEM, FHIR_BASE, LOCAL_CODES, LOINC

log = logging.getLogger(__name__)

WRITEBACK_EVENT = "analysis.report_ready"
# Our identifiers (conditional-create keys) beside the ones the stored bundle already carries
# (the DiagnosticReport's analysis-id, a model Device's checkpoint sha256).
OWN_NAMING_SYSTEMS = f"{FHIR_BASE}/NamingSystem/"
OBSERVATION_ID_SYSTEM = f"{FHIR_BASE}/NamingSystem/observation-id"  # "<analysis id>/<code>"
REPORT_PDF_SYSTEM = f"{FHIR_BASE}/NamingSystem/report-pdf"  # "<analysis id>"
# Any other resource: "<analysis id>/<uuid of its stored bundle entry's fullUrl>" (a uuid5 of
# the analysis id and the resource's role, so the same on every attempt); as a meta.tag where
# the type has no identifier list (Provenance).
RESOURCE_KEY_SYSTEM = f"{FHIR_BASE}/NamingSystem/analysis-resource"
FULL_URL_NAMESPACE = uuid.UUID("7d0b3c52-61f4-5b8e-a2d4-93c1e0f7a815")
# The PDF travels inside the Bundle (base64) up to this size; a larger one is referenced by its
# API URL (which needs a DermaSentinel key) instead.
MAX_PDF_BYTES = 5 * 1024 * 1024
# Enough of the transaction-response to check every entry (servers that ignore
# `Prefer: return=minimal` echo every resource, the PDF included).
RESPONSE_READ_LIMIT = 256 * 1024
TOKEN_READ_LIMIT = 64 * 1024
TOKEN_CACHE_KEY = "dermasentinel:fhir-token"
TOKEN_EARLY_S = 30  # a cached token is dropped this long before it expires (half its life at most)
# RFC 6749 §5.2 error codes: a fixed vocabulary, so one may be logged even for an internal target.
OAUTH_ERRORS = frozenset(
    {"invalid_request", "invalid_client", "invalid_grant", "unauthorized_client", "unsupported_grant_type",
     "invalid_scope"}
)
FHIR_JSON = "application/fhir+json"


class ReportGone(Exception):
    """The analysis' report row is not there (the analysis was erased)."""


@dataclass(frozen=True)
class StoredReport:
    analysis_id: uuid.UUID
    bundle: dict[str, Any]
    pdf: bytes


class FhirWriteback:
    """The ``fhir-writeback`` kind: the report, as a transaction Bundle, to the tenant's EHR."""

    kind = FHIR_WRITEBACK

    def matches(self, endpoint: WebhookEndpoint, event: Event) -> bool:
        return event.type == WRITEBACK_EVENT

    def send(self, context: AppContext, claim: Claim, client: httpx.Client | None) -> AttemptResult:
        settings = context.settings
        deadline = time.monotonic() + settings.webhook_timeout_seconds
        try:
            analysis_id = uuid.UUID(str(claim.payload["data"]["id"]))
        except (KeyError, TypeError, ValueError):
            return _local_failure("the event names no analysis", "bad_event")
        try:
            report = load_report(context, claim.tenant_id, analysis_id)
        except ReportGone:
            return _local_failure("the analysis' report no longer exists (the analysis was erased)", "report_missing")
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            return _local_failure(f"the report PDF could not be read from the object store ({type(exc).__name__})",
                                  "object_store")
        try:
            bundle = transaction_bundle(report.bundle, analysis_id, report.pdf)
        except (ValidationError, ValueError, KeyError, TypeError) as exc:
            return _local_failure(f"the stored report does not make a valid transaction Bundle ({type(exc).__name__})",
                                  "bundle_invalid")
        try:
            key = stored_signing_key(claim.secrets[0])
        except (IndexError, InvalidPrivateKey, SecretDecryptionError, ValueError):
            return _local_failure("the stored private key cannot sign; PUT /v1/fhir-destination with a new one",
                                  "key_invalid")

        token, refused = _access_token(settings, claim, key, client, deadline)
        if refused is not None:
            return refused
        assert token is not None
        body = json.dumps(bundle, separators=(",", ":")).encode("utf-8")
        read_limit = RESPONSE_READ_LIMIT + len(body)
        outcome, raw = send(
            "POST", claim.url, content=body,
            headers={"authorization": f"Bearer {token}", "content-type": FHIR_JSON, "accept": FHIR_JSON,
                     "prefer": "return=minimal"},
            allow_cidrs=settings.webhook_allow_cidrs, timeout=_left(deadline),
            connect_timeout=settings.webhook_connect_timeout_seconds, client=client, tenant_id=claim.tenant_id,
            read_limit=read_limit,
        )
        if outcome.status_code == 401:
            _forget_token(settings, _token_key(claim))
            return replace(outcome, error="HTTP 401: the FHIR server refused the access token; the next attempt "
                           "asks the token endpoint for a new one")
        if not outcome.ok:
            return outcome
        return checked_response(outcome, raw, bundle, read_limit)


register(FhirWriteback())


# ---------------------------------------------------------------- what is sent


def load_report(context: AppContext, tenant_id: uuid.UUID, analysis_id: uuid.UUID) -> StoredReport:
    """The stored bundle and the PDF of the analysis' report (a short read; no session is
    open while anything is sent)."""
    with context.session_factory() as session:
        row = session.get(Report, analysis_id)
        if row is None or row.tenant_id != tenant_id:
            raise ReportGone(str(analysis_id))
        bundle, pdf_key = row.fhir, row.pdf_key
    try:
        pdf = context.store.get(ARTIFACTS, pdf_key)
    except S3Error as exc:
        if exc.code in {"NoSuchKey", "NoSuchObject", "NotFound"}:
            raise ReportGone(str(analysis_id)) from None
        raise
    return StoredReport(analysis_id=analysis_id, bundle=bundle, pdf=pdf)


def transaction_bundle(stored: dict[str, Any], analysis_id: uuid.UUID, pdf: bytes | None) -> dict[str, Any]:
    """The transaction Bundle for a stored report bundle: each resource a conditional create
    (``ifNoneExist``) keyed on our identifiers, internal references rewritten to the
    transaction's fullUrls, plus the PDF as a DocumentReference. Checked against the R4B
    models; the same input gives the same Bundle."""
    entries = list(stored.get("entry") or [])
    full_urls: dict[str, str] = {}  # every spelling of a reference to an entry -> its fullUrl here
    placed: list[tuple[str, str, dict[str, Any]]] = []
    for entry in entries:
        resource = entry["resource"]
        resource_type = resource["resourceType"]
        stored_url = entry.get("fullUrl") or f"{resource_type}/{resource.get('id')}"
        if stored_url.startswith("urn:uuid:"):
            full_url = stored_url
        else:
            full_url = f"urn:uuid:{uuid.uuid5(FULL_URL_NAMESPACE, f'{analysis_id}/{stored_url}')}"
        full_urls[stored_url] = full_url
        if resource.get("id"):
            full_urls[f"{resource_type}/{resource['id']}"] = full_url
        placed.append((stored_url, full_url, resource))

    taken: set[tuple[str, str, str]] = set()
    out: list[dict[str, Any]] = []
    report: tuple[str, dict[str, Any]] | None = None
    for stored_url, full_url, original in placed:
        resource = _rewritten(copy.deepcopy(original), full_urls)
        resource.pop("id", None)
        _drop_server_meta(resource)
        search = _keyed(resource, analysis_id, stored_url, taken)
        out.append(_entry(full_url, resource, search))
        if resource["resourceType"] == "DiagnosticReport" and report is None:
            report = (full_url, resource)
    if report is not None:
        document = pdf_document(report[1], report[0], analysis_id, pdf)
        key = (REPORT_PDF_SYSTEM, str(analysis_id))
        doc_url = f"urn:uuid:{uuid.uuid5(FULL_URL_NAMESPACE, f'{analysis_id}/document/report-pdf')}"
        out.append(_entry(doc_url, document, _identifier_search(*key)))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": out}
    Bundle.model_validate(bundle)
    return bundle


def pdf_document(report: dict[str, Any], report_url: str, analysis_id: uuid.UUID, pdf: bytes | None) -> dict[str, Any]:
    """The PDF report as a DocumentReference beside its DiagnosticReport: the bytes inside
    (base64, with size and SHA-1 hash) up to MAX_PDF_BYTES, else the report's URL."""
    attachment: dict[str, Any] = {"contentType": "application/pdf", "title": f"DermaSentinel report {analysis_id}"}
    if report.get("issued"):
        attachment["creation"] = report["issued"]
    if pdf is not None and len(pdf) <= MAX_PDF_BYTES:
        attachment["data"] = base64.b64encode(pdf).decode("ascii")
        attachment["size"] = len(pdf)
        attachment["hash"] = base64.b64encode(hashlib.sha1(pdf).digest()).decode("ascii")  # FHIR: SHA-1
    else:
        forms = report.get("presentedForm") or [{}]
        attachment["url"] = forms[0].get("url")
        if pdf is not None:
            attachment["size"] = len(pdf)
    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [{"system": REPORT_PDF_SYSTEM, "value": str(analysis_id)}],
        "status": "current",
        "docStatus": "preliminary" if report.get("status") == "preliminary" else "final",
        "type": {
            "coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
            "text": "AI dermoscopic lesion analysis report (PDF)",
        },
        "description": "The DermaSentinel PDF report of this analysis",
        "content": [{"attachment": attachment}],
        "context": {"related": [{"reference": report_url}]},
    }
    security = (report.get("meta") or {}).get("security")
    if security:
        document["meta"] = {"security": copy.deepcopy(security)}  # the AI label travels with the report
    if report.get("issued"):
        document["date"] = report["issued"]
    if report.get("subject"):
        document["subject"] = copy.deepcopy(report["subject"])
    return document


def _entry(full_url: str, resource: dict[str, Any], search: str) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], "ifNoneExist": search},
    }


def _keyed(resource: dict[str, Any], analysis_id: uuid.UUID, stored_url: str, taken: set[tuple[str, str, str]]) -> str:
    """The ``ifNoneExist`` query of a resource, adding the identifier (or tag) it searches by:
    an identifier of ours it already has; else, for an Observation, analysis id + code; else
    the stored entry's fullUrl. Two resources of one type never share a key."""
    resource_type = resource["resourceType"]
    identifiers = resource.get("identifier")
    for identifier in identifiers if isinstance(identifiers, list) else []:
        system, value = identifier.get("system") or "", identifier.get("value")
        ours = system.startswith(OWN_NAMING_SYSTEMS) and system != EXTERNAL_ID_SYSTEM
        if ours and value and (resource_type, system, value) not in taken:
            taken.add((resource_type, system, value))
            return _identifier_search(system, value)
    code = _observation_code(resource) if resource_type == "Observation" else None
    if code is not None and (resource_type, OBSERVATION_ID_SYSTEM, f"{analysis_id}/{code}") not in taken:
        value = f"{analysis_id}/{code}"
        taken.add((resource_type, OBSERVATION_ID_SYSTEM, value))
        resource.setdefault("identifier", []).append({"system": OBSERVATION_ID_SYSTEM, "value": value})
        return _identifier_search(OBSERVATION_ID_SYSTEM, value)
    # Not the fullUrl itself: a server rewrites every urn:uuid of the transaction it meets, in
    # any string (Medplum does), and the key would become the new resource's id.
    value = f"{analysis_id}/{stored_url.removeprefix('urn:uuid:')}"
    taken.add((resource_type, RESOURCE_KEY_SYSTEM, value))
    if _has_identifier_list(resource_type):
        resource.setdefault("identifier", []).append({"system": RESOURCE_KEY_SYSTEM, "value": value})
        return _identifier_search(RESOURCE_KEY_SYSTEM, value)
    meta = resource.setdefault("meta", {})
    meta.setdefault("tag", []).append({"system": RESOURCE_KEY_SYSTEM, "code": value})
    return urlencode({"_tag": f"{RESOURCE_KEY_SYSTEM}|{value}"}, safe=":/|")


def _identifier_search(system: str, value: str) -> str:
    return urlencode({"identifier": f"{system}|{value}"}, safe=":/|")


def _observation_code(resource: dict[str, Any]) -> str | None:
    codings = (resource.get("code") or {}).get("coding") or []
    ours = [c.get("code") for c in codings if c.get("system") == LOCAL_CODES and c.get("code")]
    if ours:
        return str(ours[0])
    others = [f"{c.get('system', '')}#{c['code']}" for c in codings if c.get("code")]
    return others[0] if others else None


@lru_cache(maxsize=64)
def _has_identifier_list(resource_type: str) -> bool:
    """Whether the R4B type has ``identifier`` as a list (Provenance has none; Bundle one)."""
    try:
        model = get_fhir_model_class(resource_type)
    except KeyError:
        return False
    field = model.model_fields.get("identifier")
    if field is None:
        return False
    annotation = field.annotation
    return any(typing.get_origin(a) is list for a in (annotation, *typing.get_args(annotation)))


def _rewritten(node: Any, full_urls: dict[str, str]) -> Any:
    """``node`` with every ``reference`` to a bundle entry pointing at its fullUrl here."""
    if isinstance(node, list):
        return [_rewritten(item, full_urls) for item in node]
    if isinstance(node, dict):
        rewritten = {key: _rewritten(value, full_urls) for key, value in node.items()}
        reference = rewritten.get("reference")
        if isinstance(reference, str) and reference in full_urls:
            rewritten["reference"] = full_urls[reference]
        return rewritten
    return node


def _drop_server_meta(resource: dict[str, Any]) -> None:
    meta = resource.get("meta")
    if isinstance(meta, dict):
        meta.pop("versionId", None)
        meta.pop("lastUpdated", None)
        if not meta:
            resource.pop("meta")


# ---------------------------------------------------------------- the answer


def checked_response(outcome: AttemptResult, raw: bytes, bundle: dict[str, Any], read_limit: int) -> AttemptResult:
    """Success only if the 2xx answer is a transaction-response whose every entry is 2xx; the
    log keeps a summary (counts and the DiagnosticReport's location), not the echoed resources."""
    sent = bundle["entry"]
    if len(raw) >= read_limit:
        return _refused(outcome, f"the transaction-response is larger than {read_limit} bytes and was not checked",
                        "invalid_response")
    try:
        answer = json.loads(raw)
    except ValueError:
        return _refused(outcome, "the FHIR server's answer is not JSON", "invalid_response")
    if not isinstance(answer, dict) or answer.get("resourceType") != "Bundle" \
            or answer.get("type") not in ("transaction-response", "batch-response"):
        return _refused(outcome, "the FHIR server's answer is not a transaction-response Bundle", "invalid_response")
    entries = answer.get("entry") or []
    if len(entries) != len(sent):
        return _refused(outcome, f"the transaction-response has {len(entries)} entries for the {len(sent)} sent",
                        "invalid_response")
    responses = [entry.get("response") or {} if isinstance(entry, dict) else {} for entry in entries]
    refused = [
        f"{sent[i]['request']['url']} {str(r.get('status', '?'))[:40]}{_diagnostics(r)}"
        for i, r in enumerate(responses)
        if not str(r.get("status", "")).strip().startswith("2")
    ]
    if refused:
        return _refused(outcome, f"{len(refused)} of {len(sent)} entries were refused: " + "; ".join(refused),
                        "entry_refused")
    created = sum(1 for r in responses if str(r.get("status", "")).strip().startswith("201"))
    report_at = next(
        (str(r.get("location", ""))[:200] for i, r in enumerate(responses)
         if sent[i]["request"]["url"] == "DiagnosticReport"),
        "",
    )
    summary = (f"transaction-response: {created} of {len(sent)} entries created, {len(sent) - created} already there; "
               f"DiagnosticReport {report_at or 'has no location'}")
    return replace(outcome, response_excerpt=summary[:1024])


def _diagnostics(response: dict[str, Any]) -> str:
    issues = (response.get("outcome") or {}).get("issue") or []
    text = next((str(i.get("diagnostics") or (i.get("details") or {}).get("text") or "") for i in issues), "")
    return f" ({text[:120]})" if text else ""


def _refused(outcome: AttemptResult, error: str, error_class: str) -> AttemptResult:
    return replace(outcome, ok=False, error=error[:500], error_class=error_class, response_excerpt=None)


def _local_failure(error: str, error_class: str) -> AttemptResult:
    """A failure before anything was sent (retried on the schedule like any other)."""
    return AttemptResult(ok=False, status_code=None, latency_ms=None, error=error, response_excerpt=None,
                         disable_endpoint=False, error_class=error_class)


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


# ---------------------------------------------------------------- the access token


def _access_token(
    settings: Settings, claim: Claim, key: SigningKey, client: httpx.Client | None, deadline: float
) -> tuple[str | None, AttemptResult | None]:
    """A bearer token for this destination: the cached one, or a new one for a fresh client
    assertion. A refusal comes back as the attempt's result, without the token endpoint's body."""
    cache_key = _token_key(claim)
    box = secret_box(settings)
    cached = _cached_token(settings, cache_key, box)
    if cached is not None:
        return cached, None
    config = claim.config
    form = urlencode({
        "grant_type": "client_credentials",
        "scope": config["scopes"],
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(key, config["client_id"], config["token_url"]),
    }).encode("ascii")
    outcome, raw = send(
        "POST", config["token_url"], content=form,
        headers={"content-type": "application/x-www-form-urlencoded", "accept": "application/json"},
        allow_cidrs=settings.webhook_allow_cidrs, timeout=_left(deadline),
        connect_timeout=settings.webhook_connect_timeout_seconds, client=client, tenant_id=claim.tenant_id,
        read_limit=TOKEN_READ_LIMIT,
    )
    if outcome.status_code is None:
        return None, replace(outcome, error=f"token request: {outcome.error}",
                             error_class=f"token_{outcome.error_class}")
    answer = _json_object(raw)
    if not outcome.ok:
        status = outcome.status_code
        code = answer.get("error") if answer.get("error") in OAUTH_ERRORS else None
        description = answer.get("error_description")
        error = f"the token endpoint refused the client assertion: HTTP {status}" + (f" {code}" if code else "")
        if isinstance(description, str) and description:
            error += f": {description[:200]}"
        error_class = f"token_refused:{code}" if code else f"token_http_{status // 100}xx"
        return None, replace(outcome, error=error, error_class=error_class, response_excerpt=None)
    token = answer.get("access_token")
    if not isinstance(token, str) or not token or str(answer.get("token_type", "bearer")).lower() != "bearer":
        return None, replace(outcome, ok=False, error="the token endpoint answered without a bearer access_token",
                             error_class="token_invalid_response", response_excerpt=None)
    _cache_token(settings, cache_key, box, token, answer.get("expires_in"))
    log.info("fhir write-back: new access token for destination %s (expires in %s s)", claim.endpoint_id,
             answer.get("expires_in"))
    return token, None


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _token_key(claim: Claim) -> str:
    """Per destination and per what the token was asked with: a PUT that changes the token URL,
    client, scopes or key asks for a new one."""
    config = claim.config
    parts = (claim.url, config.get("token_url", ""), config.get("client_id", ""), config.get("scopes", ""),
             config.get("kid", ""))
    fingerprint = hashlib.sha256("\n".join(map(str, parts)).encode("utf-8")).hexdigest()[:16]
    return f"{TOKEN_CACHE_KEY}:{claim.endpoint_id}:{fingerprint}"


def _cached_token(settings: Settings, cache_key: str, box: SecretBox) -> str | None:
    try:
        sealed = _redis(settings.broker_url).get(cache_key)
    except redis.RedisError:
        log.warning("fhir write-back: the token cache (Redis) is unavailable; asking for a new token")
        return None
    if not sealed:
        return None
    try:
        return box.open(sealed.decode("ascii") if isinstance(sealed, bytes) else str(sealed))
    except (SecretDecryptionError, UnicodeDecodeError):
        return None


def _cache_token(settings: Settings, cache_key: str, box: SecretBox, token: str, expires_in: object) -> None:
    """Kept (encrypted) until TOKEN_EARLY_S before it expires; not at all without expires_in."""
    try:
        lifetime = float(expires_in)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return
    ttl = int(lifetime - min(TOKEN_EARLY_S, lifetime / 2))
    if ttl < 1:
        return
    try:
        _redis(settings.broker_url).set(cache_key, box.seal(token), ex=ttl)
    except redis.RedisError:
        log.warning("fhir write-back: the token cache (Redis) is unavailable; the token is not kept")


def _forget_token(settings: Settings, cache_key: str) -> None:
    try:
        _redis(settings.broker_url).delete(cache_key)
    except redis.RedisError:
        log.warning("fhir write-back: the token cache (Redis) is unavailable; a refused token may be tried again")


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
