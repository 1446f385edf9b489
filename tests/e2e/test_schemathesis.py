"""Schemathesis against the live /openapi.json with a valid key: no request it generates may
produce a server error.

Only the ``not_a_server_error`` check runs here: response-schema conformance and the other
checks belong to issue 12 and may fail today. ``/readyz`` is left out: its 503 means "not
ready" by contract. The run is bounded (examples per operation and
overall time) to stay near a minute.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

from benchmarks.load import start_api
from cli.processes import free_port, stop_process
from shared.db import session_scope
from shared.tenants import issue_key


def test_generated_requests_never_get_a_server_error(settings, context, tmp_path):
    with session_scope(context.session_factory) as session:
        _, key = issue_key(session, f"schemathesis-{uuid.uuid4().hex[:10]}")
    port = free_port()
    fuzzed = settings.model_copy(update={"api_url": f"http://127.0.0.1:{port}", "rate_limit": "10000/second"})
    api = start_api(fuzzed, tmp_path / "api.log", port)
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"{fuzzed.api_url}/openapi.json",
                "--checks", "not_a_server_error",
                # 503 is /readyz's documented answer while a dependency (here: any GPU worker)
                # is missing; it reports state, it is not a failure of the request.
                "--exclude-path", "/readyz",
                "--header", f"Authorization: Bearer {key}",
                "--max-examples", "15",
                "--max-time", "50",
                "--phases", "examples,coverage,fuzzing",
                "--seed", "10",
                "--request-timeout", "20",
                "--workers", "2",
                "--no-color",
            ],
            capture_output=True, text=True, timeout=240,
        )
    finally:
        stop_process(api)
    print(result.stdout[-3000:])
    (tmp_path / "schemathesis.txt").write_text(result.stdout)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
