"""A real headless Chromium (Debian's `chromium`), driven by Playwright's Python API.

Playwright's own browser download is never used: the tests launch the system browser at
SN_TEST_CHROMIUM (default /usr/bin/chromium) and skip, saying how to get it, when it is missing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

CHROMIUM = Path(os.environ.get("SN_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Where the README's screenshots are written when SN_WEB_SCREENSHOTS is set (`make screenshots`).
SCREENSHOTS = os.environ.get("SN_WEB_SCREENSHOTS")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.is_file():  # noqa: ASYNC240 (once per session)
        pytest.skip(
            f"browser tests need Chromium at {CHROMIUM}: `apt-get install -y chromium` (Debian/Ubuntu; "
            ".ci/run does it), or point SN_TEST_CHROMIUM at a Chromium/Chrome binary"
        )
    # The async API, on the suite's event loop: the sync one runs a loop of its own for as long
    # as it is open, and every later asyncio.run() in the session would fail.
    async_api = pytest.importorskip("playwright.async_api", reason="pip install -e '.[dev]' (playwright)")
    async with async_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        await chromium.close()


class Tab:
    """One browser context (one person) with one page, recording what the page complained about."""

    def __init__(self, context: BrowserContext, page: Page, base_url: str) -> None:
        self.context = context
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        self.urls: list[str] = []  # every URL the page asked for, WebSockets included
        self.authorized: dict[str, str] = {}  # path -> the Authorization header it was sent with
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", self._console)
        self.page.on("request", self._request)
        self.page.on("websocket", lambda ws: self.urls.append(ws.url))

    def _request(self, request: Any) -> None:
        self.urls.append(request.url)
        header = request.headers.get("authorization")
        if header:
            self.authorized[request.url.split("?")[0].removeprefix(self.base_url)] = header

    def urls_with(self, secret: str) -> list[str]:
        return [url for url in self.urls if secret in url]

    def _console(self, message: Any) -> None:
        # Errors only: a CSP violation or an uncaught exception is one. Failed requests the
        # test provokes on purpose (offline) are expected and filtered by the caller.
        if message.type == "error":
            self.problems.append(f"console: {message.text}")

    async def open(self, route: str = "") -> Page:
        await self.page.goto(self.base_url + "/" + route)
        return self.page


@pytest.fixture
async def tabs(server: Any, browser: Browser) -> AsyncIterator[Any]:
    opened: list[Tab] = []

    async def new_tab(width: int = 1100, height: int = 760) -> Tab:
        context = await browser.new_context(viewport={"width": width, "height": height}, base_url=server.base_url)
        context.set_default_timeout(15_000)
        tab = Tab(context, await context.new_page(), server.base_url)
        opened.append(tab)
        return tab

    yield new_tab
    for tab in opened:
        await tab.context.close()


async def save_screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    """Every run takes the screenshot (it must render); docs/img/ gets it only when asked."""
    target = Path(SCREENSHOTS) / name if SCREENSHOTS else tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(target), full_page=False)
    assert target.stat().st_size > 10_000, "a blank screenshot"
    return target
