"""EHR write-back (issue 23) through the real API, workers and beat, to a real FHIR server:
Medplum's FHIR router on its in-memory repository, behind a SMART Backend Services token
endpoint that verifies our client assertions against the public key it was given
(tests/fhir_server/server.js). The records are read back from that server.

The server's packages are installed by ``npm ci`` in tests/fhir_server (.ci/run does it);
where they are absent these tests skip saying so.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import select

from devstack import child_env, free_port, start_api, start_beat, start_worker
from shared.db import session_scope
from shared.smart_backend import client_assertion, signing_key, thumbprint
from shared.tables import WebhookDelivery, WebhookEndpoint
from tests.conftest import ROOT, wait_for
from worker.fhir_writeback import OBSERVATION_ID_SYSTEM, REPORT_PDF_SYSTEM
from worker.pipeline.synthetic import encode_jpeg, make_lesion
from worker.reporting.fhir import ANALYSIS_ID_SYSTEM

SERVER_DIR = ROOT / "tests" / "fhir_server"
CLIENT_ID = "dermasentinel-test"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


# ---------------------------------------------------------------- the FHIR server


def rsa_key(kid: str | None = "rsa-1") -> dict:
    jwk = RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), as_dict=True)
    return {**jwk, "kid": kid} if kid else jwk


def ec_key(kid: str | None = None) -> dict:
    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()), as_dict=True)
    return {**jwk, "kid": kid} if kid else jwk


class FhirServer:
    """tests/fhir_server/server.js on a free loopback port, trusting the public half of ``keys``."""

    def __init__(self, keys: list[dict], folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/fhir/R4"
        self.token_url = f"{self.url}/token"
        jwks = folder / f"jwks-{self.port}.json"
        jwks.write_text(json.dumps({"keys": [signing_key(k).public_jwk for k in keys]}))
        self.log_path = folder / f"fhir-server-{self.port}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["node", "server.js", "--port", str(self.port), "--jwks", str(jwks), "--client-id", CLIENT_ID],
                cwd=SERVER_DIR, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for(self._answers, timeout=60, message=f"the FHIR test server (log: {self.log_path})")
        self._token: str | None = None

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the FHIR test server exited: {self.log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/control", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def control(self, **knobs: Any) -> dict:
        if knobs:
            return httpx.post(f"{self.url}/control", json=knobs, timeout=5).json()
        return httpx.get(f"{self.url}/control", timeout=5).json()

    def reader(self, private_jwk: dict) -> httpx.Client:
        """A client of the FHIR API holding a token of its own (the same SMART flow, by the test)."""
        form = {
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(signing_key(private_jwk), CLIENT_ID, self.token_url),
        }
        answer = httpx.post(self.token_url, data=form, timeout=10)
        assert answer.status_code == 200, answer.text
        return httpx.Client(base_url=self.base_url, timeout=10,
                            headers={"authorization": f"Bearer {answer.json()['access_token']}"})

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def fhir_server(starts_services, tmp_path) -> Iterator:
    if shutil.which("node") is None or not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        pytest.skip("the FHIR test server is not installed: run npm ci in tests/fhir_server (Node.js 20.19 or later)")
    servers: list[FhirServer] = []

    def start(*keys: dict) -> FhirServer:
        servers.append(FhirServer(list(keys), tmp_path))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# ---------------------------------------------------------------- helpers


def destination(server: FhirServer, private_jwk: dict | None, **fields: Any) -> dict:
    body = {"base_url": server.base_url, "token_url": server.token_url, "client_id": CLIENT_ID, **fields}
    if private_jwk is not None:
        body["private_key_jwk"] = private_jwk
    return body


def submit(api: httpx.Client, seed: int, external_id: str) -> str:
    image = encode_jpeg(make_lesion(seed=seed, size=(300, 400), radius_frac=0.2).image)
    response = api.post("/v1/analyses", files={"image": ("l.jpg", image, "image/jpeg")},
                        data={"external_id": external_id, "age": "50",
                              "patient_reference": f"urn:oid:2.16.840.1.113883.19.5|mrn-{seed}"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def search(reader: httpx.Client, resource_type: str, **params: str) -> list[dict]:
    answer = reader.get(f"/{resource_type}", params={"_count": "500", **params})
    assert answer.status_code == 200, answer.text
    return [entry["resource"] for entry in answer.json().get("entry") or []]


def reports_of(reader: httpx.Client, analysis_id: str) -> list[dict]:
    return search(reader, "DiagnosticReport", identifier=f"{ANALYSIS_ID_SYSTEM}|{analysis_id}")


def one_report(reader: httpx.Client, analysis_id: str, timeout: float = 240) -> dict:
    (report,) = wait_for(lambda: reports_of(reader, analysis_id), timeout=timeout,
                         message="the DiagnosticReport in the FHIR server")
    return report


def last_delivery(api: httpx.Client, status: str | None = None, attempts: int | None = None) -> dict | None:
    last = api.get("/v1/fhir-destination").json()["last_delivery"]
    if last is None or (status and last["status"] != status) or (attempts and len(last["attempts"]) < attempts):
        return None
    return last


def written_back(reader: httpx.Client, analysis_id: str) -> dict[str, list[dict]]:
    """Everything the EHR holds for the analysis, by type."""
    return {
        "DiagnosticReport": reports_of(reader, analysis_id),
        "Observation": [o for o in search(reader, "Observation")
                        if any(i.get("system") == OBSERVATION_ID_SYSTEM and i["value"].startswith(analysis_id)
                               for i in o.get("identifier", []))],
        "DocumentReference": search(reader, "DocumentReference", identifier=f"{REPORT_PDF_SYSTEM}|{analysis_id}"),
    }


# ---------------------------------------------------------------- the tests


def test_a_report_is_written_back_once_and_read_back_from_the_fhir_server(api, worker, beat, fhir_server, wait):
    key = rsa_key()
    server = fhir_server(key)
    created = api.put("/v1/fhir-destination", json=destination(server, key))
    assert created.status_code == 201, created.text
    shown = created.json()
    assert (shown["alg"], shown["kid"], shown["events"]) == ("RS384", "rsa-1", ["analysis.report_ready"])
    assert shown["public_jwk"]["n"] == key["n"] and "d" not in shown["public_jwk"]
    assert key["d"] not in created.text and key["p"] not in created.text
    assert shown["last_delivery"] is None
    read = api.get("/v1/fhir-destination")
    assert read.status_code == 200 and read.json()["public_jwk"] == shown["public_jwk"]
    assert not any(key[member] in read.text for member in PRIVATE_MEMBERS), "GET never shows the private key"

    analysis_id = submit(api, seed=31, external_id="fhir-wb-31")
    # Read once the transaction is answered (a server may answer reads between its entries).
    delivered = wait(lambda: last_delivery(api, "delivered"), timeout=240, message="the write-back")
    assert [a["status_code"] for a in delivered["attempts"]] == [200]
    reader = server.reader(key)
    report = one_report(reader, analysis_id, timeout=5)
    stored = api.get(f"/v1/analyses/{analysis_id}/fhir").json()
    stored_types = [e["resource"]["resourceType"] for e in stored["entry"]]

    # Read back: the report, its Observations (each by the reference the report holds), the PDF.
    assert report["status"] == "preliminary"  # the test stack's weights are untrained
    # The patient by the clinic's identifier; external_id is the report's own identifier (issue 23).
    assert report["subject"]["identifier"] == {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "mrn-31"}
    assert "fhir-wb-31" in [identifier["value"] for identifier in report["identifier"]]
    results = [reader.get(f"/{ref['reference']}").json() for ref in report.get("result", [])]
    assert len(results) == stored_types.count("Observation") > 0
    assert all(o["resourceType"] == "Observation" and o["status"] == "preliminary" for o in results)
    assert all(ref["reference"].startswith("Observation/") for ref in report["result"])
    held = written_back(reader, analysis_id)
    assert sorted(o["id"] for o in held["Observation"]) == sorted(o["id"] for o in results)
    (document,) = held["DocumentReference"]
    pdf = api.get(f"/v1/analyses/{analysis_id}/report.pdf").content
    assert base64.b64decode(document["content"][0]["attachment"]["data"]) == pdf
    assert document["context"]["related"] == [{"reference": f"DiagnosticReport/{report['id']}"}]
    media = search(reader, "Media")
    assert {m["id"] for m in media} >= {r["link"]["reference"].split("/")[1] for r in report["media"]}


    # A resend (and so any retry) matches what the server holds: still one of each.
    counts = {kind: len(found) for kind, found in held.items()}
    resent = api.post(f"/v1/fhir-destination/deliveries/{delivered['id']}/resend")
    assert resent.status_code == 202
    wait(lambda: last_delivery(api, "delivered", attempts=2), timeout=60, message="the resend")
    assert {kind: len(found) for kind, found in written_back(reader, analysis_id).items()} == counts
    control = server.control()
    assert control["bundle_results"][-1]["created"] == 0 and control["bundle_results"][-1]["refused"] == 0
    assert control["tokens_issued"] == 1 + 1, "the resend used the cached token (the other one is the reader's)"

    # The server forgets its tokens: the next attempt's 401 drops ours, the retry gets a new one.
    server.control(revoke_tokens=True)
    api.post(f"/v1/fhir-destination/deliveries/{delivered['id']}/resend")
    log = wait(lambda: last_delivery(api, "delivered", attempts=4), timeout=60, message="401, then a new token")
    assert [a["status_code"] for a in log["attempts"]] == [200, 200, 401, 200]
    assert server.control()["tokens_issued"] == 3
    assert len(reports_of(server.reader(key), analysis_id)) == 1

    # No token anywhere it could be read: the delivery log, the API's answers, the worker's log.
    tokens = server.control()["issued"]
    shown_log = api.get("/v1/fhir-destination/deliveries").text + api.get("/v1/fhir-destination").text
    worker_log = Path(worker.log_path).read_text(errors="replace")
    assert tokens and not any(token in shown_log or token in worker_log for token in tokens)


def test_an_es384_key_without_a_kid_is_named_by_its_thumbprint(api, worker, beat, fhir_server, wait):
    key = ec_key()
    server = fhir_server(key)
    created = api.put("/v1/fhir-destination", json=destination(server, key))
    assert created.status_code == 201, created.text
    shown = created.json()
    assert shown["alg"] == "ES384" and shown["kid"] == thumbprint(signing_key(key).public_jwk)
    assert shown["public_jwk"]["crv"] == "P-384" and "d" not in shown["public_jwk"]

    analysis_id = submit(api, seed=32, external_id="fhir-wb-32")
    wait(lambda: last_delivery(api, "delivered"), timeout=240, message="the write-back")
    reader = server.reader({**key, "kid": shown["kid"]})
    one_report(reader, analysis_id, timeout=5)
    held = written_back(reader, analysis_id)
    assert len(held["DocumentReference"]) == 1 and held["Observation"]


def test_a_token_endpoint_that_refuses_the_key_leaves_a_clear_failure_and_no_token(
    api, worker, beat, fhir_server, wait
):
    registered, ours = rsa_key("rsa-1"), rsa_key("rsa-1")  # the EHR knows another key under our kid
    server = fhir_server(registered)
    assert api.put("/v1/fhir-destination", json=destination(server, ours)).status_code == 201
    analysis_id = submit(api, seed=33, external_id="fhir-wb-33")

    failed = wait(lambda: last_delivery(api, "failed"), timeout=240, message="the write-back to run out of retries")
    assert len(failed["attempts"]) == 5  # the test schedule: four retries
    for attempt in failed["attempts"]:
        assert attempt["status_code"] == 401
        # 127.0.0.1 is an internal target (allowed by WEBHOOK_ALLOW_CIDRS): the log keeps the
        # error class, whose OAuth error code comes from a fixed vocabulary.
        assert attempt["error"] == "token_refused:invalid_client"
        assert attempt["response_excerpt"] is None
    control = server.control()
    assert control["tokens_issued"] == 0 and control["bundles"] == 0
    assert all("signature does not verify" in reason for reason in control["token_refusals"])
    assert not reports_of(server.reader(registered), analysis_id)
    assert api.get("/v1/fhir-destination").json()["failing_since"] is not None


def test_the_destination_api_checks_its_input_scopes_and_audits(api, api_url, fhir_server, context, tenant_key):
    server = fhir_server(rsa_key())
    assert api.get("/v1/fhir-destination").status_code == 404
    key = rsa_key()
    refused = {
        "no key on create": destination(server, None),
        "public key only": destination(server, {k: v for k, v in key.items() if k not in PRIVATE_MEMBERS}),
        "wrong alg": destination(server, {**key, "alg": "RS256"}),
        "metadata address": destination(server, key, base_url="http://169.254.169.254/fhir"),
        "private token URL": destination(server, key, token_url="http://10.0.0.5/token"),
        "extra field": {**destination(server, key), "secret": "x"},
    }
    details = {}
    for case, body in refused.items():
        answer = api.put("/v1/fhir-destination", json=body)
        assert answer.status_code == 422, (case, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        details[case] = json.dumps(answer.json())
        assert key["d"] not in details[case]
    assert "private_key_jwk is required" in details["no key on create"]
    assert "private_key_jwk: this is a public key" in details["public key only"]
    assert "alg must be RS384 or ES384" in details["wrong alg"]
    assert "base_url is refused" in details["metadata address"]
    assert "token_url is refused" in details["private token URL"]

    first = api.put("/v1/fhir-destination", json=destination(server, key))
    assert first.status_code == 201
    # A later PUT may leave the key out (the stored one stays), and replaces the rest.
    second = api.put("/v1/fhir-destination", json=destination(server, None, scopes="system/*.cs", enabled=False))
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"] and second.json()["kid"] == "rsa-1"
    assert (second.json()["scopes"], second.json()["enabled"]) == ("system/*.cs", False)
    with session_scope(context.session_factory) as session:
        rows = session.execute(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_key[0])).scalars()
        (row,) = list(rows)
        assert row.kind == "fhir-writeback" and row.config["client_id"] == CLIENT_ID
        assert key["d"] not in row.secret_encrypted and "secret" not in json.dumps(row.config)
    # Not a webhook endpoint: the webhooks API neither lists nor shows it.
    assert api.get("/v1/webhook-endpoints").json()["data"] == []
    assert api.get(f"/v1/webhook-endpoints/{first.json()['id']}").status_code == 404

    viewer = api.post("/v1/api-keys", json={"name": "viewer", "scopes": ["analyses:read"]}).json()["key"]
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {viewer}"}) as other:
        for method in ("get", "delete"):
            forbidden = getattr(other, method)("/v1/fhir-destination")
            assert forbidden.status_code == 403 and "'webhooks:manage'" in forbidden.json()["detail"]
        assert other.put("/v1/fhir-destination", json=destination(server, key)).status_code == 403

    assert api.delete("/v1/fhir-destination").status_code == 204
    assert api.get("/v1/fhir-destination").status_code == 404
    assert api.delete("/v1/fhir-destination").status_code == 404
    wanted = {"fhir_destination.update", "fhir_destination.read", "fhir_destination.delete"}

    def audited() -> bool:
        page = api.get("/v1/audit-events", params={"limit": 100, "resource_type": "fhir_destination"}).json()
        return wanted <= {event["action"] for event in page["data"]}

    wait_for(audited, timeout=10, message="the audit rows of the destination's operations")


# ---------------------------------------------------------------- a worker killed mid-send


def _own_broker(url: str) -> str:
    base, _, db = url.rpartition("/")
    return f"{base}/{9 if db != '9' else 10}" if db.isdigit() else f"{url.rstrip('/')}/9"


@pytest.fixture
def own_stack(settings, context, tmp_path) -> Iterator:
    """API, GPU, CPU and io workers and beat on a broker of their own (the session's workers
    never see its messages), so this test's io worker is the one sending, and can be killed.
    Leases count as lost after 15 s here (RESEND_AFTER_SECONDS 5, WEBHOOK_TIMEOUT_SECONDS 10)."""
    port = free_port()
    own = settings.replace(broker_url=_own_broker(settings.broker_url), api_url=f"http://127.0.0.1:{port}",
                           resend_after_seconds=5, webhook_timeout_seconds=10.0)
    env = child_env(own)
    started = []

    def io_worker(name: str):
        started.append(start_worker(env, tmp_path / f"{name}.log", role="io", concurrency=1, name=name))
        return started[-1]

    try:
        started.append(api := start_api(env, tmp_path / "api.log", port=port))
        for role in ("gpu", "cpu"):
            started.append(start_worker(env, tmp_path / f"worker-{role}.log", role=role, concurrency=1))
        started.append(start_beat(env, tmp_path / "beat.log"))
        wait_for(lambda: httpx.get(f"{api.url}/readyz", timeout=5).status_code == 200, 180,
                 message="the write-back stack to be ready")
        yield api.url, io_worker
    finally:
        for process in reversed(started):
            process.stop()


def test_a_worker_killed_mid_send_still_leaves_one_diagnostic_report(own_stack, fhir_server, tenant_key, context,
                                                                     wait):
    api_url, io_worker = own_stack
    key = rsa_key()
    server = fhir_server(key)
    first_io = io_worker("worker-io-1")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {tenant_key[1]}"}, timeout=60) as api:
        assert api.put("/v1/fhir-destination", json=destination(server, key)).status_code == 201
        # The EHR files the first transaction, then holds its answer: the worker dies waiting.
        server.control(hold_next=1, hold_ms=120_000)
        analysis_id = submit(api, seed=34, external_id="fhir-wb-34")
        wait(lambda: server.control()["holding"] == 1, timeout=240, message="the first transaction to be held")
        reader = server.reader(key)
        assert len(reports_of(reader, analysis_id)) == 1, "the EHR holds the report, but we were never told"
        first_io.kill()

        with context.session_factory() as session:
            (delivery,) = session.execute(
                select(WebhookDelivery).join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(WebhookEndpoint.tenant_id == tenant_key[0])
            ).scalars()
            assert (delivery.status, delivery.attempt_count) == ("pending", 0)
            assert delivery.leased_at is not None, "the killed send still holds its lease"
        killed_at = time.monotonic()
        io_worker("worker-io-2")
        done = wait(lambda: last_delivery(api, "delivered"), timeout=120, message="the retry after the kill")
        print(f"\nretried and delivered {time.monotonic() - killed_at:.1f} s after the io worker was killed")
        # One recorded attempt: the killed one never came back to record itself.
        assert [a["status_code"] for a in done["attempts"]] == [200]
        held = written_back(reader, analysis_id)
        assert len(held["DiagnosticReport"]) == 1
        assert len(held["DocumentReference"]) == 1
        assert len({o["identifier"][-1]["value"] for o in held["Observation"]}) == len(held["Observation"]) > 0
        results = server.control()["bundle_results"]
        assert len(results) == 2 and results[1]["created"] == 0 and results[1]["refused"] == 0


def test_the_destination_is_per_tenant(api, api_url, fhir_server, context):
    from shared.tenants import issue_key

    server = fhir_server(rsa_key())
    assert api.put("/v1/fhir-destination", json=destination(server, rsa_key())).status_code == 201
    with session_scope(context.session_factory) as session:
        _, other_key = issue_key(session, f"other-{uuid.uuid4().hex[:8]}")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        assert other.get("/v1/fhir-destination").status_code == 404
        assert other.get("/v1/fhir-destination/deliveries").status_code == 404
