"""Searching a store of real multilingual text as it is typed: a query typed composed (NFC) finds text
stored decomposed (NFD, as macOS writes it) and the reverse, "STRASSE" finds "Straße", half-width
Latin finds full-width and the reverse, "istanbul" finds "İstanbul"; and a hit's marked snippet
holds the stored characters that matched (an accent's combining mark, the "ß"), through the store,
the CLI and the web API. The store is built over a Llama-3 style byte-level BPE trained here."""

from __future__ import annotations

import sqlite3
import unicodedata

import pytest

from features import FeatureStore
from features.store.folding import fold, folded_spans
from helpers.browser import browser  # noqa: F401 (the Chromium fixture)

NFD = "NFD"


def _nfd(text: str) -> str:
    return unicodedata.normalize(NFD, text)


TEXTS = [
    _nfd("ファイル名はデータ.csvです。"),  # a Japanese file name as macOS stores it: デ is テ + U+3099
    "ガイドを読んでください。",  # composed
    "ベルリンのFriedrichstraße駅で降ります。",
    "Wir wohnen in der Straße am Fluss.",
    "セール中 ＳＡＬＥ 50% OFF",  # full-width Latin as a Japanese input method writes it
    "ＡＰＩキーはＵＲＬに入れない。",
    "İstanbul → Ankara, 450 km.",
    _nfd("Le café du coin ouvre à sept heures."),
    "def parse(self): return self.assertEqual(x, 1)",
    "for k, v in d.items(): print(k, v)  # → sorted",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from helpers.feature_fixtures import build_text_store
    from helpers.real_models import build_family_tokenizer

    tok = build_family_tokenizer("llama3", TEXTS * 3, vocab_size=700)  # whole CJK characters, mostly
    path = tmp_path_factory.mktemp("search-folding") / "s.db"
    build_text_store(path, tok, TEXTS * 12)
    with FeatureStore.open(path) as s:
        yield s


def _holding(store, stored: str) -> set[int]:
    """The latents whose examples hold `stored` exactly as written (the truth a search is checked on)."""
    with sqlite3.connect(store.path) as db:
        return {r[0] for r in db.execute("SELECT rowid FROM feature_fts WHERE instr(examples, ?) > 0", (stored,))}


# (query as typed, the stored characters it must find and mark); the first five are looked for as
# substrings (kana, a symbol), the last three through the word index
CASES = [
    ("データ", _nfd("データ")),  # typed composed, stored decomposed
    (_nfd("ガイド"), "ガイド"),  # pasted decomposed, stored composed
    ("friedrichstrasse駅", "Friedrichstraße駅"),  # full case folding: ß is ss
    ("APIキー", "ＡＰＩキー"),  # half-width typed, full-width stored
    ("istanbul →", "İstanbul →"),  # İ folds to i; "→" sends it past the word index
    ("STRASSE", "Straße"),
    ("sale", "ＳＡＬＥ"),
    ("café", _nfd("café")),
]


@pytest.mark.parametrize("query,stored", CASES, ids=[c[1] for c in CASES])
def test_a_query_finds_the_stored_form_and_marks_its_characters(store, query, stored):
    want = _holding(store, stored)
    assert want, f"the build put {stored!r} in no example window: the test says nothing"
    hits = store.search(query, limit=48)
    assert want <= {h.latent for h in hits}, (query, hits)
    for h in hits:
        if h.latent in want:
            marked = [t for t, m in h.parts if m]
            assert marked and all(t in h.text for t in marked)
            assert any(fold(t) in fold(stored) or fold(stored) in fold(t) for t in marked), (query, h.parts)
    if "→" in query or not any(ch.isascii() for ch in query):  # the substring search marks the stored form itself
        marked = {t for h in hits for t, m in h.parts if m}
        assert set(stored.split()) <= marked, (stored, marked)


def test_the_cli_and_the_web_api_find_decomposed_text_and_mark_it_whole(store):
    from helpers.real_cli import saesteer
    from helpers.web_app import PORT, client
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    want = _holding(store, _nfd("データ"))
    r = saesteer("features", "search", store.path, "データ", "--limit", "48").ok()
    assert "no latent matches" not in r.out and str(min(want)) in r.out, r.out
    r = saesteer("features", "search", store.path, "STRASSE").ok()
    assert "no latent matches" not in r.out and "Straße" in r.out, r.out

    entry = StoreEntry("s", StoreCatalog(FeatureStore.open(store.path), name="s"))
    c = client(create_app([entry], config=ServeConfig(port=PORT), limits=Limits()))
    items = c.get("/api/stores/s/search", params={"q": "データ", "limit": 48}).json()["items"]
    assert want <= {i["latent"] for i in items}
    marked = {p["text"] for i in items for p in i["snippet_parts"] if p["match"]}
    assert marked == {_nfd("データ")}, marked  # the accent's mark inside the highlight, not cut off it
    items = c.get("/api/stores/s/search", params={"q": "friedrichstrasse駅"}).json()["items"]
    assert {p["text"] for i in items for p in i["snippet_parts"] if p["match"]} == {"Friedrichstraße駅"}


def test_a_long_mixed_query_is_searched_not_refused(store):
    """A line of code with a symbol past ASCII has more than 8 parts (the cap was 8): it finds the
    latents whose examples hold every part."""
    q = "for k, v in d.items(): print(k, v) # →"
    parts = q.split()
    assert len(parts) > 8
    with sqlite3.connect(store.path) as db:
        want = {r for r, ex in db.execute("SELECT rowid, examples FROM feature_fts") if all(p in ex for p in parts)}
    assert want, "no latent's examples hold every part: the test says nothing"
    assert {h.latent for h in store.search(q, limit=48)} == want


def test_the_fold_and_its_pieces():
    assert fold("STRASSE") == fold("Straße") == fold("STRAẞE") == "strasse"
    assert fold("ΟΔΟΣ") == fold("οδος") == fold("οδοσ")  # a final sigma is a sigma
    assert fold(_nfd("café")) == fold("café") and fold("ＡＢＣ") == "abc" == fold("ℂ".replace("ℂ", "ABC"))
    assert fold("ℂ") == "c" and fold("İstanbul") == "istanbul" and fold("ısparta") != fold("isparta")
    assert fold("ﾃﾞｰﾀ") == fold("データ") == fold(_nfd("データ"))  # half-width kana and its voicing mark
    for text in (_nfd("Le café crème"), "Straße", "ｶﾞｲﾄﾞ", _nfd("한국어"), "ﬁne", "x²", "İ"):
        spans = folded_spans(text)
        assert "".join(fold(text[a:b]) for a, b, _ in spans) == fold(text)
        assert [e for _, _, e in spans] == [len(fold(text[:b])) for _, b, _ in spans]
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        assert all(spans[k][1] == spans[k + 1][0] for k in range(len(spans) - 1))


@pytest.mark.browser
def test_the_search_page_highlights_the_stored_characters_in_chromium(store, browser):  # noqa: F811
    """The search page in Chromium: "データ" typed composed marks the decomposed stored text whole (the
    voicing mark inside the <mark>, not left after it as a lone mark on the next character)."""
    from helpers.browser import DESKTOP, Page
    from helpers.web_app import ServerThread, free_port
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    port = free_port()
    entry = StoreEntry("s", StoreCatalog(FeatureStore.open(store.path), name="s"))
    srv = ServerThread(create_app([entry], config=ServeConfig(port=port), limits=Limits()), port).start()
    try:
        with Page(browser, srv.url, DESKTOP) as p:
            page = p.goto("/s/s/search?q=%E3%83%87%E3%83%BC%E3%82%BF")  # データ, composed
            marks = page.eval_on_selector_all(".snippet mark", "els => els.map(e => e.textContent)")
            assert marks and set(marks) == {_nfd("データ")}, marks
            p.check_clean()
    finally:
        srv.stop()


def test_rows_passed_over_unfolded_could_not_have_matched(store, monkeypatch):
    """The fast path (a row without any of the query's telling characters is not folded) finds what
    folding every row finds; and a folded text's every character has one of its sources in the text."""
    import random

    import features.store.substring as substring
    from features.store.folding import sources

    queries = [q for q, _ in CASES] + ["無い", "テキスト", "→", "zebra →", "ﾃﾞｰﾀ", _nfd("ｶﾞｲﾄﾞ"), "ＳＴＲＡẞＥ →"]
    fast = {q: store.search(q, limit=48) for q in queries}
    monkeypatch.setattr(substring, "_telling_characters", lambda parts: None)
    assert {q: store.search(q, limit=48) for q in queries} == fast

    pool = list("aAeEiIİıßẞsSſテデﾃﾞ\u3099\u0301\u0307éÉＡＢｓ가각각ﬁ²ΣσςΟΔ→🐳 ") + [_nfd("é"), _nfd("각")]
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 8)))
        assert all(sources(ch) & set(text) for ch in fold(text)), text


