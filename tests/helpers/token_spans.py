"""The token spans the web pages and the HTML export draw, read back as a browser's parser reads them.

    from helpers.token_spans import tok_spans, fire_row
    tok_spans(html)      # [[class, title, text], ...] of every `<span class="tok ...">`
    fire_row(result)     # the same, of the fire page's token row for a `saesteer.web.schemas.FireResult`
"""

from __future__ import annotations

from html.parser import HTMLParser
from types import SimpleNamespace


class _Spans(HTMLParser):
    """(class, title, text) of every `.tok` span."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.spans: list[list[str]] = []
        self._in = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._in = tag == "span" and "tok" in (a.get("class") or "").split()
        if self._in:
            self.spans.append([a["class"], a.get("title") or "", ""])

    def handle_endtag(self, tag):
        self._in = False

    def handle_data(self, data):
        if self._in:
            self.spans[-1][2] += data


def tok_spans(html: str) -> list[list[str]]:
    p = _Spans()
    p.feed(html)
    return p.spans


def fire_row(result) -> list[list[str]]:
    """The spans of fire.html's token row (`p.toks.firetoks`), rendered over a stand-in store."""
    from saesteer.web.config import Limits
    from saesteer.web.pages import make_templates

    store = SimpleNamespace(id="s", info=SimpleNamespace(name="s", hook=None, model=None, d_sae=8))
    page = make_templates().get_template("fire.html").render(
        store=store, stores=[store], nav="fire", asset=str, plotly_url="", limits=Limits(), qs=lambda **k: "",
        text="", note=None, result=result)
    return tok_spans(page.split('class="toks firetoks">', 1)[1].split("</p>", 1)[0])
