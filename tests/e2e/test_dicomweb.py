"""The PACS destination (issue 23, DICOMweb STOW-RS) through the real API, workers and beat, to a
real PACS: Orthanc with its DICOMweb plugin (Debian's ``orthanc`` and ``orthanc-dicomweb``),
started here on free loopback ports with a storage folder of its own. What the PACS holds is
queried back with ``dicomweb-client`` (QIDO-RS and WADO-RS).

``.ci/run`` installs the two packages; where they are absent these tests skip saying so.
"""

from __future__ import annotations

import io
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_auth
from pydicom.uid import Comprehensive3DSRStorage, EncapsulatedPDFStorage, JPEGBaseline8Bit, SegmentationStorage
from requests.auth import HTTPBasicAuth
from sqlalchemy import select

from devstack import free_port
from devstack._process import ServiceProcess
from shared.db import session_scope
from shared.dicom.common import uid_for
from shared.tables import WebhookEndpoint
from tests.conftest import wait_for
from tests.dicom_files import VL_PHOTOGRAPHIC, anatomic_region, dicom_file
from worker.pipeline.synthetic import encode_jpeg, make_lesion

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PACS_USER, PACS_PASSWORD = "dermasentinel", "Pacs-pa55word-7f3k"
WRONG_PASSWORD = "Wrong-pa55word-q9z2"
BEARER_TOKEN = "tok.Bearer-4c1d9e"
SOP_CLASSES = {SegmentationStorage: "SEG", Comprehensive3DSRStorage: "SR", EncapsulatedPDFStorage: "DOC"}
# QIDO-RS attribute tags (DICOM JSON).
MODALITY, SOP_CLASS, SOP_INSTANCE, SERIES = "00080060", "00080016", "00080018", "0020000E"


# ---------------------------------------------------------------- the PACS


class Orthanc:
    """Orthanc and its DICOMweb plugin on free loopback ports, its database in ``folder``; with
    ``users``, HTTP Basic authentication is required (Orthanc's RegisteredUsers)."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        self.port, dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        storage = folder / f"orthanc-{self.port}"
        storage.mkdir()
        config = {
            "Name": f"dstest-{self.port}", "HttpPort": self.port, "DicomPort": dicom_port,
            "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "Plugins": [str(DICOMWEB_PLUGIN)], "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (storage / "orthanc.json").write_text(json.dumps(config))
        self.log_path = folder / f"orthanc-{self.port}.log"
        self.credentials = next(iter(users.items())) if users else None
        self.auth = HTTPBasicAuth(*self.credentials) if self.credentials else None
        # devstack's process: its own group, dies with the test run (PDEATHSIG), SIGTERM then SIGKILL.
        self.process = ServiceProcess("orthanc", [str(ORTHANC), str(storage / "orthanc.json")], self.log_path, None,
                                      stop_signal=signal.SIGTERM)
        self.process.wait_until(self._answers, timeout=60, what="Orthanc's REST API")

    def _answers(self) -> bool:
        return httpx.get(f"{self.url}/system", timeout=1, auth=self.credentials).status_code == 200

    def client(self) -> DICOMwebClient:
        session = create_session_from_auth(self.auth) if self.auth else None
        return DICOMwebClient(url=self.dicomweb, session=session)

    def instances(self, study_uid: str) -> list[dict[str, Any]]:
        return self.client().search_for_instances(study_instance_uid=study_uid,
                                                  fields=[MODALITY, SOP_CLASS, SERIES])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of its group after a short grace."""
        self.process.stop(grace=5.0)


@pytest.fixture
def orthanc(starts_services, tmp_path) -> Iterator:
    if not (ORTHANC.is_file() and DICOMWEB_PLUGIN.exists()):
        pytest.skip("Orthanc with its DICOMweb plugin is not installed: install Debian packages orthanc and "
                    "orthanc-dicomweb (.ci/run does)")
    started: list[Orthanc] = []

    def start(users: dict[str, str] | None = None) -> Orthanc:
        started.append(Orthanc(tmp_path, users))
        return started[-1]

    yield start
    for server in started:
        server.stop()


# ---------------------------------------------------------------- helpers


def value(found: dict[str, Any], tag: str) -> Any:
    return found[tag]["Value"][0]


