"""Schemathesis against the live /openapi.json with a valid key and ALL its checks: no server
error, every status code, content type, header and body as the document declares them,
invalid input refused, valid input accepted, operations without the key refused (401).

The run is bounded (examples per operation and overall time) to stay near a minute on a
2-core machine. ``/readyz`` is left out of the generated requests: its 503 means "not ready"
(here: no GPU worker) by contract, and it takes no input worth fuzzing.

Schema-valid is not always acceptable: some refusals follow rules no JSON Schema can state
(a cursor this API did not issue, a webhook host that does not resolve to a public address,
a deadline beyond MAX_CANCEL_AFTER_SECONDS, both an image and an upload_id). For exactly
those operations ``positive_data_acceptance`` also expects that documented refusal; every
other check, and every other operation, runs as Schemathesis ships it.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

from benchmarks.load import start_api
from devstack import free_port
from shared.db import session_scope
from shared.tenants import issue_key

ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
BUSINESS_RULES = {
    # (method, path): statuses a schema-valid request may still get, and why
    ("GET", "/v1/analyses"): ["400"],  # a cursor the API did not issue
    ("GET", "/v1/batches"): ["400"],  # a cursor the API did not issue
    ("GET", "/v1/audit-events"): ["400"],  # a cursor the API did not issue (issue 22)
    ("POST", "/v1/analyses"): ["400", "415", "422"],  # image and upload_id both, or neither; deadline bounds;
    # the image judged by its content (JPEG, PNG, DICOM), which no schema of a binary part can state
    ("POST", "/v1/batches"): ["422"],  # cancel_after beyond MAX_CANCEL_AFTER_SECONDS
    ("POST", "/v1/webhook-endpoints"): ["422"],  # the URL must resolve to a public address
    ("POST", "/fhir/Subscription"): ["422"],  # a valid R4B Subscription to one of our topics (issue 23)
    ("PUT", "/v1/fhir-destination"): ["422"],  # public addresses, a private key that signs (issue 23)
    ("PUT", "/v1/dicomweb-destination"): ["422"],  # a public address, no query string (issue 23)
}


def _config(path) -> str:
    blocks = []
    for (method, route), statuses in BUSINESS_RULES.items():
        expected = ", ".join(f'"{s}"' for s in ACCEPTED + statuses)
        blocks.append(
            f'[[operations]]\ninclude-name = "{method} {route}"\n'
            f"checks.positive_data_acceptance.expected-statuses = [{expected}]\n"
        )
    path.write_text("\n".join(blocks))
    return str(path)


def test_generated_requests_keep_the_whole_contract(settings, context, tmp_path):
    with session_scope(context.session_factory) as session:
        _, key = issue_key(session, f"schemathesis-{uuid.uuid4().hex[:10]}")
    port = free_port()
    fuzzed = settings.model_copy(update={"api_url": f"http://127.0.0.1:{port}", "rate_limit": "10000/second"})
    api = start_api(fuzzed, tmp_path / "api.log", port)
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "--config-file", _config(tmp_path / "schemathesis.toml"),
                "run", f"{fuzzed.api_url}/openapi.json",
                "--checks", "all",
                "--exclude-path", "/readyz",
                "--header", f"Authorization: Bearer {key}",
                "--max-examples", "15",
                "--max-time", "50",
                "--phases", "examples,coverage,fuzzing",
                "--seed", "10",
                "--request-timeout", "20",
                # One worker: hypothesis describes strategies with ast.parse, which is not
                # thread-safe on Python 3.11 ("AST constructor recursion depth mismatch").
                "--workers", "1",
                "--no-color",
            ],
            capture_output=True, text=True, timeout=240,
        )
    finally:
        api.stop()
    print(result.stdout[-3000:])
    (tmp_path / "schemathesis.txt").write_text(result.stdout)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
