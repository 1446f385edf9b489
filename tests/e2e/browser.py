"""Drive the web app in Debian's Chromium through Playwright (the pip package brings only the
driver; no browser download). Screenshots go to tests/artifacts/web/ (ignored by git), where
CI and a reviewer can look at them after a run."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

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
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "web"
DISCLAIMER = "Research use only — not a certified medical device"


def origin(url: str) -> str:
    # The S3 endpoint setting is host:port (MinIO style); presigned URLs carry the scheme.
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture(name="browser_page")
def browser_page_fixture(api_url, settings):
    """A page in a fresh browser context; fails the test on any JavaScript error or any
    request to somewhere other than the API and the object store."""
    if not CHROMIUM.exists():
        pytest.skip("system Chromium not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    allowed_origins = {origin(api_url), origin(settings.s3_endpoint)}
    foreign_requests: list[str] = []
    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1360, "height": 1000})
        page = context.new_page()
        context.on(
            "request",
            lambda request: foreign_requests.append(request.url)
            if origin(request.url) not in allowed_origins
            and not request.url.startswith(("blob:", "data:", "about:", "chrome-extension:"))
            else None,
        )
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.set_default_timeout(30_000)
        yield page
        context.close()
        browser.close()
    assert not page_errors, f"JavaScript errors on the page: {page_errors}"
    assert not foreign_requests, f"the page loaded something from elsewhere: {foreign_requests}"


def sign_in(page, api_url: str, key: str, path: str = "/") -> None:
    page.goto(api_url + path)
    page.fill("#api-key", key)
    page.click("#save-key")
    wait_until(page, "document.getElementById('key-state').textContent.startsWith('Key set')")


def wait_until(page, expression: str, timeout: float = 30.0, message: str | None = None):
    """Poll a JavaScript expression until it is truthy. (Playwright's wait_for_function
    evaluates strings with eval, which the app's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or expression}")
        page.wait_for_timeout(100)


def screenshot(page, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    return path
