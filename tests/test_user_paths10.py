"""A tenth round of user paths: a feature store built with the CLI (cache -> train -> features build
-> label, on the GPT-2-style checkpoint and byte-level BPE of tests/helpers/real_models.py) from text
as it comes from the web and from build logs: ANSI escape sequences (ESC[2J, an ESC]0;title BEL, an
ESC]8 hyperlink), other C0 and C1 controls, Trojan Source bidi overrides and isolates, zero-width
spaces and joiners, combining marks, ZWJ emoji, CJK, Arabic, tabs, a lone CR, NUL, very long
tokens, HTML/JS and Markdown/JSON-breaking text. Then every place that shows it:

- the terminal: `features show`, `list` and `search` wrote the escape sequences, C1 controls (U+009B
  is a CSI) and bidi overrides to the user's terminal as they were (rich passes ESC on: the store's
  ESC[2J cleared the screen), and so did an error quoting a dataset (a CSV's column names, in `cache`'s
  refusal), and the offline labeller's labels, which hold control characters of the tokens they
  quote. One rule now draws them (features.drawing.draw_controls: ␛[2J, ⟨RLO⟩, ⟨U+009B⟩), for
  token views (`visible`) and running text (`readable`: saesteer.terminal.plain, and
  saesteer.boundary.print_error for every command's `error:` line);
- the web pages: escaped already, but a U+202E in an example or a label reordered the rest of its
  line (Trojan Source: in Chromium, the fire page's tokens after it ran right to left) and ESC, NUL
  or zero-width characters showed as nothing; every `{{ }}` string is drawn now, except form
  fields, which give the user's own text back as typed;
- `features export --format neuronpedia` refused its own files ("Unterminated string") when the
  text held a NEL (U+0085) or a U+2028, both common in scraped text: its JSON Lines were read back
  with str.splitlines, which ends lines there. Rows now escape them, and are read at "\\n" only;
- a review of that change: real scripts read as written in running text (the bidi marks of Arabic,
  Hebrew and Persian text, whose drawn LTR names reordered the words around them; soft hyphens
  inside words; a region flag's tags), drawn where they would only hide or mislead; steer.js's copy
  of the rule (readable.js) checked against the Python one in Chromium; the judge read a lone CR as
  nothing ("aloneover"); Neuronpedia's importer, which replaces every `\\u0000` of a file before
  parsing it, broke on a label that spells that escape; the HTML export's logit chart labelled a
  "\\n" token as a blank;
- what held, kept so: the judge's prompt carries no control or bidi character (only ZWJ, inside
  emoji), HTML/JS in the text stays inert in pages and the HTML export, NFC and NFD queries find the
  same latents, and a lone surrogate in a JSON dataset is refused at read, naming the file.
"""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.real_cli import cache_train_store, captured_serve, saesteer
from helpers.browser import PHONE, browser  # noqa: F401 (the headless Chromium fixture)

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

ESC, BEL = "\x1b", "\x07"
HOSTILE_DOC = "".join([
    f"Build log {ESC}[2J{ESC}[H{ESC}[31mERROR{ESC}[0m: failed at step 3\n",
    f"{ESC}]0;pwned title{BEL} set the title, then {ESC}]8;;https://evil.example/{BEL}click here{ESC}]8;;{BEL} link\n",
    "C0 controls: bell\x07 backspace\x08\x08\x08 vt\x0b ff\x0c del\x7f C1: \x85next\x9b31mcsi\x9d0;t\x9c end\n",
    "Trojan source: access = \"user\u202e \u2066// check admin\u2069 \u2066\" if isAdmin: grant()\n",
    "isolates \u2067rtl\u2069 and \u2068fsi\u2069 marks \u200e lrm \u200f rlm \u061c alm\n",
    "zero width: a\u200bb\u200cc\u200dd\u2060e\ufefff soft\u00adhyphen\n",
    "combining: e\u0301 cafe\u0301 caf\u00e9 Z\u0351\u0307\u0350\u0352a\u0315\u0362l\u0334\u0358g\u035do\n",
    "emoji: \U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family, \U0001F3F3\ufe0f\u200d\U0001F308 flag\n",
    "CJK: \u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002 Arabic: \u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 123\n",
    "tabs\tin\tcolumns\tand CR alone\rover written line\r\n",
    "NUL byte here:\x00 after nul; paragraph\u2028separator\n",
    "long token: " + "A" * 400 + " and url https://example.com/" + "x" * 300 + "\n",
    "<script>alert('x')</script></script><img src=x onerror=alert(1)> <b onmouseover=alert(2)>hi</b> &amp;\n",
    "md: **bold** [link](javascript:alert(1)) `code` | table | ``` fence\n",
    'json: {"a": "b\\", "c": [1, 2}, \'single\' \\u0000 \\n } ]]> <!-- -->\n',
])
# what must never reach a terminal or a page's text raw: C0 (but line break and tab), DEL, C1, bidi
# controls, zero-width and other format characters, separators, surrogates
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")


