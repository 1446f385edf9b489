"""The ``dicomweb`` kind (issue 23; docs/DICOM.md "PACS (DICOMweb)"): every analysis' DICOM
objects, stored to the tenant's PACS by STOW-RS.

On ``analysis.report_ready`` one attempt (``DicomwebStore.send``):

1. loads the analysis record, its mask and its PDF report from the database and the artifacts
   bucket, and builds the objects exactly as ``GET /v1/analyses/{id}/dicom/seg|sr|pdf`` do
   (``shared.dicom``): the Segmentation, the TID 1500 SR and the Encapsulated PDF for a
   succeeded analysis, the Encapsulated PDF alone for a rejected or failed one (it has a
   report but no mask and no findings). Their SOP Instance UIDs are derived from the analysis
   id, so every attempt stores the same instances and a PACS never keeps a second copy;
2. POSTs them as one ``multipart/related; type="application/dicom"`` request to
   ``{url}/studies`` with the stored credentials (Basic or Bearer), asking for
   ``application/dicom+json``;
3. reads the Store Instances Response (DICOM JSON, or the XML of PS3.19 should the server
   answer so): success is a 2xx that lists every instance sent as stored (warnings allowed),
   none failed. An instance the PACS refuses as a duplicate (0111) is already there.

The one request goes through ``worker.delivery.send`` (the SSRF guard, pinned addresses, no
redirects, one deadline of ``WEBHOOK_TIMEOUT_SECONDS``). Failures are returned, never raised,
and never quote a password, a token, a UID or anything of the patient.
"""

from __future__ import annotations

import base64
import json
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx
import urllib3
from minio.error import S3Error
from pydicom.dataset import Dataset

from shared import lifecycle
from shared.context import AppContext
from shared.dicom.common import part10
from shared.dicom.documents import build_encapsulated_pdf
from shared.dicom.measurements import build_measurement_report
from shared.dicom.segmentation import build_segmentation
from shared.schemas.analyses import AnalysisRecord
from shared.storage import ARTIFACTS
from shared.tables import Analysis, AnalysisStatus, Event, Report, WebhookEndpoint
from worker.delivery import AttemptResult, send
from worker.destinations import DICOMWEB, Claim, register

STORE_EVENT = "analysis.report_ready"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
# The Store Instances Response of three instances is a few KiB (Orthanc pretty-prints ~4 KiB).
RESPONSE_READ_LIMIT = 256 * 1024

# The Store Instances Response module (PS3.18 10.5.3, PS3.4 Annex GG).
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
DUPLICATE_SOP_INSTANCE = 0x0111  # "already stored": with our derived UIDs, by an earlier attempt
REASONS = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
}


class AnalysisGone(Exception):
    """The analysis or its report is not there (the analysis was erased)."""


