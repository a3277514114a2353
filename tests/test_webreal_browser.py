"""`saesteer serve` in Chromium as a researcher uses it, on feature stores built with the CLI from
tiny real checkpoints whose tokenizers split text as real ones do (byte-level BPE: CJK and emoji in
several byte tokens; SentencePiece with <0xNN> byte fallback and Mistral's [INST] chat template),
over hard text: Python with tabs, NFC and NFD accents, CJK, emoji sequences, Arabic and Hebrew,
zero-width characters, "<script>"-looking text, a very long line, CRLF line ends.

What the person sees is read from the page (DOM text, element widths) and screenshotted to
$SAESTEER_ARTIFACTS/webreal (or a pytest temp folder). The keyboard check of the token tooltips
runs in the default suite (a few seconds); the real-store checks are slow (they build stores).
"""

from __future__ import annotations

import json
import os
import unicodedata
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.real_cli import saesteer
from helpers.web_app import ServerThread, free_port, make_app
from helpers.browser import DESKTOP, Page, browser  # noqa: F401  (the Chromium fixture)

pytestmark = [pytest.mark.browser]

HARD_TEXTS = [
    'def parse(self, args=None):\n\tif args is None:\n\t\treturn self._parse(sys.argv)\n'
    '    for i, a in enumerate(args):\n        yield i, a  # comment\n',
    unicodedata.normalize("NFC", "Le café de la gare ouvre à sept heures; naïve résumé, Ångström."),
    unicodedata.normalize("NFD", "Le café de la gare ouvre à sept heures; naïve résumé, Ångström."),
    "日本語のテキストを分かち書きせずに書きます。你好，世界。机器学习很有趣。한국어 문장도 있습니다.",
    "emoji 🙂 and 🐳 and 👩\u200d💻 and 🏳️\u200d🌈 span several bytes each",
    "العربية تكتب من اليمين إلى اليسار. עברית נכתבת מימין לשמאל. mixed 123 עם english.",
    "zero\u200bwidth\u200cjoin\u200dhere and soft\u00adhyphen and bom\ufeff in text",
    '<script>alert("x")</script> and <img src=x onerror=alert(1)> &amp; &lt;b&gt;',
    "x = [" + ", ".join(str(i) for i in range(400)) + "]",
    "line one\r\nline two\r\n\r\nline four",
]
CJK = "日本語你好世界机器学习"


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    root = os.environ.get("SAESTEER_ARTIFACTS")
    d = Path(root) / "webreal" if root else tmp_path_factory.mktemp("webreal-screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


# ------------------------------------------------------------------ the shared small store (default suite)
@pytest.fixture(scope="module")
def tiny():
    from saesteer.web import ServeConfig

    port = free_port()
    srv = ServerThread(make_app(config=ServeConfig(port=port)), port).start()
    yield srv
    srv.stop()


# the right edge of each numeric heading's text and of its column's first cell, per table
_NUMERIC_EDGES = """sel => Array.from(document.querySelectorAll(sel)).filter(t => t.tHead && t.tBodies.length
                                                                     && t.tBodies[0].rows.length).flatMap(t => {
  const right = (e) => { const r = document.createRange(); r.selectNodeContents(e); return r.getBoundingClientRect().right; };
  const heads = Array.from(t.tHead.rows[0].cells);
  return Array.from(t.tBodies[0].rows[0].cells).map((c, i) => [heads[i].textContent, c.classList.contains('num'),
                                                                right(heads[i]), right(c)]).filter(x => x[1]); })"""


def test_numbers_sit_under_their_headings(browser, tiny):  # noqa: F811
    """`.ftable td` aligned every cell left and `.mini th` every heading left, over `.num`'s right: the
    feature list's numbers sat a column off their headings, a neighbour table's cosines off theirs."""
    with Page(browser, tiny.url, DESKTOP) as p:
        for path, sel in (("/s/tiny?limit=5", "table.ftable"), ("/s/tiny/f/3", "table.mini")):
            page = p.goto(path)
            edges = page.evaluate(_NUMERIC_EDGES, sel)
            assert len(edges) >= 2, (path, edges)
            for head, _, head_right, cell_right in edges:
                assert abs(head_right - cell_right) < 2, (path, head, head_right, cell_right)
        p.check_clean()


def test_the_playgrounds_operation_menu_is_drawn_as_the_other_fields(browser, tiny):  # noqa: F811
    """The search count's tag style (.mode) also framed the edit row's operation cell: a box in a box."""
    with Page(browser, tiny.url, DESKTOP) as p:
        page = p.goto("/s/tiny/steer?latent=2")
        cell = page.locator("#edits .edit .mode")
        assert cell.evaluate("e => getComputedStyle(e).borderTopWidth") == "0px"
        select, value = page.locator("#edits .fmode").bounding_box(), page.locator("#edits .fstrength").bounding_box()
        assert abs(select["y"] - value["y"]) < 1 and abs(select["height"] - value["height"]) < 2, (select, value)
        page = p.goto("/s/tiny/search?q=ocean")  # the tag keeps its frame
        assert page.locator(".count .mode").evaluate("e => getComputedStyle(e).borderTopWidth") == "1px"
        p.check_clean()


def test_a_tokens_tooltip_follows_the_keyboard_focus_and_goes_on_escape(browser, tiny):  # noqa: F811
    srv = tiny
    with Page(browser, srv.url, DESKTOP) as p:
        page = p.goto("/s/tiny/fire?text=the+sailor+sees+the+whale")
        toks = page.locator(".firetoks .tok")
        n = toks.count()
        assert n >= 3
        toks.first.focus()
        assert page.locator(".tip").count() == 1  # the first token's features
        page.keyboard.press("Escape")
        assert page.locator(".tip").count() == 0  # dismissed without moving the pointer
        page.keyboard.press("Tab")
        assert page.locator(".tip").count() == 1
        for _ in range(n):  # on past the last token, to the feature links below
            page.keyboard.press("Tab")
        assert page.evaluate("!document.activeElement.classList.contains('tok')")
        assert page.locator(".tip").count() == 0  # the tip went with the focus
        p.check_clean()


def test_the_fire_form_runs_the_text_with_the_line_breaks_typed(browser, tiny):  # noqa: F811
    """A form's encoding writes a textarea's line breaks as CRLF: the model read a "\r" the user never typed."""
    with Page(browser, tiny.url, DESKTOP) as p:
        page = p.goto("/s/tiny/fire")
        page.locator("#fire-text").fill("the sea\nthe whale")
        page.locator(".fireform button[type=submit]").click()
        page.wait_for_selector(".firetoks")
        assert "%0A" in page.url and "%0D" not in page.url
        shown = page.locator(".firetoks").text_content()
        assert "\u240d" not in shown, shown  # no CR drawn (the tiny store's word-level tokenizer drops the break)
        assert page.locator("#fire-text").input_value() == "the sea\nthe whale"
        p.check_clean()


# ------------------------------------------------------------------ real stores (slow)
def _build(work: Path, family: str, d_sae: int = 256) -> SimpleNamespace:
    """A tiny checkpoint with a `family` tokenizer trained on HARD_TEXTS, cached, an SAE, its store."""
    from helpers.real_models import build_family_tokenizer, save_arch_model

    work.mkdir(parents=True, exist_ok=True)
    tok = build_family_tokenizer(family, HARD_TEXTS * 3, vocab_size=400)  # small: CJK stays in bytes
    model = save_arch_model(work / "model", "qwen3", tok)
    data = work / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in HARD_TEXTS * 30))
    saesteer("cache", "--model", model, "--dataset", data, "--context-length", 48, "--max-tokens", 8192,
             "--hooks", "blocks.0.hook_resid_post", "--out", work / "cache", "--no-progress").ok()
    sae = work / "run" / "saes" / "sae"
    saesteer("train", "--cache", work / "cache", "--d-sae", d_sae, "--k", 8, "--total-tokens", 4096,
             "--architecture", "topk", "--batch-size", 256, "--holdout-tokens", 512, "--model-eval", "false",
             "--sae-name", "sae", "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--out", work / "run",
             "--no-progress").ok()
    saesteer("features", "build", "--sae", sae, "--cache", work / "cache", "--out", work / "s.db", "--no-progress").ok()
    return SimpleNamespace(work=work, model=model, sae=sae, store=work / "s.db")