def test_the_list_pages_label_filter_folds_as_search_does(store, tmp_path):
    """The feature list's label filter (`?label=`, FeatureFilter.label_contains) folded only ASCII
    letters (SQL LIKE): "STRASSE" did not find a latent labelled "Straße", "ΟΔΟΣ" not "οδος",
    "api" not "ＡＰＩ キー", and "café" typed composed not a label stored decomposed."""
    from features.records import LabelProvenance
    from helpers.web_app import PORT, client
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    path = tmp_path / "labelled.db"
    path.write_bytes(store.path.read_bytes())
    labels = {1: "Straße names", 2: "οδος (Greek road)", 3: "ＡＰＩ キー", 4: _nfd("café menus"), 5: "İstanbul"}
    prov = LabelProvenance(judge_model="gpt-test", judge_kind="openai", prompt_version="v1", examples_used=[1],
                           params={})
    with FeatureStore.open(path, readonly=False) as s:
        for latent, label in labels.items():
            s.write_label(latent, label, provenance=prov)
    entry = StoreEntry("s", StoreCatalog(FeatureStore.open(path), name="s"))
    c = client(create_app([entry], config=ServeConfig(port=PORT), limits=Limits()))

    def found(query: str) -> set[int]:
        return {i["latent"] for i in c.get("/api/stores/s/features", params={"label": query}).json()["items"]}

    for query, latent in [("STRASSE", 1), ("straße", 1), ("ΟΔΟΣ", 2), ("api", 3), ("café", 4), ("istanbul", 5),
                          ("names", 1), ("100%", None)]:
        assert found(query) == ({latent} if latent else set()), query
    with FeatureStore.open(path) as s:
        assert s.count_features({"label_contains": "Ａｐｉ"}) == 1


