"""Headless Chromium for the web tests (Debian's /usr/bin/chromium driven by Playwright), and a page
that records what must not happen on it.

    from helpers.browser import DESKTOP, Page, browser   # browser: the module-scoped fixture

    def test_x(browser):
        with Page(browser, srv.url, DESKTOP) as p:   # its own context, closed however the test ends
            page = p.goto("/s/tiny")
            ...
            p.check_clean()   # no dialog, page error, off-site request or CSP violation

Without Chromium the tests that use `browser` skip, except under SAESTEER_CI=1 where they fail: CI
must not silently skip them. Never run `playwright install` (no browser downloads here).
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("SAESTEER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# Installed before any page script runs: records CSP violations (dialogs and page errors: `Page`'s listeners).
WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', e => window.__csp.push(
  {directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile}));
"""


def unavailable(reason: str):
    if os.environ.get("SAESTEER_CI") == "1":
        pytest.fail(f"browser tests cannot run under SAESTEER_CI=1: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed (pip install playwright; no browser download needed)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A page in its own context, recording dialogs, uncaught page errors, off-site requests and CSP violations."""

    def __init__(self, browser, base: str, viewport: dict) -> None:
        self.ctx = browser.new_context(viewport=viewport)
        self.ctx.add_init_script(WATCH)
        self.page = self.ctx.new_page()
        self.base = base
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: None if r.url.startswith((base, "data:")) else self.foreign.append(r.url))

    def goto(self, path: str):
        resp = self.page.goto(self.base + path)
        assert resp is not None and resp.status == 200, (path, resp and resp.status)
        return self.page

    def csp_violations(self) -> list[dict]:
        v = self.page.evaluate("window.__csp")
        # The only expected one: plotly's bundle injects maplibre's map CSS as inline text at load time;
        # it is blocked (we draw no maps) and harmless. Anything else is a bug.
        return [x for x in v if not (x["directive"] == "style-src-elem" and "/static/vendor/plotly-" in (x["source"] or ""))]

    def check_clean(self) -> None:
        assert self.dialogs == [], self.dialogs
        assert self.errors == [], self.errors
        assert self.foreign == [], self.foreign
        assert self.csp_violations() == []

    def close(self) -> None:
        self.ctx.close()

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
