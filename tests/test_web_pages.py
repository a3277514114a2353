"""Server-rendered pages: they render, link up, escape everything from the data, and fail politely."""

from __future__ import annotations

import html
from html.parser import HTMLParser

import pytest

from helpers.web_app import client, make_app, shared_store

H = {"accept": "text/html"}


@pytest.fixture(scope="module")
def ws():
    return shared_store()


@pytest.fixture(scope="module")
def c(ws):
    with client(make_app(second_store=True)) as cl:
        yield cl


def _page(c, url, status=200):
    r = c.get(url, headers=H)
    assert r.status_code == status, (url, r.text[:500])
    assert r.headers["content-type"].startswith("text/html")
    return r.text


class _Elements(HTMLParser):
    """Collects (tag, attrs, text inside) of every element, as a browser's parser would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.script_text.append(data)


def test_no_inline_script_or_style_anywhere(c, ws):
    for url in ("/", "/s/tiny", "/s/tiny/search?q=ocean", f"/s/tiny/f/{ws.xss_latent}", "/s/tiny/steer?latent=1",
                "/s/tiny/fire", "/s/tiny/f/9999", "/s/tiny?label=script"):
        p = _Elements()
        p.feed(c.get(url, headers=H).text)
        assert p.script_text == [], url
        tags = [t for t, _ in p.elements]
        assert "style" not in tags and "img" not in tags, url
        for tag, attrs in p.elements:
            assert "style" not in attrs, (url, tag)
            assert not any(a.startswith("on") for a in attrs), (url, tag, attrs)
            if tag == "script":
                assert attrs["src"].startswith("/static/"), url


def test_index_lists_stores_and_single_store_redirects(c):
    text = _page(c, "/")
    assert 'href="/s/tiny"' in text and 'href="/s/nomodel"' in text
    with client(make_app()) as one:
        r = one.get("/", headers=H, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/s/tiny"


def test_feature_list_page(c, ws):
    text = _page(c, "/s/tiny")
    assert text.count('class="fid" href="/s/tiny/f/') == 48  # one page holds the 48 features
    assert html.escape("ocean words") in text
    text = _page(c, "/s/tiny?health=dead&sort=latent")
    assert text.count('class="fid" href="/s/tiny/f/') == 2 and "filtered" in text
    text = _page(c, "/s/tiny?limit=10&offset=10")
    assert "11–20 of 48" in text and 'rel="prev"' in text and 'rel="next"' in text
    assert 'href="/s/tiny?offset=20&amp;limit=10"' in text
    _page(c, "/s/tiny?min_freq=&max_freq=&label=&health=&level=&labelled=&min_score=")  # an untouched form


def test_xss_label_is_escaped_everywhere(c, ws):
    i = ws.xss_latent
    for url in (f"/s/tiny/f/{i}", "/s/tiny", "/s/tiny/search?q=script", f"/s/tiny/steer?latent={i}", "/s/tiny?label=script"):
        text = _page(c, url)
        assert "<script>window.__xss" not in text and "<img src=x" not in text, url
        assert "&lt;script&gt;window.__xss=1;alert(&#34;xss&#34;)&lt;/script&gt;" in text, url


def test_feature_page_sections(c, ws):
    i = next(iter(ws.labels))
    text = _page(c, f"/s/tiny/f/{i}")
    for piece in ("Top activations", "Activation histogram", "Logit effects", "Nearest by decoder direction",
                  "Label and scores", "Across the activation range", 'data-chart=\'{"counts"', "test-judge",
                  f'href="/s/tiny/steer?latent={i}"', 'class="tok s10'):
        assert piece in text, piece
    assert "/static/vendor/plotly-" in text and "/static/charts.js" in text


def test_matryoshka_family_on_feature_page(c):
    rows = c.get("/api/stores/tiny/features", params={"limit": 100}).json()["items"]
    child = next(r for r in rows if r["parent"] is not None)
    text = _page(c, f"/s/tiny/f/{child['latent']}")
    assert "Matryoshka family" in text and f'href="/s/tiny/f/{child["parent"]}"' in text
    text = _page(c, f"/s/tiny/f/{child['parent']}")
    assert f'href="/s/tiny/f/{child["latent"]}"' in text


def test_search_page(c, ws):
    text = _page(c, "/s/tiny/search?q=ocean")
    ocean = next(i for i, t in ws.labels.items() if "ocean" in t)
    assert f'href="/s/tiny/f/{ocean}"' in text and "1 match" in text
    assert "No feature label or example matches" in _page(c, "/s/tiny/search?q=zebra")
    assert "<mark>whale</mark>" in _page(c, "/s/tiny/search?q=whale")  # matched in example text
    text = _page(c, "/s/tiny/search?q=%2312")
    assert 'href="/s/tiny/f/12"' in text
    _page(c, "/s/tiny/search")


def test_steer_page_preselects_features(c, ws):
    text = _page(c, f"/s/tiny/steer?latent=3&latent={ws.xss_latent}&latent=3&latent=999")
    assert text.count('class="edit"') == 2  # duplicates and unknown ids dropped
    assert 'data-latent="3"' in text
    assert "Generate" in text and "/static/steer.js" in text
    ocean = next(i for i, t in ws.labels.items() if "ocean" in t)
    assert f'data-latent="{ocean}" data-label="ocean words" data-strength="3.0"' in _page(c, f"/s/tiny/steer?latent={ocean}")
    assert "3× max" in _page(c, f"/s/tiny/f/{ocean}")
    text = _page(c, "/s/nomodel/steer")
    assert "browse-only" in text and "the server runs no model" in text and "disabled" in text


def test_steer_page_offers_the_stores_served_over_its_model(ws):
    """A playground row may edit the SAE of any store the API serves over the page's model (its
    "sae" rule, `ServedModel.peers`): not a browse-only store, nor one over another model object.
    Store names reach the page as escaped JSON (steer.js writes them with textContent)."""
    import copy
    import json

    from saesteer.web import Limits, ServeConfig, create_app

    from helpers.web_app import PORT, make_entry
    from helpers.web_store import XSS_LABEL

    limits = Limits()
    entries = [make_entry(ws, "tiny", limits=limits), make_entry(ws, "beside", limits=limits, name=XSS_LABEL),
               make_entry(ws, "other", limits=limits, name="other model", model=copy.deepcopy(ws.model)),
               make_entry(ws, "nomodel", with_model=False)]
    with client(create_app(entries, config=ServeConfig(port=PORT), limits=limits)) as cl:
        forms = {sid: next(a for t, a in _parsed(_page(cl, f"/s/{sid}/steer")) if a.get("id") == "steer-form")
                 for sid in ("tiny", "beside", "other", "nomodel")}
        text = _page(cl, "/s/tiny/steer")
    offered = {sid: [(s["id"], s["name"]) for s in json.loads(f["data-stores"])] for sid, f in forms.items()}
    assert offered == {"tiny": [("tiny", "tiny"), ("beside", XSS_LABEL)], "beside": [("beside", XSS_LABEL), ("tiny", "tiny")],
                       "other": [("other", "other model")], "nomodel": [("nomodel", "nomodel")]}
    assert XSS_LABEL not in text and "<img" not in text  # the name only as escaped JSON
    assert "SAE · feature" in text  # the rows' column says they pick an SAE; not with one store:
    with client(make_app()) as one:
        assert "SAE · feature" not in _page(one, "/s/tiny/steer")


def _parsed(text: str) -> list[tuple[str, dict]]:
    p = _Elements()
    p.feed(text)
    return p.elements


def test_fire_page_without_model(c):
    text = _page(c, "/s/nomodel/fire?text=the+sea")
    assert "browse-only" in text and "the server runs no model" in text


@pytest.mark.parametrize(
    "url,status,words",
    [
        ("/s/nope", 404, "no store"),
        ("/s/tiny/f/48", 404, "latent 48 is not in store"),
        ("/s/tiny/f/-3", 422, "latent"),
        ("/s/tiny/f/x", 422, "latent"),
        ("/s/tiny?limit=5000", 422, "limit"),
        ("/s/tiny?health=<b>x</b>", 422, "health"),
        ("/s/tiny/search?q=" + "a" * 300, 422, "at most"),
        ("/s/tiny/steer?latent=abc", 422, "f"),
        ("/nowhere", 404, "Not Found"),
    ],
)
def test_error_pages_are_html_4xx(c, url, status, words):
    text = _page(c, url, status)
    assert words in text and "<b>x</b>" not in text
    assert 'class="card error"' in text
