"""End-to-end in headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

The app runs in uvicorn on a free loopback port over the small real store of helpers.web_store.
Flows: open the list, search, open a feature, steer and see both outputs, run a sweep, ask which
features fire; screenshots at desktop (1280x800) and phone (390x844) widths go to
$SAESTEER_ARTIFACTS/web (or a pytest temp folder; the path is printed). A label holding a script
payload must render as inert, visible text.

Chromium, the `browser` fixture and `Page`: helpers.browser.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.browser import DESKTOP, PHONE, Page, browser  # noqa: F401 (the Chromium fixture)
from helpers.web_app import ServerThread, free_port, make_app, shared_store
from helpers.web_store import XSS_LABEL

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server():
    ws = shared_store()
    port = free_port()
    from saesteer.web import ServeConfig

    srv = ServerThread(make_app(config=ServeConfig(port=port)), port).start()
    try:
        yield srv, ws
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory, pytestconfig) -> Path:
    root = os.environ.get("SAESTEER_ARTIFACTS")
    d = Path(root) / "web" if root else tmp_path_factory.mktemp("web-screenshots")
    d.mkdir(parents=True, exist_ok=True)
    tr = pytestconfig.pluginmanager.getplugin("terminalreporter")
    cm = pytestconfig.pluginmanager.getplugin("capturemanager")
    if tr is not None and cm is not None:
        with cm.global_and_fixture_disabled():
            tr.write_line(f"\n[web] browser screenshots: {d}")
    return d


def _shot(page, shots: Path, name: str, full: bool = True) -> None:
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shots / f"{name}.png"), full_page=full)


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_list_search_feature_steer(browser, server, shots, size):
    srv, ws = server
    with Page(browser, srv.url, DESKTOP if size == "desktop" else PHONE) as p:
        page = p.goto("/")  # redirects to the only store's list
        assert page.url.endswith("/s/tiny")
        page.wait_for_selector("table.ftable")
        assert page.locator("table.ftable tbody tr").count() == ws.d_sae
        _shot(page, shots, f"{size}-1-list", full=size == "desktop")

        box = page.locator(".topsearch input")
        box.fill("ocean")
        box.press("Enter")
        page.wait_for_url("**/s/tiny/search?q=ocean")
        ocean = next(i for i, t in ws.labels.items() if "ocean" in t)
        link = page.locator(f'a.result-link[href="/s/tiny/f/{ocean}"]')
        assert link.is_visible()
        _shot(page, shots, f"{size}-2-search")

        link.click()
        page.wait_for_url(f"**/s/tiny/f/{ocean}")
        assert "ocean words" in page.locator("h1").inner_text()
        page.wait_for_selector("#hist[data-drawn='1'] svg.main-svg")  # plotly drew under the CSP
        assert page.locator(".exlist .tok.s10").count() >= 1
        _shot(page, shots, f"{size}-3-feature")

        page.locator("#steer-link").click()
        page.wait_for_url(f"**/s/tiny/steer?latent={ocean}")
        assert page.locator("#edits .edit").count() == 1
        assert page.locator("#edits .flabel").inner_text() == "ocean words"
        assert page.locator("#edits .fstrength").input_value() == "3"  # the store's recommended strength
        page.locator("#edits .fstrength").fill("8")
        assert page.locator("#prompt").input_value() == ""  # the toy prompt is pre-filled for the toy model only
        page.locator("#generate").click()
        assert "write a prompt" in page.locator("#status").inner_text()
        page.locator("#prompt").fill("the sailor")
        page.locator("#max-new").fill("12")
        page.locator("#generate").click()
        page.wait_for_selector("#compare:not([hidden])")
        default = page.locator("#out-default").inner_text()
        steered = page.locator("#out-steered").inner_text()
        assert default.strip() and steered.strip() and default != steered
        # the prompt as typed, then the continuation with its own leading space (nothing inserted)
        assert page.locator("#out-prompt-a").text_content() == "the sailor" and default.startswith(" ")
        _shot(page, shots, f"{size}-4-steer")
        p.check_clean()


def test_add_edit_rows_and_errors_show_inline(browser, server, shots):
    srv, ws = server
    with Page(browser, srv.url, DESKTOP) as p:
        page = p.goto("/s/tiny/steer")
        page.locator("#edits .fidx").first.fill("")
        page.locator("#generate").click()
        assert "pick at least one feature" in page.locator("#status").inner_text()
        page.locator("#edits .fidx").first.fill("2")
        page.locator("#add-edit").click()
        page.locator("#edits .fidx").nth(1).fill("5")
        page.locator("#edits .fmode").nth(1).select_option("ablate")
        page.locator("#edits .fstrength").first.fill("25")  # beyond 20x max
        page.locator("#generate").click()
        assert "beyond" in page.locator("#status").inner_text()
        page.locator("#edits .fstrength").first.fill("3")
        page.locator("#prompt").fill("the sea " * 40)  # longer than the model's context: server says so
        page.locator("#generate").click()
        page.wait_for_selector("#status.error")
        page.wait_for_function("document.querySelector('#status').textContent.includes('context')")
        page.locator("#prompt").fill("the ship")
        page.locator("#generate").click()
        page.wait_for_selector("#compare:not([hidden])")
        assert "5:ablate" in page.locator("#out-edits").inner_text()  # as the API applied it
        p.check_clean()


def test_script_label_renders_as_inert_text(browser, server, shots):
    srv, ws = server
    i = ws.xss_latent
    with Page(browser, srv.url, DESKTOP) as p:
        page = p.goto(f"/s/tiny/f/{i}")
        page.wait_for_selector("#hist[data-drawn='1']")
        assert XSS_LABEL in page.locator("h1 .ftitle").inner_text()
        assert page.locator(".lbltext").inner_text() == XSS_LABEL
        assert page.locator("main script, main img").count() == 0
        _shot(page, shots, "desktop-5-xss-label")

        page = p.goto("/s/tiny?labelled=1")
        assert page.get_by_text(XSS_LABEL, exact=True).is_visible()
        page = p.goto("/s/tiny/search?q=script")
        assert page.get_by_text(XSS_LABEL, exact=True).is_visible()
        page = p.goto(f"/s/tiny/steer?latent={i}")  # the label is written by steer.js (textContent)
        page.wait_for_function("document.querySelector('#edits .flabel').textContent.length > 0")
        assert page.locator("#edits .flabel").inner_text() == XSS_LABEL
        page.locator("#edits .fidx").fill(str(i + 1))
        page.locator("#edits .fidx").fill(str(i))  # look the label up again through the API
        page.wait_for_timeout(400)
        assert page.locator("#edits .flabel").inner_text() == XSS_LABEL

        assert page.evaluate("typeof window.__xss") == "undefined"  # no payload ever ran
        p.check_clean()


def test_filters_and_pagination(browser, server, shots):
    srv, ws = server
    with Page(browser, srv.url, DESKTOP) as p:
        page = p.goto("/s/tiny?limit=10")
        assert page.locator("table.ftable tbody tr").count() == 10
        page.locator("a[rel=next]").click()
        page.wait_for_url("**offset=10**")
        assert page.locator(".pageinfo").inner_text() == "11–20 of 48"
        page = p.goto("/s/tiny")
        page.locator(".filters summary").click()
        page.locator("select[name=health]").select_option("dead")
        page.locator(".filter-form button[type=submit]").click()
        page.wait_for_url("**health=dead**")
        assert page.locator("table.ftable tbody tr").count() == 2
        page.locator("select[name=health]").select_option("")
        page.locator("select[name=sort]").select_option("frequency")
        page.locator(".filter-form button[type=submit]").click()
        page.wait_for_url("**sort=frequency**")
        first = page.locator("table.ftable tbody tr").first.locator("td").nth(3).inner_text()
        assert first.endswith("%") and float(first[:-1]) > 30
        _shot(page, shots, "desktop-6-sorted")
        p.check_clean()


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_which_features_fire_and_sweep(browser, server, shots, size):
    srv, ws = server
    with Page(browser, srv.url, DESKTOP if size == "desktop" else PHONE) as p:
        page = p.goto("/s/tiny/fire")
        page.locator("#fire-text").fill("the sailor sees the whale at the harbor .")
        page.locator(".fireform button[type=submit]").click()
        page.wait_for_selector(".firelist li")
        assert page.locator(".firetoks .tok").count() == 9
        assert page.locator(".firelist li").count() >= 3
        page.locator(".firetoks .tok").nth(4).click()  # tap: the token's features in a tooltip
        tip = page.locator(".tip")
        assert tip.is_visible() and "#" in tip.inner_text()
        _shot(page, shots, f"{size}-7-fire")

        # (adding the "ocean words" latent makes it fire *less* here: no strength works for it)
        sailing = next(i for i, t in ws.labels.items() if "sailing" in t)
        page = p.goto(f"/s/tiny/steer?latent={sailing}")
        page.locator("#prompt").fill("the sailor")
        page.locator("#sweep-to").fill("4")
        page.locator("#sweep-n").fill("3")
        page.locator("#max-new").fill("8")
        page.locator("#sweep-run").click()
        page.wait_for_selector("#sweep-chart[data-drawn='1'] svg.main-svg")
        assert page.locator("#sweep-rows tr").count() == 3
        # 2x doubles the share of tokens the latent fires on (0.25 -> 0.50) and stays fluent; 4x falls back
        assert [page.locator("#sweep-rows tr").nth(i).locator("td").nth(1).inner_text() for i in range(3)] == \
            ["0.25", "0.50", "0.25"]
        assert page.locator("#sweep-rows tr.best").count() == 1
        assert page.locator("#sweep-rows tr.best td").first.inner_text() == "2"
        assert "recommended strength 2" in page.locator("#sweep-status").inner_text()
        page.locator("#sweep-card").scroll_into_view_if_needed()
        page.locator("#sweep-card").screenshot(path=str(shots / f"{size}-8-sweep.png"))
        p.check_clean()


def test_a_stores_preset_steers_in_the_playground(browser, server, shots):
    from features import FeatureStore
    from steering import make_preset
    from steering.store import StoreLink

    srv, ws = server
    with FeatureStore.open(ws.path, readonly=False) as store:
        StoreLink(store).save_preset(make_preset("calm", ["3:clamp=9"], sae=ws.sae, model=ws.model), overwrite=True)
    try:
        with Page(browser, srv.url, DESKTOP) as p:
            page = p.goto("/s/tiny/steer")
            page.wait_for_selector(".presetrow:not([hidden])")  # the page lists the store's presets (from /v1/models)
            page.locator("#preset").select_option("calm")
            page.locator("#edits .fidx").first.fill("")  # no row edits: the preset alone
            page.locator("#prompt").fill("the sailor")
            page.locator("#max-new").fill("8")
            page.locator("#generate").click()
            page.wait_for_selector("#compare:not([hidden])")
            assert page.locator("#out-edits").inner_text() == "3:clamp=9"  # the preset's edits, as the API applied them
            _shot(page, shots, "desktop-9-preset")
            p.check_clean()
    finally:
        with FeatureStore.open(ws.path, readonly=False) as store:
            store.delete_preset("calm")


@contextmanager
def _two_stores(name: str = "beside"):
    """The shared store served twice over the one model, as "tiny" and as "beside" (shown as `name`):
    each playground row then has an SAE menu. Yields the server and the WebStore."""
    from saesteer.web import Limits, ServeConfig, create_app

    from helpers.web_app import make_entry

    ws, limits, port = shared_store(), Limits(), free_port()
    app = create_app([make_entry(ws, "tiny", limits=limits), make_entry(ws, "beside", limits=limits, name=name)],
                     config=ServeConfig(port=port), limits=limits)
    srv = ServerThread(app, port).start()
    try:
        yield srv, ws
    finally:
        srv.stop()


def test_a_store_name_in_the_sae_menu_is_inert_text(browser):
    """With a second store over the model, each edit row's SAE menu names the stores: a name holding
    a script payload is an option's visible text, nothing runs."""
    with _two_stores(XSS_LABEL) as (srv, ws):
        with Page(browser, srv.url, DESKTOP) as p:
            page = p.goto("/s/tiny/steer")
            options = page.locator("#edits .fstore option")
            assert options.count() == 2 and options.nth(1).get_attribute("value") == "beside"
            assert options.nth(1).inner_text().startswith(XSS_LABEL)
            assert page.locator("main img").count() == 0 and page.evaluate("window.__xss") is None
            p.check_clean()


