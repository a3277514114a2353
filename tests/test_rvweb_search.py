"""Searching a store for what the word index cannot match: part of a run of Japanese text (the
index holds "日本語のテキスト" as one word) and an emoji (no word at all), in labels and in top
examples, through the store, the API and the search page; each query stops at the hits asked for."""

from __future__ import annotations

import pytest

from features import FeatureStore, LabelProvenance
from features.records import SNIPPET_CLOSE, SNIPPET_OPEN
from features.store.substring import beyond_words
from helpers.label_store import build_trigger_store

N = 16  # latents
PROV = LabelProvenance(judge_model="test-judge", judge_kind="human", prompt_version="rvweb-1")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Every latent's examples hold "日本語のテキスト" just before its trigger, latent 0's with "🐳" after it;
    latent 3 is labelled in Japanese."""
    plant = {i: ["日本語のテキスト", "🐳"] if i == 0 else ["日本語のテキスト"] for i in range(N)}
    path, _ = build_trigger_store(tmp_path_factory.mktemp("rvweb-search") / "t.db", n_latents=N, n_contexts=80,
                                  plant=plant, plant_rate=1.0)
    with FeatureStore.open(path, readonly=False) as s:
        s.write_label(3, "海の生き物 🐋 (Ocean)", provenance=PROV)
    with FeatureStore.open(path) as s:
        yield s


def test_part_of_a_japanese_run_and_an_emoji_are_found_in_the_examples(store):
    assert store.search("日本語のテキスト")  # the whole run: the word index found it already
    for q, latents in (("テキスト", {0, 1, 2, 3}), ("🐳", {0})):
        hits = store.search(q, limit=10)
        assert latents <= {h.latent for h in hits}, (q, hits)
        hit = next(h for h in hits if h.latent == 0)
        assert (q, True) in hit.parts, hit.snippet  # the snippet marks what was found
        assert SNIPPET_OPEN not in hit.snippet.replace(SNIPPET_OPEN + q + SNIPPET_CLOSE, "")


def test_a_label_holding_the_text_comes_first(store):
    for q in ("生き物", "🐋", "生き物 ocean"):  # ASCII letters in any case, as the word index has them
        hits = store.search(q, limit=10)
        assert hits and hits[0].latent == 3 and hits[0].label == "海の生き物 🐋 (Ocean)", (q, hits)
    assert store.search("生き物 zebra")[0].latent == 3  # any of the parts when none holds all
    assert store.search("猫") == [] and store.search("🦊") == []


def test_the_query_is_text_not_a_pattern(store):
    assert store.search("%") == [] or all("%" in h.snippet for h in store.search("%"))
    assert store.search("テ_スト") == [] and store.search("テ%ト") == []
    assert store.search("キ%t") == [] and store.search("キ_") == []  # LIKE (ASCII letters: any case) escapes them
    assert store.search("テキスト the")  # "the" follows the planted text: no "%" needed to find it


def test_which_queries_go_past_the_word_index():
    assert all(beyond_words(q) for q in ("日本", "テキスト", "ภาษาไทย", "🐳", "a → b", "->", "whale 🐳"))
    assert not any(beyond_words(q) for q in ("whale", "café naïve", "self._parse", "한국어", "", "  "))


def test_a_substring_search_stops_at_the_hits_asked_for(store):
    """One pass over the store's text at most, and less when enough latents match: every latent's
    examples hold "テキスト", so one hit of it costs less than a query that reads every latent's
    text and finds nothing (SQLite's virtual machine steps, counted: no clock)."""
    steps = [0]

    def count():
        steps[0] += 1
        return 0

    def cost(q: str, limit: int) -> tuple[int, int]:
        steps[0] = 0
        store._conn.set_progress_handler(count, 1)
        try:
            n = len(store.search(q, limit=limit))
        finally:
            store._conn.set_progress_handler(None, 1)
        return n, steps[0]

    (n_one, one), (n_none, every) = cost("テキスト", 1), cost("テキストは無い", 1)
    assert (n_one, n_none) == (1, 0) and one < every, (one, every)  # without LIMIT: a whole pass and more
    assert cost("テキスト", 1000)[0] == N


def test_the_web_search_finds_them_and_pages_them(tmp_path):
    from helpers.web_app import PORT, client, make_entry, shared_store
    from saesteer.web import Limits, ServeConfig, create_app

    import dataclasses
    import shutil

    shared = shared_store()  # labels are written into a copy: other modules read the shared store's labels
    ws = dataclasses.replace(shared, path=tmp_path / "store.db")
    shutil.copy(shared.path, ws.path)
    with FeatureStore.open(ws.path, readonly=False) as s:
        for i in range(3):
            s.write_label(i, f"海の生き物 {i} 🐋", provenance=PROV)
    c = client(create_app([make_entry(ws, "tiny")], config=ServeConfig(port=PORT), limits=Limits()))
    r = c.get("/api/stores/tiny/search?q=生き物&limit=2").json()
    assert [i["latent"] for i in r["items"]] == [0, 1] and (r["total"], r["total_exact"]) == (3, False)
    assert {"text": "生き物", "match": True} in r["items"][0]["snippet_parts"]
    r = c.get(f"/api/stores/tiny/search?q=生き物&limit=2&offset={r['next_offset']}").json()
    assert [i["latent"] for i in r["items"]] == [2] and (r["total"], r["total_exact"]) == (3, True)
    page = c.get("/s/tiny/search?q=%F0%9F%90%8B", headers={"accept": "text/html"}).text  # 🐋
    assert "3 matches" in page and "海の生き物 2 🐋" in page
    page = c.get("/s/tiny/search?q=%F0%9F%A6%8A", headers={"accept": "text/html"}).text  # 🦊: in no label or example
    assert "No feature label or example matches" in page


def test_the_cli_lists_the_substring_hits_with_their_counts(store):
    from helpers.real_cli import saesteer

    r = saesteer("features", "search", store.path, "生き物").ok()
    assert "海の生き物" in r.out and " 3 " in r.out and "5.00" in r.out, r.out  # latent 3, its label once: 5
    r = saesteer("features", "search", store.path, "🦊").ok()
    assert "no latent matches" in r.out


def test_a_query_of_more_parts_than_a_search_may_look_for_is_refused_everywhere(store):
    """Each part costs a find over every row's folded text when nothing matches: more than MAX_PARTS
    parts are refused, saying how many, by the store, the CLI (one line, no traceback), and the API and
    the search page of a server whose query limit lets that many through (422, not a 500); the
    default web limit (200 characters) holds fewer."""
    from features.store.substring import MAX_PARTS
    from helpers.real_cli import saesteer
    from helpers.web_app import PORT, client, make_entry, shared_store
    from saesteer.web import Limits, ServeConfig, create_app

    many = " ".join(chr(0x4E00 + 3000 + i) for i in range(MAX_PARTS + 1))  # distinct ideographs, found nowhere
    fewest = " ".join(many.split()[:MAX_PARTS])
    assert store.search(fewest) == []  # MAX_PARTS parts: searched
    with pytest.raises(ValueError, match=f"at most {MAX_PARTS} space-separated parts, got {MAX_PARTS + 1}"):
        store.search(many)
    r = saesteer("features", "search", store.path, many).no_traceback()
    assert r.rc == 2 and f"at most {MAX_PARTS} space-separated parts" in r.err and len(r.err.strip().splitlines()) <= 2
    c = client(create_app([make_entry(shared_store(), "tiny")], config=ServeConfig(port=PORT),
                          limits=Limits(max_query_chars=len(many))))
    r = c.get("/api/stores/tiny/search", params={"q": many})
    assert r.status_code == 422 and f"at most {MAX_PARTS}" in r.json()["detail"], r.text
    r = c.get("/s/tiny/search", params={"q": many}, headers={"accept": "text/html"})
    assert r.status_code == 422 and f"at most {MAX_PARTS}" in r.text, r.text[:500]


def test_a_negative_limit_is_refused_not_read_as_no_limit(store):
    """SQLite reads LIMIT -1 as no limit: `features search --limit -1` listed every latent matching."""
    from helpers.real_cli import saesteer

    for q in ("テキスト", "the"):  # the substring path and the word index's
        with pytest.raises(ValueError, match="limit must be >= 0, got -1"):
            store.search(q, limit=-1)
    r = saesteer("features", "search", store.path, "テキスト", "--limit", "-1").no_traceback()
    assert r.rc == 2 and "limit must be >= 0, got -1" in r.err, r.text


def test_a_search_with_more_hits_than_it_considers_says_so_on_its_last_page(store, monkeypatch):
    """A search considers SEARCH_CAP hits (1,000): the page reaching that cap (API offset 900, limit 100)
    asked for no hit past it, so with more matching it said `total` 1,000 exact, no next page. Here the
    cap is 5 and all 16 latents' examples hold "テキスト"."""
    from saesteer.web import store_source
    from saesteer.web.store_source import StoreCatalog

    monkeypatch.setattr(store_source, "SEARCH_CAP", 5)
    cat = StoreCatalog(store)
    first = cat.text_search("テキスト", 0, 3)
    assert (len(first.items), first.total, first.total_exact, first.next_offset) == (3, 4, False, 3)
    last = cat.text_search("テキスト", 3, 3)  # reaches the cap: hits 4 and 5 of 16
    assert (len(last.items), last.total, last.total_exact, last.next_offset) == (2, 6, False, None), last
    past = cat.text_search("テキスト", 5, 3)  # nothing past the cap is shown
    assert (past.items, past.total_exact, past.next_offset) == ([], False, None), past


def test_private_use_characters_in_the_text_show_as_themselves(tmp_path):
    """Nerd-font and Powerline icons are private-use characters (U+E000 a Pomicon, U+E0A0 the branch
    sign), as shell prompts and code comments hold them: a snippet through the API and the search page
    shows them as stored, with the match marked, whether the word index or the substring pass found it."""
    from helpers.web_app import client
    from saesteer.web import Limits, ServeConfig, StoreEntry, create_app
    from saesteer.web.store_source import StoreCatalog

    line = "\ue000 pomodoro \u2192 \ue0a0 branch"  # "\u2192" (→): no word, found by the substring pass
    path, _ = build_trigger_store(tmp_path / "icons.db", n_latents=4, n_contexts=40, plant={0: [line]},
                                  plant_rate=1.0)
    with FeatureStore.open(path, readonly=False) as s:
        s.write_label(1, "icons \ue000\ue001 tomato", provenance=PROV)
    app = create_app([StoreEntry("icons", StoreCatalog(FeatureStore.open(path), name="icons"))],
                     config=ServeConfig(port=8000), limits=Limits())
    with client(app) as c:
        for q, latent, shown in (("pomodoro", 0, "\ue000 pomodoro"), ("\ue0a0", 0, line), ("\u2192", 0, line),
                                 ("tomato", 1, "icons \ue000\ue001 tomato")):
            hit = next(h for h in c.get("/api/stores/icons/search", params={"q": q}).json()["items"]
                       if h["latent"] == latent)
            assert shown in hit["snippet"], (q, hit)  # the page's text: the snippet unmarked
            assert "".join(p["text"] for p in hit["snippet_parts"]) == hit["snippet"], (q, hit)
            assert [p["text"] for p in hit["snippet_parts"] if p["match"]][0] == q, (q, hit)
        page = c.get("/s/icons/search", params={"q": "\u2192"}).text  # the page draws snippet_parts
        assert "\ue000 pomodoro <mark>\u2192</mark> \ue0a0 branch" in page
