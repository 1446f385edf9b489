"""``Prefer: wait=N`` on POST /v1/analyses: the answer waits up to N seconds for the outcome
and carries it (201), else it is the usual 202, late by at most N seconds; either way
``Preference-Applied`` says the wait was honoured. Without the preference nothing changes."""

from __future__ import annotations

import threading
import time

import httpx

from tests.e2e.test_analysis_flow import lesion_jpeg, submit

FINAL = {"succeeded", "rejected", "failed", "canceled"}


def test_without_the_preference_the_answer_is_immediate(api):
    started = time.monotonic()
    response = submit(api, lesion_jpeg(seed=31), headers={"Prefer": "handling=lenient"})
    assert response.status_code == 202
    assert "preference-applied" not in response.headers
    assert time.monotonic() - started < 5


def test_an_analysis_not_final_in_time_answers_202_after_the_wait(api):
    started = time.monotonic()
    response = submit(api, lesion_jpeg(seed=32), headers={"Prefer": "wait=2"})
    elapsed = time.monotonic() - started
    assert response.headers["preference-applied"] == "wait=2"
    assert response.headers["location"] == f"/v1/analyses/{response.json()['id']}"
    if response.status_code == 202:  # the usual case: no worker finishes an analysis in 2 s here
        assert response.json()["status"] in {"queued", "processing"}
        assert 2 <= elapsed < 2 + 5, f"answered after {elapsed:.1f} s"
    else:
        assert response.status_code == 201 and response.json()["status"] in FINAL


def test_the_final_analysis_is_returned_as_soon_as_it_ends(api):
    """Canceling from a second client ends the analysis mid-wait: the waiting request answers
    201 with the final (canceled) analysis within a poll interval, long before its N seconds."""
    analyses_before = {a["id"] for a in api.get("/v1/analyses").json()["data"]}
    answer: dict = {}

    def waiting_submit():
        started = time.monotonic()
        answer["response"] = submit(api, lesion_jpeg(seed=33), headers={"Prefer": "wait=30"})
        answer["elapsed"] = time.monotonic() - started

    waiter = threading.Thread(target=waiting_submit)
    waiter.start()
    deadline = time.monotonic() + 20
    new_id = None
    while new_id is None and time.monotonic() < deadline:
        new = [a["id"] for a in api.get("/v1/analyses").json()["data"] if a["id"] not in analyses_before]
        new_id = new[0] if new else None
        time.sleep(0.1)
    assert new_id, "the submission never appeared"
    canceled_at = time.monotonic()
    canceled = api.post(f"/v1/analyses/{new_id}/cancel")
    waiter.join(timeout=40)
    response = answer["response"]
    if canceled.status_code == 409:  # a fast worker finished it first: still a final answer
        assert response.status_code == 201 and response.json()["status"] in FINAL
        return
    assert canceled.status_code == 200
    assert response.status_code == 201, response.text
    assert response.headers["preference-applied"] == "wait=30"
    body = response.json()
    assert body["id"] == new_id and body["status"] == "canceled" and body["cancel_reason"] == "requested"
    assert answer["elapsed"] < 25
    assert time.monotonic() - canceled_at < 5, "the waiting request noticed the outcome within a few polls"


def test_waits_longer_than_60_seconds_are_capped(api_url, tenant_key):
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {tenant_key[1]}"}, timeout=90) as client:
        response = client.post(
            "/v1/analyses",
            files={"image": ("lesion.jpg", lesion_jpeg(seed=34), "image/jpeg")},
            headers={"Prefer": "wait=1", "Cancel-After": "10s"},
        )
    assert response.headers["preference-applied"] == "wait=1"
    from api.forms import MAX_PREFER_WAIT, preferred_wait

    assert preferred_wait("respond-async, wait=3600") == MAX_PREFER_WAIT == 60
    assert preferred_wait("wait=abc") is None