def _serve(*stores):
    from fastapi.testclient import TestClient  # noqa: F401  (captured_serve's client: the app itself)

    from helpers.real_cli import captured_serve

    with pytest.MonkeyPatch.context() as mp:
        r, web = captured_serve(mp, *[a for s in stores for a in ("--store", s)])
    assert web is not None, r.text
    return ServerThread(web.app, web.base_url.port).start()


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    run = _build(tmp_path_factory.mktemp("webreal-bpe"), "gpt2")
    srv = _serve(run.store)
    yield SimpleNamespace(**vars(run), srv=srv)
    srv.stop()


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    run = _build(tmp_path_factory.mktemp("webreal-spm"), "mistral")
    srv = _serve(run.store)
    yield SimpleNamespace(**vars(run), srv=srv)
    srv.stop()


def _get(srv, path: str):
    return json.load(urllib.request.urlopen(srv.url + path))


def _latent_with(srv, chars: str) -> int:
    """A latent whose top example is centred on a token completing one of `chars`."""
    n = _get(srv, "/api/stores/s/features?limit=1")["total"]
    for i in range(n):
        for ex in _get(srv, f"/api/stores/s/features/{i}")["top_examples"][:3]:
            if any(ch in ex["tokens"][ex["centre"]] for ch in chars) and "" in ex["tokens"]:
                return i
    raise AssertionError(f"no latent's top example is centred on one of {chars!r}")


