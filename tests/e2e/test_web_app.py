"""The web app at ``GET /`` in a real browser, against the real API and worker.

Drives the system Chromium through Playwright (tests/e2e/browser.py; the pip package brings
only the driver, no browser download). Skipped only when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from shared import clinical
from shared.clock import utcnow
from shared.db import session_scope
from shared.tables import Analysis
from tests.e2e.browser import (
    DISCLAIMER,
    browser_page_fixture,  # noqa: F401 (the browser_page fixture)
    green_or_red,
    screenshot,
    sign_in,
    wait_until,
)
from tests.e2e.seeding import seed_queued
from worker.pipeline.synthetic import encode_jpeg, make_lesion

UNTRAINED = "UNTRAINED MODEL"
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
MODULES = Path(__file__).resolve().parents[2] / "api" / "static" / "js"
JAVASCRIPT = {"text/javascript", "application/javascript"}


def test_page_loads_same_origin_es_modules(api_url):
    """One <script type="module"> from /static/js/ and no inline script (the
    Content-Security-Policy allows neither inline nor foreign scripts); every module it
    imports, and every module in api/static/js/, is served with a JavaScript type, which
    browsers require of module scripts."""
    with httpx.Client(base_url=api_url, timeout=30) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page.text, re.S)
        assert scripts == [(' type="module" src="/static/js/main.js"', "")], scripts
        seen: set[str] = set()
        queue = ["/static/js/main.js"]
        while queue:
            path = queue.pop()
            if path in seen:
                continue
            seen.add(path)
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].split(";")[0] in JAVASCRIPT, (path, response.headers)
            for spec in re.findall(r'^import .* from "([^"]+)";$', response.text, re.M):
                assert spec.startswith("./"), f"{path} imports {spec}: modules import each other only"
                queue.append(posixpath.normpath(posixpath.join(posixpath.dirname(path), spec)))
    assert seen == {f"/static/js/{module.name}" for module in MODULES.glob("*.js")}, "a module nothing imports"


def test_upload_shows_result_matching_the_api(browser_page, api_url, worker, tenant_key, tmp_path):
    page = browser_page
    _, key = tenant_key
    photo = tmp_path / "lesion.jpg"
    lesion = make_lesion(seed=11, size=(300, 400), radius_frac=0.22, irregularity=0.5, variegation=0.4)
    photo.write_bytes(encode_jpeg(lesion.image))

    page.goto(api_url + "/")
    banner = page.locator("#disclaimer")
    assert banner.is_visible()
    assert DISCLAIMER in banner.inner_text()

    page.fill("#api-key", key)
    page.click("#save-key")
    wait_until(page, "document.getElementById('key-state').textContent.startsWith('Key set')")
    assert page.evaluate("sessionStorage.getItem('dermasentinel.apiKey')") == key

    page.set_input_files("#image", str(photo))
    page.fill("#age", "58")
    page.select_option("#sex", "female")
    page.select_option("#site", "torso")
    page.fill("#external-id", "browser-case-1")
    page.evaluate(
        """() => {
            window.seenStatuses = [];
            const status = document.getElementById('status');
            new MutationObserver(() => {
                const seen = window.seenStatuses, now = status.dataset.status;
                if (now && seen[seen.length - 1] !== now) seen.push(now);
            }).observe(status, { attributes: true, attributeFilter: ['data-status'] });
        }"""
    )
    answers = []  # what the API answered the page (issue 25: progress comes over its event stream)
    page.on("response", lambda answer: answers.append(answer))
    page.click("#submit")

    page.wait_for_selector("#analysis-body:not([hidden])")
    page.wait_for_selector("#analysis-body[data-status='succeeded']", timeout=180_000)
    page.wait_for_selector("#result:not([hidden])")
    analysis_id = page.inner_text("#analysis-id").strip()
    seen = page.evaluate("window.seenStatuses")
    assert seen[-1] == "succeeded" and seen[0] in {"queued", "processing"}, seen
    assert seen == sorted(seen, key=["queued", "processing", "succeeded"].index), f"status went backwards: {seen}"

    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        analysis = client.get(f"/v1/analyses/{analysis_id}").json()
        words = client.get("/v1/dispositions").json()
        streamed = client.get(f"/v1/analyses/{analysis_id}/events").text  # the whole history; it has ended
    assert analysis["status"] == "succeeded", analysis

    # Issue 25: the page followed the analysis over its event stream (fetch() with the key in the
    # Authorization header, never in a URL), not by polling: it applied the stream's last event,
    # and at most one GET of the analysis answered while it was still running (the one at open).
    final_id = re.findall(r"^id: (\d+)$", streamed, re.M)[-1]
    assert page.get_attribute("#analysis-body", "data-live") == "sse"
    assert page.get_attribute("#analysis-body", "data-event-id") == final_id
    own = f"{api_url}/v1/analyses/{analysis_id}"
    (stream,) = [a for a in answers if a.url == own + "/events"]
    assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
    assert stream.request.all_headers()["authorization"] == f"Bearer {key}"
    assert not [a.url for a in answers if key in a.url], "the API key went into a URL"
    running = [a for a in answers if a.url == own and a.request.method == "GET" and a.json()["status"] not in
               {"succeeded", "rejected", "failed", "canceled"}]
    assert len(running) <= 1, f"the page polled the running analysis {len(running)} times"
    assert analysis["external_id"] == "browser-case-1"
    result = analysis["result"]

    shown = page.locator("#probability")
    assert float(shown.get_attribute("data-probability")) == pytest.approx(result["probability"], abs=1e-12)
    assert shown.inner_text().strip() == f"{result['probability'] * 100:.1f}%"
    uncertainty = result["uncertainty"]
    assert page.inner_text("#uncertainty").strip() == ("<0.1%" if uncertainty < 0.0005 else f"{uncertainty * 100:.1f}%")
    assert page.inner_text("#diagnosis").strip().lower() == result["diagnosis"]
    assert page.inner_text("#risk-band").strip().lower() == result["risk_band"]
    assert result["equity"]["skin_group"] in page.inner_text("#equity")
    assert page.locator("#bias-warning").is_visible() == bool(result["equity"]["bias_warning"])
    assert "FINDINGS" in page.inner_text("#scribe-note")

    assert analysis["model"]["weights"] == "untrained"
    badge = page.locator("#untrained-badge")
    assert badge.is_visible()
    assert UNTRAINED in badge.inner_text() and NOT_FOR_CLINICAL_USE in badge.inner_text()
    assert page.get_attribute("#diagnosis", "data-neutral") == "true"
    assert page.get_attribute("#risk-band", "data-neutral") == "true"
    assert banner.is_visible()

    # Issue 21: the notice beside the diagnosis, the disposition with its reasons in the API's
    # words, the untrained mark, and no green or red anywhere on the result (computed styles).
    assert result["notice"] == clinical.UNTRAINED_BANNER
    assert result["disposition"] == "clinician_review" and result["disposition_reasons"][0] == "weights_not_trained"
    assert page.inner_text("#result-notice") == result["notice"]
    texts = {d["code"]: d["text"] for d in words["dispositions"]}
    reasons = {r["code"]: r["text"] for r in words["reasons"]}
    assert page.inner_text("#disposition-text") == texts["clinician_review"]
    shown = page.eval_on_selector_all("#disposition-reasons li", "items => items.map(i => i.textContent)")
    assert shown == [reasons[code] for code in result["disposition_reasons"]]
    assert page.inner_text("#disposition-note") == words["not_assessable"]
    assert page.locator("#safety-netting").is_hidden()
    for mark in ("#diagnosis-mark .untrained-mark", "#disposition-mark .untrained-mark"):
        assert page.locator(mark).is_visible() and page.get_attribute(mark, "data-weights") == "untrained"
    assert page.get_attribute("#timeline [data-step='final']", "class") == "final-neutral"
    for region in ("#result", "#timeline", "#untrained-badge"):
        assert green_or_red(page, region) == [], region

    wait_until(
        page,
        "(() => { const mask = document.getElementById('mask-layer'), photo = document.getElementById('original');"
        " return !mask.hidden && mask.complete && mask.naturalWidth > 0"
        " && photo.complete && photo.naturalWidth > 0; })()",
    )
    assert page.get_attribute("#viewer-stage", "data-mode") == "outline"

    page.wait_for_selector("#open-report:not([disabled])", timeout=120_000)
    is_report = lambda r: r.url.endswith(f"/v1/analyses/{analysis_id}/report.pdf")  # noqa: E731
    with page.expect_response(is_report) as report, page.context.expect_page() as popup:
        page.click("#open-report")
    assert report.value.status == 200
    assert report.value.headers["content-type"] == "application/pdf"
    popup.value.close()

    recent = page.locator(f"#recent button[data-id='{analysis_id}']")
    recent.wait_for()
    assert "succeeded" in recent.inner_text().lower()
    # The recent row shows the diagnosis: it carries the untrained mark and the disposition,
    # and its status badge is neutral, not a green SUCCEEDED.
    row = f"#recent button[data-id='{analysis_id}']"
    assert page.get_attribute(row, "data-neutral") == "true"
    assert page.get_attribute(f"{row} .untrained-mark", "data-weights") == "untrained"
    assert page.inner_text(f"{row} [data-disposition]") == texts["clinician_review"]
    assert page.get_attribute(f"{row} .pill", "class") == "pill pill-neutral"
    assert green_or_red(page, row) == []

    assert screenshot(page, "web-app").stat().st_size > 10_000


def test_without_its_event_stream_the_analysis_page_polls(browser_page, api_url, context, tenant_key):
    """Issue 25: when the event stream cannot be had (here it answers 503), the page follows the
    analysis by polling, as it did before streams existed."""
    page = browser_page
    tenant_id, key = tenant_key
    analysis_id = seed_queued(context, tenant_id)
    page.route("**/events", lambda route: route.fulfill(
        status=503, content_type="application/problem+json",
        body='{"title": "Service unavailable", "status": 503, "detail": "no streams today"}',
    ))
    sign_in(page, api_url, key, f"/#/analyses/{analysis_id}")
    page.wait_for_selector("#analysis-body[data-live='polling'][data-status='queued']")
    with session_scope(context.session_factory) as session:
        session.execute(update(Analysis).where(Analysis.id == analysis_id).values(
            status="canceled", cancel_reason="requested", completed_at=utcnow(), updated_at=utcnow()))
    page.wait_for_selector("#analysis-body[data-status='canceled']", timeout=15_000)
    assert page.inner_text("#outcome-detail") == "Reason: requested."


def test_api_problem_detail_is_shown(browser_page, api_url, tenant_key, tmp_path):
    page = browser_page
    _, key = tenant_key
    not_a_photo = tmp_path / "notes.png"
    not_a_photo.write_bytes(b"these are notes, not a photo")
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        expected = client.post(
            "/v1/analyses", files={"image": ("notes.png", not_a_photo.read_bytes(), "image/png")}
        )
    assert expected.status_code in {415, 422}, expected.text
    detail = expected.json()["detail"]

    page.goto(api_url + "/")
    page.fill("#api-key", key)
    page.click("#save-key")
    page.set_input_files("#image", str(not_a_photo))
    page.click("#submit")

    page.wait_for_selector("#problem:not([hidden])")
    assert page.inner_text("#problem-detail").strip() == detail
    assert page.locator("#analysis-body").is_hidden()


def test_rejection_shows_reason_and_what_to_do(browser_page, api_url, worker, tenant_key, tmp_path):
    page = browser_page
    _, key = tenant_key
    photo = tmp_path / "blurry.jpg"
    # Above the minimum resolution (MIN_IMAGE_SIDE, 256 px), so that the blur gate refuses it.
    photo.write_bytes(encode_jpeg(make_lesion(seed=3, size=(300, 400), blur=8.0).image))

    page.goto(api_url + "/")
    page.fill("#api-key", key)
    page.click("#save-key")
    page.set_input_files("#image", str(photo))
    page.click("#submit")
    page.wait_for_selector("#analysis-body[data-status='rejected']", timeout=180_000)

    analysis_id = page.inner_text("#analysis-id").strip()
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        rejection = client.get(f"/v1/analyses/{analysis_id}").json()["rejection"]
    assert rejection["code"] == "blurry"
    outcome = page.locator("#outcome")
    assert outcome.is_visible()
    assert page.inner_text("#outcome-detail").strip() == rejection["detail"]
    # The advice is the API's own wording (the page keeps no copy of it).
    if rejection.get("advice"):
        assert page.inner_text("#outcome-advice").strip() == rejection["advice"]
    else:
        assert page.locator("#outcome-advice").is_hidden()
    assert page.locator("#result").is_hidden()
    screenshot(page, "web-app-rejected")


def test_a_read_only_key_views_results_and_is_told_why_it_cannot_submit(
    browser_page, api_url, worker, tenant_key, tmp_path, wait_final
):
    """Issue 22: the web app works with a key holding only `analyses:read` for viewing; what
    that key may not do is refused with the API's 403, shown as it is."""
    page = browser_page
    _, admin_key = tenant_key
    photo = tmp_path / "lesion.jpg"
    photo.write_bytes(encode_jpeg(make_lesion(seed=12, size=(240, 320), radius_frac=0.2).image))
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30) as admin:
        analysis_id = admin.post(
            "/v1/analyses", files={"image": ("l.jpg", photo.read_bytes(), "image/jpeg")}, data={"age": "50"}
        ).json()["id"]
        viewer_key = admin.post("/v1/api-keys", json={"name": "viewer", "scopes": ["analyses:read"]}).json()["key"]
    assert wait_final(analysis_id)["status"] == "succeeded"

    page.goto(f"{api_url}/#/analyses/{analysis_id}")
    page.fill("#api-key", viewer_key)
    page.click("#save-key")
    page.goto(f"{api_url}/#/analyses/{analysis_id}")
    page.reload()
    page.wait_for_selector("#analysis-body[data-status='succeeded']", timeout=60_000)
    page.wait_for_selector("#result:not([hidden])")
    assert page.inner_text("#analysis-id").strip() == analysis_id
    assert page.locator("#probability").get_attribute("data-probability")

    page.set_input_files("#image", str(photo))
    page.click("#submit")
    page.wait_for_selector("#problem:not([hidden])")
    assert "analyses:write" in page.inner_text("#problem-detail")