def test_a_row_switched_to_another_sae_shows_that_saes_label_only(browser):
    """A row's latent typed, then its SAE menu changed while the first store's label was on its way:
    the row shows the label of the SAE it now edits (the late answer was drawn over it), and the
    strength prefilled as the page's store's recommendation no longer says so."""
    with _two_stores() as (srv, ws):
        ocean = next(i for i, t in ws.labels.items() if "ocean" in t)
        other = next(i for i in range(ws.d_sae) if i not in ws.labels)
        held = []
        with Page(browser, srv.url, DESKTOP) as p:
            page = p.goto(f"/s/tiny/steer?latent={ocean}")
            strength = page.locator("#edits .fstrength").first
            assert strength.get_attribute("title")  # the store's recommended strength, prefilled
            page.route("**/api/stores/tiny/features/*", lambda r: held.append(r))  # answered below, late
            page.route("**/api/stores/beside/features/*", lambda r: r.fulfill(json={"summary": {"label": "beside's"}}))
            with page.expect_request(lambda q: "/api/stores/tiny/features/" in q.url):
                page.locator("#edits .fidx").first.fill(str(other))
            page.locator("#edits .fstore").first.select_option("beside")
            label = page.locator("#edits .flabel").first
            page.wait_for_function("() => document.querySelector('#edits .flabel').textContent === \"beside's\"")
            assert not strength.get_attribute("title")
            with page.expect_response(lambda r: "/api/stores/tiny/features/" in r.url):
                held[0].fulfill(json={"summary": {"label": "tiny's"}})
            page.wait_for_timeout(300)  # the late answer's body read and handled
            assert label.inner_text() == "beside's"
            page.locator("#edits .fstore").first.select_option("tiny")  # the late answer was kept for this
            assert label.inner_text() == "tiny's"
            p.check_clean()