def _drawn_windows(srv, latent: int) -> list[str]:
    from features.tokentext import visible

    d = _get(srv, f"/api/stores/s/features/{latent}")
    return ["".join(visible(p, "".join(ex["tokens"][i + 1:])) for i, p in enumerate(ex["tokens"]))
            for ex in d["top_examples"] + d["quantile_examples"]]


# a window's width on one line against that of its text in one plain span of the same font: a sliver
# per empty token made CJK windows wider (a gap in every split character)
_WIDTHS = """els => els.map(e => {
  const box = document.createElement('div'); box.style.position = 'absolute'; box.style.left = '0';
  const a = e.cloneNode(true), b = document.createElement('span');
  b.className = e.className; b.textContent = e.textContent;
  for (const x of [a, b]) { x.style.whiteSpace = 'pre'; x.style.display = 'inline'; }
  box.append(a, document.createElement('br'), b); e.parentNode.appendChild(box);
  const w = [a.getBoundingClientRect().width, b.getBoundingClientRect().width,
             Array.from(e.querySelectorAll('.tok')).filter(t => !t.textContent).length];
  box.remove(); return w; })"""


def _steerable_latent(srv) -> int:
    """A latent with a typical max (so "4 x max" means something), the most frequent."""
    items = _get(srv, "/api/stores/s/features?sort=frequency&desc=1&limit=5")["items"]
    return next(i["latent"] for i in items if i["typical_max_act"])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bpe", "spm"])
def test_examples_read_as_the_stores_text_with_split_characters_whole(browser, family, request, shots):  # noqa: F811
    run = request.getfixturevalue(family)
    latent = _latent_with(run.srv, CJK)
    with Page(browser, run.srv.url, DESKTOP) as p:
        page = p.goto(f"/s/s/f/{latent}")
        shown = page.eval_on_selector_all(".exlist .toks", "els => els.map(e => e.textContent)")
        want = _drawn_windows(run.srv, latent)
        assert shown == want
        assert not any(art in "".join(shown) for art in ("Ġ", "Ċ", "▁", "<0x"))
        assert all(w.strip("\ufffd").count("\ufffd") == 0 for w in shown)  # U+FFFD only where a window cuts
        # no sliver, not even for a character cut at a window's end (its U+FFFD is one span with its tokens)
        assert page.eval_on_selector_all(".exlist .tok", "els => els.filter(e => !e.textContent).length") == 0
        for window_width, text_width, slivers in page.eval_on_selector_all(".exlist .toks", _WIDTHS):
            assert abs(window_width - text_width - 3 * slivers) < 1, (window_width, text_width, slivers)
        # the highlight is on a character: the strongest span of the top example holds text
        top = page.locator(".exlist .ex").first
        assert top.locator(".tok.centre").text_content() != ""
        page.locator(".exlist").first.screenshot(path=str(shots / f"{family}-feature-{latent}.png"))
        p.check_clean()


@pytest.mark.slow
def test_the_playground_on_a_chat_model_writes_what_steer_prints(browser, spm, shots):  # noqa: F811
    """Mistral's [INST] template written out as the prompt, greedy: the page's default and steered
    continuations are `saesteer steer`'s, drawn by the same rule."""
    from features.drawing import readable

    prompt = "[INST] Écris un parseur 日本 [/INST]"
    latent = _steerable_latent(spm.srv)
    r = saesteer("steer", "--sae", spm.sae, "--store", spm.store, "-l", f"{latent}:add=4x", "--prompt", prompt,
                 "--max-new-tokens", 12, "--do-sample", "false", "--seed", 0, "--json", "--no-progress").ok()
    cli = json.loads(r.out)["results"][0]
    with Page(browser, spm.srv.url, DESKTOP) as p:
        page = p.goto(f"/s/s/steer?latent={latent}")
        page.locator("#edits .fstrength").fill("4")
        page.locator("#prompt").fill(prompt)
        page.locator("#max-new").fill("12")
        page.locator("#generate").click()
        page.wait_for_selector("#compare:not([hidden])")
        assert page.locator("#out-prompt-a").text_content() == readable(prompt)
        assert page.locator("#out-default").text_content() == readable(cli["unsteered"])
        assert page.locator("#out-steered").text_content() == readable(cli["steered"])
        page.locator("#compare").screenshot(path=str(shots / "spm-playground.png"))
        p.check_clean()


