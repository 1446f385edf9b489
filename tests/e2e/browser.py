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


# The palette's greens and reds (app.css --low, --low-soft, --high, --high-soft and the red
# tints of problem borders): what a result from weights that are not trained must never wear.
GREEN_OR_RED = frozenset({
    "rgb(30, 107, 52)", "rgb(231, 244, 234)",
    "rgb(166, 27, 27)", "rgb(253, 236, 236)", "rgb(231, 166, 166)", "rgb(255, 210, 210)",
})
_COLOURED = """(root, palette) => {
    const found = [];
    const visible = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== "hidden";
    for (const e of [root, ...root.querySelectorAll("*")]) {
        if (!visible(e)) continue;
        const style = getComputedStyle(e);
        const colours = [style.color, style.backgroundColor];
        for (const side of ["Top", "Right", "Bottom", "Left"]) {
            if (parseFloat(style[`border${side}Width`]) > 0 && style[`border${side}Style`] !== "none") {
                colours.push(style[`border${side}Color`]);
            }
        }
        const hit = colours.filter((c) => palette.includes(c));
        if (hit.length) found.push(`${e.tagName.toLowerCase()}#${e.id}.${e.className}: ${hit.join(", ")}`);
    }
    return found;
}"""


def green_or_red(page, selector: str) -> list[str]:
    """Every visible element at or under each match of ``selector`` whose text, background or
    border colour is one of the palette's greens or reds (read from computed styles)."""
    found: list[str] = []
    for handle in page.query_selector_all(selector):
        found += handle.evaluate(_COLOURED, sorted(GREEN_OR_RED))
    return found