def _raw(text: str) -> list[str]:
    """The characters of RAW in `text`, but those running text keeps (`readable`): the joiners and the
    soft hyphen between two visible characters, and the bidi marks where the text holds Arabic or
    Hebrew (judged on the whole output here; the rule itself, per string, in the tests below)."""
    text = re.sub(r"(?<=[^\s\x00-\x1f\x7f-\x9f])[\u00ad\u200c\u200d](?=[^\s\x00-\x1f\x7f-\x9f])", "", text)
    if re.search("[\u05d0-\u05ea\u0620-\u064a]", text):
        text = re.sub("[\u200e\u200f\u061c]", "", text)
    return sorted({f"U+{ord(c):04X}" for c in RAW.findall(text)})


@pytest.fixture(scope="module")
def hostile(real_models, tmp_path_factory) -> Path:
    """The store (labelled by the offline judge) of 40 copies of HOSTILE_DOC, made with the CLI."""
    work = tmp_path_factory.mktemp("hostile")
    data = work / "scraped.jsonl"
    data.write_text("".join(json.dumps({"text": HOSTILE_DOC}) + "\n" for _ in range(40)), encoding="utf-8")
    cache_train_store(real_models.path("gpt2"), data, work, "store.db")
    saesteer("label", "--store", work / "store.db", "--judge-backend", "offline", "--embed-backend", "none",
             "--no-progress").ok()
    return work / "store.db"