@pytest.mark.slow
def test_a_code_query_finds_the_code_and_the_fire_page_draws_the_hard_text(browser, bpe, shots):  # noqa: F811
    from urllib.parse import urlencode

    with Page(browser, bpe.srv.url, DESKTOP) as p:
        page = p.goto("/s/s/search?" + urlencode({"q": "self._parse"}))
        snippets = page.eval_on_selector_all(".snippet", "els => els.map(e => e.textContent)")
        assert snippets and all("parse" in s for s in snippets[:5])
        text = "café " + unicodedata.normalize("NFD", "naïve") + " 日本語 👩\u200d💻 zero\u200bwidth <script>x</script>\tend"
        page = p.goto("/s/s/fire?" + urlencode({"text": text}))
        shown = page.locator(".firetoks").text_content()
        assert "日本語" in shown and unicodedata.normalize("NFD", "naïve") in shown and "👩⟨ZWJ⟩💻" in shown and "⟨ZWSP⟩" in shown
        assert "<script>" in shown and page.locator("main script").count() == 0
        assert "\ufffd" not in shown and page.eval_on_selector_all(".firetoks .tok", "els => els.filter(e => !e.textContent).length") == 0
        page.locator(".firetoks").screenshot(path=str(shots / "bpe-fire.png"))
        p.check_clean()


@pytest.mark.slow
def test_thousands_of_latents_page_by_keyboard_without_loading_them_all(browser, bpe, tmp_path):  # noqa: F811
    sae = bpe.work / "runbig" / "saes" / "big"
    saesteer("train", "--cache", bpe.work / "cache", "--d-sae", 4096, "--k", 8, "--total-tokens", 2048,
             "--architecture", "topk", "--batch-size", 256, "--holdout-tokens", 512, "--model-eval", "false",
             "--sae-name", "big", "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0,
             "--out", bpe.work / "runbig", "--no-progress").ok()
    saesteer("features", "build", "--sae", sae, "--cache", bpe.work / "cache", "--out", tmp_path / "big.db",
             "--no-progress").ok()
    srv = _serve(tmp_path / "big.db")
    try:
        with Page(browser, srv.url, DESKTOP) as p:
            page = p.goto("/s/big")
            assert page.locator("table.ftable tbody tr").count() == 50
            assert page.locator(".pageinfo").inner_text() == "1–50 of 4,096"
            page.locator("a[rel=next]").first.focus()
            page.keyboard.press("Enter")
            page.wait_for_url("**offset=50**")
            assert page.locator(".pageinfo").inner_text() == "51–100 of 4,096"
            assert page.locator("table.ftable tbody tr").count() == 50
            # the map of its 3,000-odd live latents, coloured by health: a TopK store has no Matryoshka
            # levels, and colouring by them drew every point one grey
            saesteer("features", "map", tmp_path / "big.db", "--method", "pca").ok()
            page = p.goto("/s/big/map")
            page.wait_for_selector("#map[data-drawn='1'], [data-drawn='1']", timeout=60000)
            assert page.locator('[data-colour="level"]').count() == 0
            assert page.locator('[data-colour][aria-pressed="true"]').get_attribute("data-colour") == "health"
            page = p.goto("/s/big/f/4094")
            page.locator("a[rel=next]").focus()
            page.keyboard.press("Enter")
            page.wait_for_url("**/f/4095")
            assert page.locator("a[rel=next]").count() == 0  # the last latent
            p.check_clean()
    finally:
        srv.stop()


@pytest.mark.slow
def test_the_html_export_shows_the_examples_as_the_web_app_does(browser, bpe, tmp_path):  # noqa: F811
    latent = _latent_with(bpe.srv, CJK)
    saesteer("features", "export", bpe.store, tmp_path / "html", "--latents", latent, "--no-progress").ok()
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        page.goto((tmp_path / "html" / "f" / f"{latent:05d}.html").as_uri())
        shown = page.eval_on_selector_all(".ex", "els => els.map(e => e.textContent)")
        d = _get(bpe.srv, f"/api/stores/s/features/{latent}")
        n = len(d["top_examples"]) + len(d["quantile_examples"])
        assert shown[:n] == _drawn_windows(bpe.srv, latent)
        assert page.eval_on_selector_all(".ex .tok", "els => els.filter(e => !e.textContent).length") == 0
        for window_width, text_width, _ in page.eval_on_selector_all(".ex", _WIDTHS):
            assert abs(window_width - text_width) < 1, (window_width, text_width)  # no gap, no padding between tokens
    finally:
        ctx.close()