def test_a_preset_never_drops_a_row_it_cannot_send(browser):
    """With a preset chosen, a row the page cannot send (a latent beyond its SAE's width) is refused:
    it was dropped with every other row, and the preset steered alone. Mended, the row of the other
    store steers beside the page's store's preset."""
    from features import FeatureStore
    from steering import make_preset
    from steering.store import StoreLink

    with _two_stores() as (srv, ws):
        with FeatureStore.open(ws.path, readonly=False) as store:
            StoreLink(store).save_preset(make_preset("calm", ["3:clamp=9"], sae=ws.sae, model=ws.model), overwrite=True)
        sent = []
        try:
            with Page(browser, srv.url, DESKTOP) as p:
                page = p.goto("/s/tiny/steer?latent=3")
                page.on("request", lambda q: sent.append(q.url) if q.url.endswith("/v1/completions") else None)
                page.wait_for_selector(".presetrow:not([hidden])")
                page.locator("#preset").select_option("calm")
                page.locator("#add-edit").click()
                page.locator("#edits .fstore").nth(1).select_option("beside")
                page.locator("#edits .fidx").nth(1).fill(str(ws.d_sae))
                page.locator("#prompt").fill("the sailor")
                page.locator("#generate").click()
                status = page.locator("#status")
                assert f"feature {ws.d_sae} is not in store beside" in status.inner_text()
                assert "error" in (status.get_attribute("class") or "") and sent == []
                # the preset (of the page's store) with the other store's row, in one request
                page.locator("#edits .fidx").first.fill("")
                page.locator("#edits .fidx").nth(1).fill("5")
                page.locator("#edits .fstrength").nth(1).fill("1")
                page.locator("#edits .funit").nth(1).select_option("raw")
                page.locator("#max-new").fill("4")
                page.locator("#generate").click()
                page.wait_for_selector("#compare:not([hidden])")
                assert page.locator("#out-edits").inner_text() == "3:clamp=9, beside/5:add=1"
                p.check_clean()
        finally:
            with FeatureStore.open(ws.path, readonly=False) as store:
                store.delete_preset("calm")


def test_removing_edit_rows_from_the_keyboard_keeps_the_focus_on_the_list(browser, server):
    """Enter on a row's remove button: the focus goes to the row now in its place, then to "+ Add a
    feature" when none is left (it fell to the page, a keyboard user started over from the top)."""
    srv, ws = server
    with Page(browser, srv.url, DESKTOP) as p:
        page = p.goto("/s/tiny/steer?latent=3&latent=5")
        focused = "() => document.activeElement.getAttribute('aria-label') || document.activeElement.id"
        page.locator("#edits .rm button").first.focus()
        page.keyboard.press("Enter")
        assert page.locator("#edits li").count() == 1 and page.evaluate(focused) == "remove this edit"
        assert page.locator("#edits .fidx").first.input_value() == "5"
        page.keyboard.press("Enter")
        assert page.locator("#edits li").count() == 0 and page.evaluate(focused) == "add-edit"
        page.keyboard.press("Enter")  # and a new row, its latent typed next
        assert page.locator("#edits li").count() == 1 and page.evaluate(focused) == "feature index"
        p.check_clean()
