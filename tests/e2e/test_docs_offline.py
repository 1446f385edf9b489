"""/docs (Swagger UI) and /redoc render in Chromium with the network cut off: every request
to anything but the API itself is aborted, and the pages still show every operation.

Drives the system Chromium through Playwright, as the web app tests do (tests/e2e/browser.py).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, screenshot


@pytest.fixture
def offline_page(api_url):
    if not CHROMIUM.exists():
        pytest.skip("system Chromium not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    api_origin = _origin(api_url)
    blocked: list[str] = []
    page_errors: list[str] = []

    def only_the_api(route, request):
        if _origin(request.url) == api_origin or request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1360, "height": 1000})
        context.route("**/*", only_the_api)
        page = context.new_page()
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.on(
            "console",
            lambda message: message.type == "error" and page_errors.append(message.text),
        )
        page.set_default_timeout(30_000)
        yield page
        context.close()
        browser.close()
    assert not page_errors, f"JavaScript errors on the page: {page_errors}"
    assert not blocked, f"the docs tried to load something from elsewhere: {blocked}"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _operation_count(api_url: str) -> int:
    """Operations plus documented webhook events: Swagger UI shows both as operation blocks."""
    spec = httpx.get(f"{api_url}/openapi.json").json()
    sections = list(spec["paths"].values()) + list(spec.get("webhooks", {}).values())
    return sum(len(operations) for operations in sections)


def test_swagger_ui_renders_every_operation_offline(offline_page, api_url):
    page = offline_page
    page.goto(f"{api_url}/docs")
    page.wait_for_selector(".opblock-summary")
    assert page.locator(".opblock").count() == _operation_count(api_url)
    assert "DermaSentinel API" in page.locator(".info .title").inner_text()
    assert page.locator("text=POST /v1/analyses").count() or page.locator(".opblock-post").count()
    # Webhooks and the Bearer scheme are shown too.
    assert page.locator(".btn.authorize").is_visible()
    assert page.get_by_text("analysis.succeeded").first.is_visible()
    screenshot(offline_page, "docs-swagger-offline")


def test_redoc_renders_offline(offline_page, api_url):
    page = offline_page
    page.goto(f"{api_url}/redoc")
    page.wait_for_selector("h1:has-text('DermaSentinel API')")
    page.wait_for_selector("h2:has-text('Submit an image for analysis')")
    assert page.locator("[data-section-id^='tag/analyses']").count() >= 1
    # The footer's logo is served from the page itself (it hides itself when it cannot load).
    page.wait_for_selector("img[alt='redocly logo']", state="attached")
    screenshot(page, "docs-redoc-offline")
