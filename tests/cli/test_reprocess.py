"""`dermasentinel reprocess` against the real stack: a new analysis per finished one, the original
kept, and refusals (unknown id, another tenant's analysis) named without stopping the rest."""

from __future__ import annotations

import uuid

import httpx
from click.testing import CliRunner

from cli.main import cli
from worker.pipeline.synthetic import encode_jpeg, make_lesion


def _submit(api, seed: int) -> str:
    image = encode_jpeg(make_lesion(seed=seed, size=(180, 240), radius_frac=0.25).image)
    response = api.post("/v1/analyses", files={"image": ("lesion.jpg", image, "image/jpeg")},
                        data={"age": "52", "sex": "male", "site": "torso"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _reprocess(api_url: str, key: str, *args: str):
    return CliRunner().invoke(cli, ["reprocess", *args, "--api-url", api_url, "--api-key", key])


def test_reprocess_prints_new_ids_and_names_refusals(api, api_url, tenant_key, worker, wait_final, context):
    first, second = _submit(api, 11), _submit(api, 12)
    originals = {first: wait_final(first), second: wait_final(second)}
    assert {a["status"] for a in originals.values()} == {"succeeded"}

    # Another tenant's analysis is as unknown to this tenant as a made-up id.
    from shared.db import session_scope
    from shared.tenants import issue_key

    with session_scope(context.session_factory) as session:
        _, other_key = issue_key(session, f"test-{uuid.uuid4().hex[:10]}")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"}, timeout=60) as other:
        foreign = _submit(other, 13)
    missing = str(uuid.uuid4())

    result = _reprocess(api_url, tenant_key[1], first, missing, foreign, second, "--wait", "--timeout", "180")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert [line.split(" -> ")[0] for line in lines] == [first, second], result.output
    new_ids = {line.split(" -> ")[0]: line.split(" -> ")[1].split()[0] for line in lines}
    # With --wait each line says how the rerun ended, on which model (the built-in, untrained one
    # here) and its disposition (untrained: always a clinician's review).
    assert all("  succeeded, model fusion " in line and "(untrained), disposition clinician_review (weights_not_trained"
               in line for line in lines), result.output
    assert f"{missing}: not reprocessed: HTTP 404" in result.stderr
    assert f"{foreign}: not reprocessed: HTTP 404" in result.stderr
    assert "2 of 4 analyses were not reprocessed" in result.stderr

    for original, new_id in new_ids.items():
        assert new_id != original
        rerun = api.get(f"/v1/analyses/{new_id}").json()
        assert rerun["status"] == "succeeded"
        assert rerun["reprocessed_from"] == original
        # The original and its result are kept as they were.
        assert api.get(f"/v1/analyses/{original}").json()["result"] == originals[original]["result"]


def test_a_canceled_analysis_is_refused_with_the_reason(api, api_url, tenant_key):
    analysis = _submit(api, 14)
    canceled = api.post(f"/v1/analyses/{analysis}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
    result = _reprocess(api_url, tenant_key[1], analysis)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"{analysis}: not reprocessed: HTTP 409" in result.stderr
    assert "only a finished analysis (succeeded, rejected or failed)" in result.stderr