def last_delivery(api: httpx.Client, status: str | None = None, attempts: int | None = None) -> dict | None:
    last = api.get("/v1/dicomweb-destination").json()["last_delivery"]
    if last is None or (status and last["status"] != status) or (attempts and len(last["attempts"]) < attempts):
        return None
    return last


def deliveries(api: httpx.Client, status: str, count: int, attempts: int = 1) -> list[dict] | None:
    data = api.get("/v1/dicomweb-destination/deliveries").json()["data"]
    done = [d for d in data if d["status"] == status and len(d["attempts"]) >= attempts]
    return done if len(done) >= count else None


def submit(api: httpx.Client, name: str, content: bytes, content_type: str) -> str:
    answer = api.post("/v1/analyses", files={"image": (name, content, content_type)})
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def content_items(dataset: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def numbers(sr: pydicom.Dataset) -> dict[str, float]:
    return {item.ConceptNameCodeSequence[0].CodeMeaning: float(item.MeasuredValueSequence[0].NumericValue)
            for item in content_items(sr) if item.ValueType == "NUM" and item.get("MeasuredValueSequence")}


def held(pacs: Orthanc, study_uid: str) -> dict[str, tuple[str, str]]:
    """The study's instances in the PACS: SOP Instance UID → (SOP class, modality)."""
    return {value(i, SOP_INSTANCE): (value(i, SOP_CLASS), value(i, MODALITY)) for i in pacs.instances(study_uid)}


# ---------------------------------------------------------------- the tests


def test_the_three_objects_are_stored_to_the_pacs_and_read_back(api, worker, beat, orthanc, wait, wait_final):
    pacs = orthanc()
    created = api.put("/v1/dicomweb-destination", json={"url": pacs.dicomweb + "/"})
    assert created.status_code == 201, created.text
    shown = created.json()
    assert (shown["url"], shown["auth"], shown["events"]) == (pacs.dicomweb, {"type": "none"},
                                                              ["analysis.report_ready"])
    assert shown["enabled"] and shown["last_delivery"] is None

    lesion = make_lesion(seed=41, size=(240, 320), radius_frac=0.2, irregularity=0.4).image
    source = dicom_file(lesion, sop_class=VL_PHOTOGRAPHIC, transfer_syntax=JPEGBaseline8Bit, PatientAge="058Y",
                        PatientSex="F", AnatomicRegionSequence=anatomic_region("Trunk structure"))
    source_study = pydicom.dcmread(io.BytesIO(source)).StudyInstanceUID
    from_dicom = submit(api, "a.dcm", source, "application/dicom")
    from_jpeg = submit(api, "l.jpg", encode_jpeg(make_lesion(seed=42, size=(300, 400), radius_frac=0.2).image),
                       "image/jpeg")
    blurry = submit(api, "b.jpg", encode_jpeg(make_lesion(seed=3, size=(240, 320), blur=8.0).image), "image/jpeg")
    analyses = {ident: wait_final(ident) for ident in (from_dicom, from_jpeg, blurry)}
    assert [analyses[i]["status"] for i in (from_dicom, from_jpeg, blurry)] == ["succeeded", "succeeded", "rejected"]
    stored = wait(lambda: deliveries(api, "delivered", 3), timeout=240, message="the three analyses stored")
    for delivery in stored:
        (attempt,) = delivery["attempts"]
        assert attempt["status_code"] == 200
        # 127.0.0.1 is an internal target (WEBHOOK_ALLOW_CIDRS): the log keeps no response text.
        assert attempt["error"] is None and attempt["response_excerpt"] is None

    # The DICOM upload: the objects joined the source's study and reference its instance.
    studies = {from_dicom: source_study, from_jpeg: uid_for(from_jpeg, "study"), blurry: uid_for(blurry, "study")}
    for ident in (from_dicom, from_jpeg):
        instances = held(pacs, studies[ident])
        assert instances == {
            uid_for(ident, "seg"): (SegmentationStorage, "SEG"),
            uid_for(ident, "sr"): (Comprehensive3DSRStorage, "SR"),
            uid_for(ident, "pdf"): (EncapsulatedPDFStorage, "DOC"),
        }, ident
        client = pacs.client()
        found = {value(i, SOP_INSTANCE): value(i, SERIES) for i in pacs.instances(studies[ident])}
        sr = client.retrieve_instance(studies[ident], found[uid_for(ident, "sr")], uid_for(ident, "sr"))
        probability = analyses[ident]["result"]["probability"]
        assert abs(numbers(sr)["Melanoma probability"] - probability) < 1e-9
        # What the PACS holds is what the API serves, element for element.
        for kind in ("seg", "sr", "pdf"):
            uid = uid_for(ident, kind)
            retrieved = sr if kind == "sr" else client.retrieve_instance(studies[ident], found[uid], uid)
            served = pydicom.dcmread(io.BytesIO(api.get(f"/v1/analyses/{ident}/dicom/{kind}").content))
            assert retrieved == served, (ident, kind)
            if kind == "seg" and ident == from_dicom:
                source_uid = pydicom.dcmread(io.BytesIO(source)).SOPInstanceUID
                referenced = retrieved.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
                assert referenced.ReferencedSOPInstanceUID == source_uid
    # A rejected analysis has a report, no mask and no findings: its Encapsulated PDF alone.
    assert held(pacs, studies[blurry]) == {uid_for(blurry, "pdf"): (EncapsulatedPDFStorage, "DOC")}

    # A resend (and so any retry) stores the same instances again: still three, one copy each.
    before = {ident: held(pacs, studies[ident]) for ident in studies}
    for delivery in stored:
        assert api.post(f"/v1/dicomweb-destination/deliveries/{delivery['id']}/resend").status_code == 202
    wait(lambda: deliveries(api, "delivered", 3, attempts=2), timeout=120, message="the resends")
    assert {ident: held(pacs, studies[ident]) for ident in studies} == before
    statistics = httpx.get(f"{pacs.url}/statistics", timeout=10).json()
    assert statistics["CountInstances"] == 3 + 3 + 1


def test_wrong_credentials_fail_clearly_and_no_password_is_shown_or_logged(api, worker, beat, orthanc, wait,
                                                                           context, tenant_key):
    pacs = orthanc({PACS_USER: PACS_PASSWORD})
    body = {"url": pacs.dicomweb, "auth": {"type": "basic", "username": PACS_USER, "password": WRONG_PASSWORD}}
    created = api.put("/v1/dicomweb-destination", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["auth"] == {"type": "basic", "username": PACS_USER}
    assert WRONG_PASSWORD not in created.text

    ident = submit(api, "l.jpg", encode_jpeg(make_lesion(seed=43, size=(240, 320), radius_frac=0.2).image),
                   "image/jpeg")
    failed = wait(lambda: last_delivery(api, "failed"), timeout=240, message="the store to run out of retries")
    assert len(failed["attempts"]) == 5  # the test schedule: four retries
    for attempt in failed["attempts"]:
        # An internal target: the log keeps the status code and the error class.
        assert (attempt["status_code"], attempt["error"], attempt["response_excerpt"]) == (401, "auth_refused", None)
    shown = api.get("/v1/dicomweb-destination")
    assert shown.json()["failing_since"] is not None
    assert not pacs.instances(uid_for(ident, "study"))

    # The right password, a resend: stored (Basic authentication works).
    body["auth"]["password"] = PACS_PASSWORD
    assert api.put("/v1/dicomweb-destination", json=body).status_code == 200
    assert api.post(f"/v1/dicomweb-destination/deliveries/{failed['id']}/resend").status_code == 202
    done = wait(lambda: last_delivery(api, "delivered"), timeout=120, message="the store with the right password")
    assert done["attempts"][-1]["status_code"] == 200
    assert len(pacs.instances(uid_for(ident, "study"))) == 3
    assert api.get("/v1/dicomweb-destination").json()["failing_since"] is None

    # No password anywhere it could be read: the API's answers, the log, the row, the worker's log.
    shown_text = api.get("/v1/dicomweb-destination").text + api.get("/v1/dicomweb-destination/deliveries").text
    worker_log = Path(worker.log_path).read_text(errors="replace")
    with session_scope(context.session_factory) as session:
        (row,) = session.execute(
            select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_key[0])
        ).scalars()
        stored_text = json.dumps(row.config) + row.secret_encrypted + row.url
    for password in (PACS_PASSWORD, WRONG_PASSWORD):
        assert password not in shown_text and password not in worker_log and password not in stored_text


def test_the_destination_api_checks_its_input_scopes_and_audits(api, api_url, context, tenant_key):
    assert api.get("/v1/dicomweb-destination").status_code == 404
    url = "http://127.0.0.1:9/dicom-web"
    refused = {
        "query string": {"url": url + "?x=1"},
        "metadata address": {"url": "http://169.254.169.254/dicom-web"},
        "private address": {"url": "http://10.0.0.5/dicom-web"},
        "credentials in the URL": {"url": "http://u:p@127.0.0.1:9/dicom-web"},
        "unknown auth": {"url": url, "auth": {"type": "digest", "username": "u", "password": "p"}},
        "colon in the user": {"url": url, "auth": {"type": "basic", "username": "a:b", "password": "p"}},
        "extra field": {"url": url, "secret": "x"},
    }
    for case, body in refused.items():
        answer = api.put("/v1/dicomweb-destination", json=body)
        assert answer.status_code == 422, (case, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
    assert "url is refused" in api.put("/v1/dicomweb-destination", json=refused["metadata address"]).text

    bearer = {"url": url, "auth": {"type": "bearer", "token": BEARER_TOKEN}}
    first = api.put("/v1/dicomweb-destination", json=bearer)
    assert first.status_code == 201 and first.json()["auth"] == {"type": "bearer"}
    assert BEARER_TOKEN not in first.text and BEARER_TOKEN not in api.get("/v1/dicomweb-destination").text
    # A later PUT may leave the credentials out (the stored ones stay), and replaces the rest.
    second = api.put("/v1/dicomweb-destination", json={"url": url + "2", "enabled": False})
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    assert (second.json()["url"], second.json()["auth"], second.json()["enabled"]) == (
        url + "2", {"type": "bearer"}, False)
    with session_scope(context.session_factory) as session:
        (row,) = session.execute(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_key[0])).scalars()
        assert row.kind == "dicomweb" and row.config == {"auth": "bearer"}
        assert BEARER_TOKEN not in row.secret_encrypted
    none = api.put("/v1/dicomweb-destination", json={"url": url, "auth": {"type": "none"}})
    assert none.json()["auth"] == {"type": "none"} and none.json()["enabled"] is True
    # Not a webhook endpoint: the webhooks API neither lists nor shows it.
    assert api.get("/v1/webhook-endpoints").json()["data"] == []
    assert api.get(f"/v1/webhook-endpoints/{first.json()['id']}").status_code == 404
    assert api.post(f"/v1/dicomweb-destination/deliveries/{uuid.uuid4()}/resend").status_code == 404

    viewer = api.post("/v1/api-keys", json={"name": "viewer", "scopes": ["analyses:read"]}).json()["key"]
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {viewer}"}) as other:
        for method in ("get", "delete"):
            forbidden = getattr(other, method)("/v1/dicomweb-destination")
            assert forbidden.status_code == 403 and "'webhooks:manage'" in forbidden.json()["detail"]
        assert other.put("/v1/dicomweb-destination", json={"url": url}).status_code == 403
        assert other.get("/v1/dicomweb-destination/deliveries").status_code == 403

    assert api.get("/v1/dicomweb-destination/deliveries").json()["data"] == []
    assert api.delete("/v1/dicomweb-destination").status_code == 204
    assert api.get("/v1/dicomweb-destination").status_code == 404
    assert api.delete("/v1/dicomweb-destination").status_code == 404
    wanted = {"dicomweb_destination.update", "dicomweb_destination.read", "dicomweb_destination.delete",
              "dicomweb_destination.deliveries"}

    def audited() -> bool:
        page = api.get("/v1/audit-events", params={"limit": 100, "resource_type": "dicomweb_destination"}).json()
        return wanted <= {event["action"] for event in page["data"]}

    wait_for(audited, timeout=10, message="the audit rows of the destination's operations")


def test_the_destination_is_per_tenant(api, api_url, context):
    from shared.tenants import issue_key

    assert api.put("/v1/dicomweb-destination", json={"url": "http://127.0.0.1:9/dicom-web"}).status_code == 201
    with session_scope(context.session_factory) as session:
        _, other_key = issue_key(session, f"other-{uuid.uuid4().hex[:8]}")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        assert other.get("/v1/dicomweb-destination").status_code == 404
        assert other.get("/v1/dicomweb-destination/deliveries").status_code == 404
        assert other.delete("/v1/dicomweb-destination").status_code == 404
    assert api.get("/v1/dicomweb-destination").status_code == 200