def _latents_whose_examples_hold(db: Path, chars, kind: str = "%") -> dict[str, int]:
    """For each character (or string) of `chars`, a latent with an example (of `kind`) whose text holds it."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT latent, text FROM examples WHERE kind LIKE ? ORDER BY latent", (kind,)).fetchall()
    found = {}
    for ch in chars:
        found[ch] = next((lat for lat, text in rows if ch in text), None)
    return found


# ---------------------------------------------------------------------------------------------
# 1. the terminal


def test_the_rule_draws_controls_bidi_and_invisible_characters_and_nothing_else():
    """The one rule, on its own: C0 controls and DEL by their Control Pictures, C1, bidi and format
    characters by name or code point; accents, combining marks, CJK, Arabic, NBSP and emoji stay;
    token views draw line breaks and tabs too, running text keeps them (and the joiners)."""
    from features.drawing import readable
    from features.tokentext import visible

    assert visible("a\x1b[2J\x00\x7f") == "a\u241b[2J\u2400\u2421"
    assert visible("\u202eb\u2066c\u2069\u200b\u200d\x9b\ufeff") == \
        "\u27e8RLO\u27e9b\u27e8LRI\u27e9c\u27e8PDI\u27e9\u27e8ZWSP\u27e9\u27e8ZWJ\u27e9\u27e8U+009B\u27e9\u27e8BOM\u27e9"
    kept = "caf\u00e9 cafe\u0301 \u65e5\u672c \u0645\u0631\u062d\u0628\u0627 a\u00a0b \U0001F44D\U0001F3FD \ue000"
    assert visible(kept) == readable(kept) == kept
    assert visible("x\n\ty\r\n") == "x\u21b5\u21e5y\u21b5"
    assert readable("x\r\n\ty\u202e\U0001F468\u200d\U0001F469") == "x\n\ty\u27e8RLO\u27e9\U0001F468\u200d\U0001F469"
    assert readable("context: \u200d, a\u200c") == "context: \u27e8ZWJ\u27e9, a\u27e8ZWNJ\u27e9"  # joining nothing
    assert readable("lone \ud800") == "lone \u27e8U+D800\u27e9"  # printable, and writable as UTF-8


# what running text of real scripts holds and must show as written (`readable`), each with what
# `readable` makes of it; token views (`visible`) draw all of these characters
WRITTEN = {
    "Persian ZWNJ": ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", None),
    "Hebrew with RLM": ("\u200f\u05e9\u05dc\u05d5\u05dd (2021)\u200f, \u05e2\u05de\u05d5\u05d3 3", None),
    "Arabic with ALM and LRM": ("\u0627\u0644\u0633\u0639\u0631 \u061c-5\u200e USD", None),
    "Devanagari ZWJ": ("\u0915\u094d\u200d\u0937", None),
    "German soft hyphens": ("Donau\u00addampf\u00adschiff", None),
    "French NBSPs": ("Prix\u00a0: 10\u202f\u20ac \u00ab\u00a0oui\u00a0\u00bb", None),
    "flags and keycaps": ("\U0001F1EB\U0001F1F7 #\ufe0f\u20e3 \U0001F3F3\ufe0f\u200d\U0001F308", None),
    "England's flag (tags)": ("\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F go", None),
    "combining marks": ("cafe\u0301 Z\u0351\u0307a\u0315", None),
    # the same characters where they hide or mislead: drawn
    "RLM in LTR text (swaps its numbers)": ("year 1990 \u200f, 2020", "year 1990 \u27e8RLM\u27e9, 2020"),
    "lone soft hyphen": ("a \u00ad b", "a \u27e8SHY\u27e9 b"),
    "tags hiding ASCII": ("ok\U000E0069\U000E0067", "ok\u27e8U+E0069\u27e9\u27e8U+E0067\u27e9"),
    "RLO in Hebrew": ("\u05e9\u202e\u05dc", "\u05e9\u27e8RLO\u27e9\u05dc"),
}


@pytest.mark.parametrize("name", list(WRITTEN))
def test_running_text_shows_real_scripts_as_written_and_draws_what_hides(name):
    """Persian, Hebrew and Arabic text with the ZWNJ and bidi marks its writers put there, Indic
    conjuncts, soft hyphens, NBSPs, emoji flags and keycaps: `readable` (labels, snippets, generated
    text, the CLI's messages) shows them as written. Drawn, an RLM's LTR name split the Hebrew around
    it and reordered its words, and "Donau⟨SHY⟩dampf⟨SHY⟩schiff" was no longer a word. Where the same
    characters can only hide or mislead (an RLM in English swaps the numbers after it, invisibly)
    they are still drawn, and token views draw them all (a token of one would show nothing)."""
    from features.drawing import readable
    from features.tokentext import visible

    text, want = WRITTEN[name]
    assert readable(text) == (text if want is None else want)
    assert _raw(visible(text)) == []


def test_features_show_draws_the_escape_sequences_and_bidi_controls_of_its_examples(hostile):
    """`features show` on latents whose examples hold ESC, a C1 CSI and a bidi control: the terminal
    gets ␛, ⟨U+009B⟩, ⟨RLO⟩ or the like, never the characters (rich passed ESC on: ESC[2J cleared the
    screen); the example text around them is intact."""
    found = _latents_whose_examples_hold(hostile, ESC + "\x9b\u202e\u2066")
    assert found[ESC] is not None and found["\x9b"] is not None, found  # the store shows them at all
    out = ""
    for latent in sorted({v for v in found.values() if v is not None}):
        out += saesteer("features", "show", hostile, latent, "--examples", 1000).ok().out
    assert _raw(out) == []
    assert "\u241b" in out and "\u27e8U+009B\u27e9" in out
    if found["\u202e"] is not None:
        assert "\u27e8RLO\u27e9" in out


def test_labels_and_snippets_with_control_characters_are_drawn_in_list_and_search(hostile):
    """The offline labeller quotes tokens, control characters included, in its labels: `features
    list` drew them raw; `features search` did the same with the text of its snippets."""
    with sqlite3.connect(hostile) as con:
        labels = [t for (t,) in con.execute("SELECT label FROM labels")]
    assert any(_raw(t) for t in labels), labels[:10]  # the path this test is about exists
    listed = saesteer("features", "list", hostile, "--labelled", "--limit", 500).ok().out
    assert _raw(listed) == []
    found = saesteer("features", "search", hostile, "title", "--limit", 50).ok().out
    assert "\u241b]0;pwned title\u2407" in found and _raw(found) == []


def test_an_error_quoting_a_datasets_column_names_draws_their_escape_sequences(real_models, tmp_path):
    """A CSV whose header holds an OSC title sequence and ESC[2J, cached without --text-column: the
    refusal lists the columns, drawn (␛]0;pwned␇body␛[2J), on one line."""
    csv = tmp_path / "export.csv"
    csv.write_text(f"id,{ESC}]0;pwned{BEL}body{ESC}[2J\n1,hello world\n2,more text\n", encoding="utf-8")
    r = saesteer("cache", "--model", real_models.path("gpt2"), "--dataset", csv, "--context-length", 32,
                 "--out", tmp_path / "cache", "--no-progress")
    assert r.rc != 0 and "--text-column" in r.err, r.text
    assert "\u241b]0;pwned\u2407body\u241b[2J" in r.err and _raw(r.err) == [], r.err


# ---------------------------------------------------------------------------------------------
# 2. the web app


def test_web_pages_draw_bidi_controls_and_escape_sequences_and_keep_form_fields_as_typed(hostile):
    """Feature pages, the list and the fire page over the store: no bidi override or control
    character in any page's text (a U+202E in one token's span reordered every token after it, and
    the label's line), the marks drawn in the token views; the fire page's textarea gives the typed
    text back exactly (escaped); HTML in the text stays inert."""
    with pytest.MonkeyPatch.context() as mp:
        r, web = captured_serve(mp, "--store", hostile)
    assert web is not None, r.text
    found = _latents_whose_examples_hold(hostile, ESC + "\u202e\x9b<", kind="top")
    pages = {lat: web.get(f"/s/store/f/{lat}").text for lat in {v for v in found.values() if v is not None}}
    pages["list"] = web.get("/s/store", params={"labelled": 1, "limit": 200}).text
    for name, page in pages.items():
        assert _raw(page) == [], name
        assert "<script>alert" not in page and "<img src=x" not in page, name
    tokens = "".join(re.findall(r'<span class="tok(?: [^"]*)?"[^>]*>([^<]*)</span>', pages[found[ESC]]))
    assert "\u241b" in tokens
    typed = "access = \"user\u202e \u2066// check admin\u2069 \u2066\" if isAdmin:\x1b[2J <b>x</b>"
    page = web.get("/s/store/fire", params={"text": typed}).text
    spans = page.split('class="toks firetoks">', 1)[1].split("</p>", 1)[0]
    shown = "".join(re.findall(r'<span class="tok[^"]*"[^>]*>([^<]*)</span>', spans))
    assert shown == ("access = &#34;user\u27e8RLO\u27e9 \u27e8LRI\u27e9// check admin\u27e8PDI\u27e9 \u27e8LRI\u27e9&#34; "
                     "if isAdmin:\u241b[2J &lt;b&gt;x&lt;/b&gt;"), shown
    field = re.search(r'<textarea id="fire-text"[^>]*>(.*?)</textarea>', page, re.S).group(1)
    assert field == typed.replace('"', "&#34;").replace("<", "&lt;").replace(">", "&gt;")
    assert _raw(page.replace(field, "")) == []


@pytest.mark.browser
def test_in_chromium_a_bidi_override_reorders_no_token_a_long_token_stays_in_the_page_and_steer_js_draws(hostile, browser):
    """The fire page at phone width, in Chromium: the words after a U+202E run left to right, line
    by line (the raw override drew them right to left: every span after it in the paragraph), and
    an 80-character word (wider than the phone) wraps inside the page instead of widening it. The
    steering playground writes its prompt and continuations itself: drawn by the same rule."""
    from urllib.parse import urlencode

    from features.drawing import readable
    from helpers.web_app import ServerThread

    with pytest.MonkeyPatch.context() as mp:
        r, web = captured_serve(mp, "--store", hostile)
    srv = ServerThread(web.app, web.base_url.port).start()
    ctx = browser.new_context(viewport=PHONE)
    try:
        page = ctx.new_page()
        words = ["three", "four", "five", "six"]
        text = "one two \u202e" + " ".join(words) + " and " + "A" * 80
        page.goto(f"{srv.url}/s/store/fire?{urlencode({'text': text})}")
        spans = page.eval_on_selector_all(".firetoks .tok", "els => els.map(e => {const b = e.getBoundingClientRect(); "
                                                            "return [e.textContent, Math.round(b.top), b.left];})")
        assert spans, page.content()[-2000:]  # e.g. an error page
        first = next(i for i, (t, _, _) in enumerate(spans) if "\u202e" in t or "RLO" in t) + 1
        last = next(i for i, (t, _, _) in enumerate(spans) if "A" in t)
        after = [(top, left, t) for t, top, left in spans[first:last] if t.strip()]
        assert len(after) >= len(words) and after == sorted(after), after  # (line, x): reading order
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        # the playground writes the prompt and both continuations itself (steer.js): drawn as the server draws
        page.goto(f"{srv.url}/s/store/steer?latent=2")
        page.locator("#edits .fstrength").fill("1")
        prompt = "a\u202eb \U0001F468\u200d\U0001F469 \u200d\x1b[2J\x85\u2066\x07"
        page.locator("#prompt").fill(prompt)
        page.locator("#max-new").fill("6")
        page.locator("#generate").click()
        page.wait_for_selector("#compare:not([hidden])")
        assert page.locator("#out-prompt-a").text_content() == readable(prompt)
        for out in ("#out-default", "#out-steered"):
            assert _raw(page.locator(out).text_content()) == [], out
    finally:
        ctx.close()
        srv.stop()


def _readable_corpus() -> list[str]:
    """Strings to draw: the hostile document and its lines, the real-script texts, and every control,
    format and separator character of Python's Unicode database alone, between letters, between
    spaces, in Hebrew and after a flag's black flag."""
    chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Cf", "Zl", "Zp", "Zs")]
    corpus = [HOSTILE_DOC, *HOSTILE_DOC.splitlines(), *(t for t, _ in WRITTEN.values()), "lone \ud800 x\udfff"]
    for c in chars:
        corpus += [c, f"a{c}b", f" {c} ", f"\u05d0{c}1", f"\U0001F3F4\U000E0067{c}\U000E007F", f"x\r{c}\r\n"]
    return corpus


def test_text_drawn_twice_reads_as_drawn_once():
    """Some text is drawn twice: a token view (`visible`) and a label in the steer page's data-label
    are drawn again by the pages' `finalize`, and readable.js draws that label once more. A second
    drawing changes nothing (no "⟨⟨RLO⟩⟩", no mark kept once and drawn the next time)."""
    from features.drawing import readable
    from features.tokentext import visible

    for text in _readable_corpus():
        once = readable(text)
        assert readable(once) == once, (text, once)
        assert readable(visible(text)) == visible(text), text


@pytest.mark.browser
def test_the_playgrounds_readable_js_draws_every_string_as_readable_does(browser):
    """readable.js (what steer.js draws the model's text with) and features.drawing.readable (every
    other page's text, the CLI) on the same strings, with the rule the steer page hands the script:
    the same result for every one."""
    from features.drawing import readable
    from saesteer.web.assets import STATIC_DIR
    from saesteer.web.pages import READABLE_RULE

    corpus = _readable_corpus()
    page = browser.new_page()
    try:
        page.add_script_tag(content=(STATIC_DIR / "readable.js").read_text(encoding="utf-8"))
        drawn = json.loads(page.evaluate(
            "([rule, corpus]) => { const readable = window.saesteerReadable(JSON.parse(rule));"
            " return JSON.stringify(JSON.parse(corpus).map(readable)); }",
            [json.dumps(READABLE_RULE), json.dumps(corpus)]))
    finally:
        page.close()
    differ = [(t[:60], js[:60], readable(t)[:60]) for t, js in zip(corpus, drawn) if js != readable(t)]
    assert len(drawn) == len(corpus) and not differ, differ[:5]


def test_search_finds_the_same_latents_for_nfc_and_nfd_queries_and_draws_control_queries(hostile):
    """"café" typed precomposed or decomposed finds the same latents (page and API); a query of
    control characters is echoed drawn, kept raw in the search box."""
    with pytest.MonkeyPatch.context() as mp:
        _, web = captured_serve(mp, "--store", hostile)
    nfc, nfd = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    hits = [[h["latent"] for h in web.get("/api/stores/store/search", params={"q": q}).json()["items"]]
            for q in (nfc, nfd)]
    assert hits[0] and hits[0] == hits[1]
    page = web.get("/s/store/search", params={"q": "ERROR\u202e\x1b[2J"}).text
    assert "for \u201cERROR\u27e8RLO\u27e9\u241b[2J\u201d" in page
    assert 'value="ERROR\u202e\x1b[2J"' in page and _raw(page.replace('value="ERROR\u202e\x1b[2J"', "")) == []


# ---------------------------------------------------------------------------------------------
# 3. exports and the judge


def test_neuronpedia_export_of_text_with_nel_and_line_separators_passes_its_check(hostile, tmp_path):
    """The export's rows hold the examples' tokens (NEL, U+2028 among them): each file is one JSON
    object a line for any line reader (split at "\\n" or str.splitlines) and the CLI's check passes;
    the HTML export draws the marks and keeps the HTML inert."""
    found = _latents_whose_examples_hold(hostile, "\x85\u2028")
    latents = ",".join(str(v) for v in sorted({v for v in found.values() if v is not None}))
    assert latents, found
    r = saesteer("features", "export", hostile, tmp_path / "np", "--format", "neuronpedia", "--latents", latents)
    assert r.rc == 0 and "(checked)" in r.out, r.text
    acts = next((tmp_path / "np").rglob("activations/*.jsonl.gz"))
    text = gzip.decompress(acts.read_bytes()).decode("utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == text.count("\n") and any(ch in "".join(r["tokens"]) for r in rows for ch in "\x85\u2028")
    saesteer("features", "export", hostile, tmp_path / "html", "--latents", latents, "--no-progress").ok()
    for page in (tmp_path / "html").rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        assert _raw(html) == [] and "<img src=x" not in html, page.name


def test_the_html_exports_logit_chart_draws_tokens_as_the_web_apps_logit_lists(hostile):
    """A latent promoting "\\n", a tab and a lone ZWJ: the web app's feature page lists them as ↵, ⇥
    and ⟨ZWJ⟩ (token views); the HTML export's chart labelled the first two "\\n (198)" and "\\t (197)",
    blank labels: its tokens were drawn by the running-text rule, meant for labels."""
    import dataclasses

    from features import FeatureStore
    from features.export import feature_page
    from features.records import LogitEffects, TokenEffect
    from features.tokentext import visible

    effects = [TokenEffect(198, "\n", 2.0), TokenEffect(197, "\t", 1.5), TokenEffect(5, "\u200d", 1.0)]
    with FeatureStore.open(hostile) as store:
        rec = dataclasses.replace(store.feature(0), logits=LogitEffects(promoted=effects, suppressed=[]))
        page = feature_page(store, rec)
    data = json.loads(re.search(r"<script>var D=(.*?);if\(window\.Plotly\)", page, re.S).group(1))
    assert data["logits"]["y"] == [f"{visible(t.token)} ({t.token_id})" for t in effects][::-1]
    assert data["logits"]["y"][-1] == "\u21b5 (198)"


def test_the_judge_prompt_of_the_store_carries_no_control_or_bidi_character(hostile):
    """What the judge reads of every example (autointerp.prompts.render_tokens): no control, bidi or
    invisible character but the ZWJ inside emoji, and no << >> but the marks'."""
    from autointerp.prompts import MARK_CLOSE, MARK_OPEN, render_tokens
    from features import FeatureStore

    with FeatureStore.open(hostile) as store:
        latent = _latents_whose_examples_hold(hostile, ESC, kind="top")[ESC]
        rec = store.feature(latent)
    lines = [render_tokens(e.tokens, [e.centre]) for e in rec.top_examples + rec.quantile_examples]
    assert lines and all("\n" not in line for line in lines)
    for line in lines:
        assert _raw(line.replace("\u200d", "")) == [], line
        assert line.count(MARK_OPEN) == line.count(MARK_CLOSE) <= 1, line


def test_the_judge_prompt_shows_a_lone_carriage_return_as_a_line_break(hostile):
    """"CR alone\\rover written line": the judge read "aloneover" (the CR was dropped, two words made
    one) where the CLI and the pages show a line break. It reads "alone⏎over" now; a CRLF, whole or
    cut between two tokens, is still one ⏎, in the explain prompt and the simulation prompt alike."""
    from autointerp.prompts import LINE_BREAK_SIGN, render_tokens
    from autointerp.simulation import _numbered
    from features import FeatureStore

    with sqlite3.connect(hostile) as con:
        latent = con.execute("SELECT latent FROM examples WHERE text LIKE ? LIMIT 1", ("%alone\rover%",)).fetchone()[0]
    with FeatureStore.open(hostile) as store:
        rec = store.feature(latent)
    lines = [render_tokens(e.tokens) for e in rec.top_examples + rec.quantile_examples if "alone\rover" in "".join(e.tokens)]
    assert lines and all(f"alone{LINE_BREAK_SIGN}over" in line and "aloneover" not in line for line in lines), lines
    assert render_tokens(["a", "\r", "\n", "b"], marked=[1]) == f"a<<{LINE_BREAK_SIGN}>>b"  # the mark moves to the LF
    assert render_tokens(["a\r\nb", "\rc"]) == f"a{LINE_BREAK_SIGN}b{LINE_BREAK_SIGN}c"
    cut = SimpleNamespace(tokens=["a", "\r", "\n", "b\rc"])  # _numbered reads an example's tokens
    assert _numbered(cut) == f"a[0][1]{LINE_BREAK_SIGN}[2]b{LINE_BREAK_SIGN}c[3]"


def test_neuronpedias_importer_reads_a_label_that_spells_a_nul_escape(hostile, tmp_path):
    """Neuronpedia's importer (apps/webapp/lib/db/import.ts) replaces every `\\u0000` of a file's text
    with a space before parsing it. A label quoting code's "\\u0000" was written `\\\\u0000`, which that
    left as `\\ `: the batch no longer parsed. Here the export is read as that importer reads it:
    every row parses, the label's text intact, a real NUL a space."""
    import shutil

    from features import FeatureStore
    from features.records import LabelProvenance

    db = tmp_path / "store.db"
    shutil.copy(hostile, db)
    label = 'escapes in JSON strings: "\\u0000", "\\\\u0000", NUL\x00 and "\\n"'
    with sqlite3.connect(db) as con:
        latent = con.execute("SELECT latent FROM labels ORDER BY latent LIMIT 1").fetchone()[0]
    with FeatureStore.open(db, readonly=False) as store:
        store.write_label(latent, label, provenance=LabelProvenance("a reviewer", "human", "none"))
    saesteer("features", "export", db, tmp_path / "np", "--format", "neuronpedia", "--latents", latent).ok()
    text = gzip.decompress(next((tmp_path / "np").rglob("explanations/*.jsonl.gz")).read_bytes()).decode("utf-8")
    as_imported = [json.loads(line) for line in text.replace("\\u0000", " ").strip().split("\n")]
    assert [r["description"] for r in as_imported] == [label.replace("\x00", " ")]
    assert [json.loads(line)["description"] for line in text.strip().split("\n")] == [label]


def test_a_lone_surrogate_in_a_json_dataset_is_refused_naming_the_file(real_models, tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"text": "lone \\ud800 surrogate"}\n' * 4, encoding="utf-8")
    r = saesteer("cache", "--model", real_models.path("gpt2"), "--dataset", data, "--context-length", 32,
                 "--out", tmp_path / "cache", "--no-progress").no_traceback()
    assert r.rc != 0 and str(data) in r.err and "surrogate" in r.err, r.text
