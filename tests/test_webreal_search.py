"""Search results paged as a researcher pages them: the count a page shows is never a number that
changes from page to page ("21 matches", then "41 matches" on page 2), and a search by meaning
with more hits than one page has a next page."""

from __future__ import annotations

import re

import pytest

from helpers.web_app import client, make_app


@pytest.fixture(scope="module")
def c():
    return client(make_app())


def _walk(c, q: str, limit: int) -> list[dict]:
    pages, offset = [], 0
    while offset is not None:
        r = c.get(f"/api/stores/tiny/search?q={q}&limit={limit}&offset={offset}")
        assert r.status_code == 200, r.text
        pages.append(r.json())
        offset = pages[-1]["next_offset"]
    return pages


def test_a_full_text_search_says_when_its_count_is_a_lower_bound(c):
    pages = _walk(c, "the", 5)  # a word of almost every example
    hits = [i["latent"] for p in pages for i in p["items"]]
    assert len(pages) > 2 and len(hits) == len(set(hits))
    first, last = pages[0], pages[-1]
    assert first["total"] == 6 and first["total_exact"] is False  # at least 6: it counted one page and one more
    assert last["total_exact"] is True and last["total"] == len(hits)
    # the page shows 20 a page
    assert len(hits) > 20
    html = c.get("/s/tiny/search?q=the", headers={"accept": "text/html"}).text
    assert "more than 20 matches" in html and re.search(r"1–20 of more than 20<", html), html[-3000:]
    assert not re.search(r">\s*21 matches", html)
    last = _walk(c, "the", 20)[-1]
    html = c.get(f"/s/tiny/search?q=the&offset={last['offset']}", headers={"accept": "text/html"}).text
    assert f"{len(hits)} matches" in html and f"of {len(hits)}<" in html


def test_a_search_by_meaning_pages_past_its_first_page(c, monkeypatch):
    """Semantic hits were asked for up to the page's end only, so the first page never had a next one."""
    import autointerp.semantic as semantic
    from saesteer.web.store_source import StoreCatalog

    class Hit:
        def __init__(self, latent):
            self.latent, self.similarity, self.output_score = latent, 0.9 - latent / 100, None

    def fake_search(store, emb, text, limit, min_similarity):
        return [Hit(i) for i in range(min(limit, 12))]  # 12 labels near the query

    monkeypatch.setattr(StoreCatalog, "query_embedder", lambda self: object())
    monkeypatch.setattr(semantic, "semantic_search", fake_search)
    pages = _walk(c, "sea", 5)
    assert [len(p["items"]) for p in pages] == [5, 5, 2]
    assert [(p["total"], p["total_exact"]) for p in pages] == [(6, False), (11, False), (12, True)]