@dataclass(frozen=True)
class StowObject:
    """One instance to store: what it is (``seg``, ``sr`` or ``pdf``), its UIDs and its Part 10 bytes."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    data: bytes

    @property
    def label(self) -> str:
        return {"seg": "SEG", "sr": "SR", "pdf": "Encapsulated PDF"}.get(self.kind, self.kind)


class DicomwebStore:
    """The ``dicomweb`` kind: the analysis' DICOM objects, by STOW-RS, to the tenant's PACS."""

    kind = DICOMWEB

    def matches(self, endpoint: WebhookEndpoint, event: Event) -> bool:
        return event.type == STORE_EVENT

    def send(self, context: AppContext, claim: Claim, client: httpx.Client | None) -> AttemptResult:
        settings = context.settings
        try:
            analysis_id = uuid.UUID(str(claim.payload["data"]["id"]))
        except (KeyError, TypeError, ValueError):
            return _local_failure("the event names no analysis", "bad_event")
        try:
            auth = authorization(claim.secrets[0])
        except (IndexError, ValueError, KeyError, TypeError):
            return _local_failure("the stored credentials cannot be read; PUT /v1/dicomweb-destination with them "
                                  "again", "auth_invalid")
        try:
            objects = load_objects(context, claim.tenant_id, analysis_id)
        except AnalysisGone:
            return _local_failure("the analysis or its report no longer exists (the analysis was erased)",
                                  "report_missing")
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            return _local_failure(f"the mask or the PDF could not be read from the object store "
                                  f"({type(exc).__name__})", "object_store")
        except (ValueError, TypeError, AttributeError) as exc:
            return _local_failure(f"the DICOM objects could not be built ({type(exc).__name__})", "build_failed")

        boundary, body = multipart_related(objects)
        headers = {
            "content-type": f'multipart/related; type="{DICOM}"; boundary={boundary}',
            "accept": DICOM_JSON,
            **auth,
        }
        outcome, raw = send(
            "POST", stow_url(claim.url), content=body, headers=headers,
            allow_cidrs=settings.webhook_allow_cidrs, timeout=settings.webhook_timeout_seconds,
            connect_timeout=settings.webhook_connect_timeout_seconds, client=client, tenant_id=claim.tenant_id,
            read_limit=RESPONSE_READ_LIMIT,
        )
        return checked_response(outcome, raw, objects, auth_type=str(claim.config.get("auth", "none")))


register(DicomwebStore())


# ---------------------------------------------------------------- what is sent


def load_objects(context: AppContext, tenant_id: uuid.UUID, analysis_id: uuid.UUID) -> list[StowObject]:
    """The analysis' objects, built from what is stored as the API's ``/dicom/*`` build them
    (a short read; no session is open while anything is sent)."""
    with context.session_factory() as session:
        analysis = session.get(Analysis, analysis_id)
        report = session.get(Report, analysis_id)
        if analysis is None or analysis.tenant_id != tenant_id or report is None:
            raise AnalysisGone(str(analysis_id))
        record = lifecycle.analysis_record(analysis)
        succeeded = analysis.status == AnalysisStatus.succeeded.value and bool(analysis.mask_key)
        mask_key = analysis.mask_key if succeeded else None
        pdf_key = report.pdf_key
        report_created_at = report.created_at.isoformat() if report.created_at else None
    try:
        pdf = context.store.get(ARTIFACTS, pdf_key)
        mask = context.store.get(ARTIFACTS, mask_key) if mask_key else None
    except S3Error as exc:
        if exc.code in {"NoSuchKey", "NoSuchObject", "NotFound"}:
            raise AnalysisGone(str(analysis_id)) from None
        raise
    return stow_objects(record, mask, pdf, report_created_at)


def stow_objects(
    record: AnalysisRecord, mask_png: bytes | None, pdf: bytes, report_created_at: str | None
) -> list[StowObject]:
    """The instances of one analysis, in the order they are sent: the Segmentation and the SR
    (which references the Segmentation's segment) when there is a mask, then the Encapsulated
    PDF. The patient is the builders' anonymous one (``DS-<analysis id>``)."""
    datasets: list[tuple[str, Dataset]] = []
    if mask_png is not None and record.result is not None:
        datasets.append(("seg", build_segmentation(record, mask_png)))
        datasets.append(("sr", build_measurement_report(record)))
    datasets.append(("pdf", build_encapsulated_pdf(record, pdf, report_created_at)))
    return [
        StowObject(kind=kind, sop_class_uid=str(dataset.SOPClassUID), sop_instance_uid=str(dataset.SOPInstanceUID),
                   data=part10(dataset))
        for kind, dataset in datasets
    ]


def multipart_related(objects: Sequence[StowObject]) -> tuple[str, bytes]:
    """(boundary, body) of a ``multipart/related; type="application/dicom"`` request (RFC 2387,
    PS3.18 8.6.1.2): one ``application/dicom`` part per instance, its Part 10 bytes unchanged."""
    while True:
        boundary = f"DermaSentinel-{uuid.uuid4().hex}"
        marker = boundary.encode("ascii")
        if not any(marker in item.data for item in objects):
            break
    parts = [b"--" + marker + b"\r\nContent-Type: " + DICOM.encode("ascii") + b"\r\n\r\n" + item.data + b"\r\n"
             for item in objects]
    return boundary, b"".join(parts) + b"--" + marker + b"--\r\n"


def stow_url(base: str) -> str:
    return base.rstrip("/") + "/studies"


def authorization(sealed_plaintext: str) -> dict[str, str]:
    """The Authorization header of the stored credentials (``{}`` for none)."""
    auth = json.loads(sealed_plaintext)
    kind = auth["type"]
    if kind == "none":
        return {}
    if kind == "basic":
        pair = f"{auth['username']}:{auth['password']}".encode()
        return {"authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    if kind == "bearer":
        return {"authorization": f"Bearer {auth['token']}"}
    raise ValueError(f"unknown authentication type {kind!r}")


# ---------------------------------------------------------------- the answer


@dataclass(frozen=True)
class StoreAnswer:
    """What a Store Instances Response says, by our instances: stored (with warning codes),
    failed (with failure codes); ``None`` when the answer is not a Store Instances Response."""

    stored: dict[str, list[int]]
    failed: dict[str, list[int]]


def checked_response(
    outcome: AttemptResult, raw: bytes, objects: Sequence[StowObject], auth_type: str = "none"
) -> AttemptResult:
    """The attempt judged by the PACS's answer. Success: a 2xx Store Instances Response that
    lists every instance sent as stored (with or without warnings) and none failed. A failure
    0111 (duplicate SOP instance) means the instance is there already (an earlier attempt stored
    it: the UIDs are derived from the analysis), so it counts as stored, even in a 409 answer
    whose every instance is a duplicate. The log keeps our words and the codes, never the
    answer's text (which names the study and the instances)."""
    status = outcome.status_code
    if status is None:
        return outcome  # never answered: the transport's own error
    if status in (401, 403):
        how = {"basic": "the Basic credentials", "bearer": "the bearer token"}.get(
            auth_type, "the request (no credentials are configured)")
        return _refused(outcome, f"HTTP {status}: the PACS refused {how}; PUT /v1/dicomweb-destination with the "
                        "right credentials", "auth_refused")
    labels = {item.sop_instance_uid: item.label for item in objects}
    answer = store_answer(raw) if len(raw) < RESPONSE_READ_LIMIT else None
    refused = {uid: codes for uid, codes in (answer.failed if answer else {}).items()
               if not codes or any(code != DUPLICATE_SOP_INSTANCE for code in codes)}
    if refused:
        error_class = "instances_refused" if outcome.ok else f"http_{status // 100}xx"
        return _refused(outcome, f"HTTP {status}: {_failures(refused, labels, len(objects))}", error_class)
    if answer is None or not (outcome.ok or status == 409):
        if not outcome.ok:
            return outcome
        why = "too large to check" if len(raw) >= RESPONSE_READ_LIMIT else "not a Store Instances Response"
        return _refused(outcome, f"HTTP {status}, but the answer is {why} (DICOM JSON or XML): it does not say the "
                        "instances were stored; is url the DICOMweb base?", "invalid_response")
    duplicates = [uid for uid in answer.failed if uid in labels]
    missing = [uid for uid in labels if uid not in answer.stored and uid not in duplicates]
    if missing:
        named = ", ".join(labels[uid] for uid in missing)
        if not outcome.ok:
            return replace(outcome, response_excerpt=None)
        return _refused(outcome, f"HTTP {status}, but the answer lists {len(labels) - len(missing)} of the "
                        f"{len(labels)} instances sent as stored or already there ({named}: neither)",
                        "invalid_response")
    summary = f"HTTP {status}: stored {len(labels)} of {len(labels)} instances ({', '.join(labels.values())})"
    if duplicates:
        summary += f"; {len(duplicates)} already there (duplicate SOP instance)"
    warned = {uid: codes for uid, codes in answer.stored.items() if codes and uid in labels}
    if warned:
        summary += "; warnings: " + "; ".join(f"{labels[uid]} {_codes(codes)}" for uid, codes in warned.items())
    return replace(outcome, ok=True, error=None, error_class=None, response_excerpt=summary[:1024])


def store_answer(raw: bytes) -> StoreAnswer | None:
    """The Store Instances Response in ``raw`` (DICOM JSON, else the XML of PS3.19), by SOP
    Instance UID; None when ``raw`` is neither or holds no sequence of either kind."""
    text = raw.strip()
    if not text:
        return None
    data: Any
    if text[:1] in (b"{", b"["):
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
    elif text[:1] == b"<":
        data = _native_model(text)
    else:
        return None
    if not isinstance(data, dict) or not ({FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE} & data.keys()):
        return None
    return StoreAnswer(stored=_by_instance(data, REFERENCED_SOP_SEQUENCE, WARNING_REASON),
                       failed=_by_instance(data, FAILED_SOP_SEQUENCE, FAILURE_REASON))


def _by_instance(data: dict[str, Any], sequence: str, reason: str) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    element = data.get(sequence)
    items = element.get("Value") if isinstance(element, dict) else None
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        uid = _first(item, REFERENCED_SOP_INSTANCE)
        if isinstance(uid, str) and uid:
            found.setdefault(uid, []).extend(_ints(item.get(reason)))
    return found


def _first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _ints(element: Any) -> list[int]:
    values = element.get("Value") if isinstance(element, dict) else None
    codes = []
    for value in values if isinstance(values, list) else []:
        try:
            code = int(value)
        except (TypeError, ValueError):
            continue
        if 0 <= code <= 0xFFFF:
            codes.append(code)
    return codes


def _native_model(text: bytes) -> dict[str, Any] | None:
    """A PS3.19 Native DICOM Model document as the DICOM JSON shape (the attributes read here
    only: UIDs, reason codes, sequences). No DOCTYPE: entity tricks are refused outright."""
    if b"<!DOCTYPE" in text.upper() or b"<!ENTITY" in text.upper():
        return None
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return None
    return _attributes(root)


def _attributes(node: ElementTree.Element) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for attribute in node:
        if _local(attribute.tag) != "DicomAttribute" or not attribute.get("tag"):
            continue
        vr = attribute.get("vr", "")
        if vr == "SQ":
            items = [_attributes(item) for item in attribute if _local(item.tag) == "Item"]
            attributes[str(attribute.get("tag")).upper()] = {"vr": vr, "Value": items}
        else:
            values = [(value.text or "").strip() for value in attribute if _local(value.tag) == "Value"]
            attributes[str(attribute.get("tag")).upper()] = {"vr": vr, "Value": values}
    return attributes


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _codes(codes: list[int]) -> str:
    return ", ".join(f"{code:04X}" + (f" ({REASONS[code]})" if code in REASONS else "") for code in codes)


def _failures(failed: dict[str, list[int]], labels: dict[str, str], sent: int) -> str:
    ours = [f"{labels[uid]} {_codes(codes) or 'no reason given'}" for uid, codes in failed.items() if uid in labels]
    others = len(failed) - len(ours)
    text = f"{len(ours)} of the {sent} instances were refused: " + "; ".join(ours)
    if others:
        text += f" (and {others} instance(s) not sent)"
    return text


def _refused(outcome: AttemptResult, error: str, error_class: str) -> AttemptResult:
    return replace(outcome, ok=False, error=error[:500], error_class=error_class, response_excerpt=None)


def _local_failure(error: str, error_class: str) -> AttemptResult:
    """A failure before anything was sent (retried on the schedule like any other)."""
    return AttemptResult(ok=False, status_code=None, latency_ms=None, error=error, response_excerpt=None,
                         disable_endpoint=False, error_class=error_class)
