"""The web app at ``GET /`` in a real browser, against the real API and worker.

Drives the system Chromium through Playwright (the pip package brings only the driver; no
browser download). Skipped only when /usr/bin/chromium is absent.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from worker.pipeline.synthetic import encode_jpeg, make_lesion

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DISCLAIMER = "Research use only — not a certified medical device"
UNTRAINED = "UNTRAINED MODEL — NOT FOR CLINICAL USE"


@pytest.fixture
def browser_page(api_url, settings):
    if not CHROMIUM.exists():
        pytest.skip("system Chromium not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    allowed_origins = {_origin(api_url), _origin(settings.s3_endpoint)}
    foreign_requests: list[str] = []
    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1360, "height": 1000})
        page = context.new_page()
        context.on(
            "request",
            lambda request: foreign_requests.append(request.url)
            if _origin(request.url) not in allowed_origins and not request.url.startswith(("blob:", "data:", "about:", "chrome-extension:"))
            else None,
        )
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.set_default_timeout(30_000)
        yield page
        context.close()
        browser.close()
    assert not page_errors, f"JavaScript errors on the page: {page_errors}"
    assert not foreign_requests, f"the page loaded something from elsewhere: {foreign_requests}"


def _origin(url: str) -> str:
    # The S3 endpoint setting is host:port (MinIO style); presigned URLs carry the scheme.
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return f"{parts.scheme}://{parts.netloc}"


def test_upload_shows_result_matching_the_api(browser_page, api_url, worker, tenant_key, tmp_path):
    page = browser_page
    _, key = tenant_key
    photo = tmp_path / "lesion.jpg"
    photo.write_bytes(encode_jpeg(make_lesion(seed=11, size=(300, 400), radius_frac=0.22, irregularity=0.5, variegation=0.4).image))

    page.goto(api_url + "/")
    banner = page.locator("#disclaimer")
    assert banner.is_visible()
    assert DISCLAIMER in banner.inner_text()

    page.fill("#api-key", key)
    page.click("#save-key")
    page.wait_for_function("document.getElementById('key-state').textContent.startsWith('Key set')")
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
    assert analysis["status"] == "succeeded", analysis
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
    assert UNTRAINED in badge.inner_text()
    assert banner.is_visible()

    page.wait_for_function(
        "(() => { const img = document.getElementById('overlay');"
        " return !img.hidden && img.complete && img.naturalWidth > 0; })()"
    )

    page.wait_for_selector("#open-report:not([disabled])", timeout=120_000)
    with page.expect_response(lambda r: r.url.endswith(f"/v1/analyses/{analysis_id}/report.pdf")) as report:
        with page.context.expect_page() as popup:
            page.click("#open-report")
    assert report.value.status == 200
    assert report.value.headers["content-type"] == "application/pdf"
    popup.value.close()

    recent = page.locator(f"#recent button[data-id='{analysis_id}']")
    recent.wait_for()
    assert "succeeded" in recent.inner_text().lower()

    screenshot = tmp_path / "web-app.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000


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
    photo.write_bytes(encode_jpeg(make_lesion(seed=3, size=(240, 320), blur=8.0).image))

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
    assert "Retake the photo in focus" in page.inner_text("#outcome-advice")
    assert page.locator("#result").is_hidden()
    page.screenshot(path=str(tmp_path / "web-app-rejected.png"), full_page=True)
