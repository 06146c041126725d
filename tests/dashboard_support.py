"""Helpers of the dashboard tests: the system Chromium Playwright drives, signing in from a browser or over HTTP."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

T = TypeVar("T")
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
CHROMIUM_MISSING = (
    "the dashboard tests drive the system Chromium at /usr/bin/chromium (Debian packages chromium and "
    "chromium-driver), which is not installed; scripts/test-setup.sh installs it when run as root"
)
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@contextmanager
def launched_chromium() -> Iterator[Browser]:
    """The system Chromium under Playwright, for a module's `browser` fixture."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def outside_playwright(work: Callable[[], T]) -> T:
    """Playwright's sync API keeps an event loop running in this thread, so asyncio.run work goes elsewhere."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result()


def sign_in(page: Page, key: str, path: str = "/customers") -> None:
    from playwright.sync_api import expect

    page.goto(path)
    expect(page).to_have_url(re.compile(r"/signin\?next="))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


def csrf_token(html: str) -> str:
    found = CSRF_INPUT.search(html)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


def http_sign_in(client: httpx.Client, api_key: str) -> httpx.Response:
    """Sign `client` in to the dashboard as a browser does: the sign-in page, then the form with its token."""
    token = csrf_token(client.get("/signin").text)
    return client.post("/signin", data={"api_key": api_key, "csrf_token": token})


@contextmanager
def signed_in(base_url: str, api_key: str, **headers: str) -> Iterator[httpx.Client]:
    """A plain HTTP client signed in to the dashboard with `api_key`."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        assert http_sign_in(client, api_key).status_code == 303
        yield client