def test_substring_search_answers_what_folding_every_row_answers(store, tmp_path):
    """The search (labels, then examples for the latents holding every part, passing over rows that
    lack the rarest part's characters; only where none holds every part, those holding any) against
    an eager reference that folds every label and every example text, on queries of several parts
    found in some rows, in every row, in labels only, or nowhere."""
    from features.records import LabelProvenance
    from features.store.substring import query_parts

    path = tmp_path / "labelled.db"
    path.write_bytes(store.path.read_bytes())
    prov = LabelProvenance(judge_model="gpt-test", judge_kind="openai", prompt_version="v1", examples_used=[1],
                           params={})
    with sqlite3.connect(path) as db:  # a latent whose examples hold "の": its label holds the query's rarest part
        bolt = min(r for r, ex in db.execute("SELECT rowid, examples FROM feature_fts") if "の" in ex and r > 8)
    with FeatureStore.open(path, readonly=False) as s:
        for latent, label in {0: "テキスト and arrows →", 3: "STRASSE →", 7: "ＡＰＩ", 8: "nothing", bolt: "↯"}.items():
            s.write_label(latent, label, provenance=prov)
    with sqlite3.connect(path) as db:
        rows = [(r, fold(lab or ""), fold(ex or "")) for r, lab, ex in db.execute(
            "SELECT rowid, label, examples FROM feature_fts ORDER BY rowid")]

    def reference(query: str, limit: int) -> list[int]:
        parts = query_parts(query)
        label_all = [r for r, lab, _ in rows if all(p in lab for p in parts)]
        either_all = [r for r, lab, ex in rows if r not in label_all and all(p in lab or p in ex for p in parts)]
        if label_all or either_all:
            return (label_all[:limit] + either_all)[:limit]
        label_any = [r for r, lab, _ in rows if any(p in lab for p in parts)]
        return (label_any + [r for r, lab, ex in rows if r not in label_any and any(p in ex for p in parts)])[:limit]

    queries = ["テキスト 無い", "def →", "straße →", "→ zzqq", "api キー", "for k, v in d.items(): print(k, v) # →",
               "ファイル 駅", "テキスト →", "→", "無い 無し", "ＳＴＲＡＳＳＥ →", "e →", "↯ の",
               "⇶ ガイド", "⇶ def"]
    with FeatureStore.open(path) as s:
        for q in queries:
            for limit in (1, 3, 48):
                assert [h.latent for h in s.search(q, limit=limit)] == reference(q, limit), (q, limit)
    assert all(reference(q, 48) for q in queries if q != "無い 無し"), "a query finds nothing: it tests nothing"
    assert not any("zzqq" in lab or "zzqq" in ex for _, lab, ex in rows)  # "→ zzqq": the "any part" answer


def test_a_word_the_query_repeats_is_looked_for_once(store):
    """FTS5 ranks every match once per phrase of the query: "the the the ..." (50 times, a 200-character
    web query) took 2.2 s of CPU at 4k latents. A word repeated, in any case or width, is one group."""
    from features.store.queries import _fts_query

    assert _fts_query("the The THE ｔｈｅ ocean " * 10).count(" AND ") == 1
    assert _fts_query("Straße STRASSE strasse", "OR").count(") OR (") == 0
    assert {h.latent for h in store.search("STRASSE Straße " * 20, limit=48)} == \
        {h.latent for h in store.search("STRASSE", limit=48)} != set()


def test_a_raw_query_fts5_rejects_says_how_to_write_one_and_the_cli_reads_operators_as_words(store):
    """`search(raw=True)` hands the text to FTS5: a query it rejects ("self AND", an unbalanced
    quote) is refused in one line naming the syntax and how to fix it. The CLI never searches raw:
    the same text is words there, found without an error."""
    from helpers.real_cli import saesteer

    for bad in ("self AND", 'parse "self', "NEAR(self"):
        with pytest.raises(ValueError) as e:
            store.search(bad, raw=True)
        msg = str(e.value)
        assert msg.startswith(f"bad search query {bad!r}") and "\n" not in msg, msg
        assert "quote a word that is an operator" in msg and "without raw=True" in msg, msg
    r = saesteer("features", "search", store.path, "self AND").ok()
    assert "no latent matches" not in r.out and "bad search query" not in r.out + r.err, r.out + r.err
