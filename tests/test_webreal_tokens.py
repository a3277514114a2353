"""Example windows of a real byte-level BPE drawn by the web pages: a character split over several
tokens (CJK, emoji, an NFD accent's combining mark, Arabic letters) is one span, so the page reads
as the text (no gaps inside CJK, accents on their letters, Arabic letters joined), and its
activation colour and the centre's underline land on the character the tokens spell."""

from __future__ import annotations

import unicodedata

from features.tokentext import character_groups, token_text, visible
from helpers.token_spans import fire_row, tok_spans

# NFD "naïve" (i + U+0308), CJK and an emoji (several byte tokens each), Arabic, a tab and a CRLF
TEXT = "日本語 " + unicodedata.normalize("NFD", "naïve") + " 🐳 العربية\tx\r\ny"


def _window():
    from helpers.text_tokenizers import byte_level_bpe

    tok = byte_level_bpe()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    return token_text(tok, ids).pieces


def _render(ex: dict) -> list[list[str]]:
    from saesteer.web.pages import make_templates

    return tok_spans(make_templates().from_string('{% from "_macros.html" import tokens %}{{ tokens(ex) }}').render(ex=ex))


def test_character_groups_put_a_characters_first_bytes_with_the_token_completing_it():
    assert character_groups([" a", "", "", "日", "x"]) == [[0], [1, 2, 3], [4]]
    assert character_groups(["a", "\ufffd", ""]) == [[0], [1, 2]]  # cut at the window's end: the U+FFFD and its tokens
    assert character_groups(["", ""]) == [[0], [1]]  # a store built without a tokenizer: no text at all
    assert character_groups([]) == []


def test_a_character_split_over_tokens_is_one_span_carrying_its_tokens_shade_and_underline():
    pieces = _window()
    assert "".join(pieces) == TEXT and "" in pieces  # the tokenizer really splits characters
    first = pieces.index("")  # the first byte token of 日 (an empty piece)
    whole = next(i for i in range(first, len(pieces)) if pieces[i])
    acts = [0.0] * len(pieces)
    acts[first] = 2.0
    shade = [0] * len(pieces)
    shade[first] = 10
    spans = _render({"tokens": pieces, "acts": acts, "shade": shade, "centre": first})
    assert all(text for _, _, text in spans), spans  # no empty sliver between a character's bytes
    drawn = "".join(visible(p, "".join(pieces[i + 1:])) for i, p in enumerate(pieces))
    assert "".join(t for _, _, t in spans) == drawn and "⇥x" in drawn and "↵y" in drawn  # the window, as drawn
    marked = [s for s in spans if "s10" in s[0].split()]
    assert len(marked) == 1 and marked[0][2] == pieces[whole], spans  # the colour is on the character
    assert "centre" in marked[0][0].split()  # and the underline
    assert marked[0][1].split(" · ")[0] == "2"  # its title: each of its tokens' activation, in order
    assert len(marked[0][1].split(" · ")) == whole - first + 1
    assert any("🐳" in t for _, _, t in spans)  # the emoji whole, in one span


def test_the_fire_row_lists_the_features_of_all_of_a_characters_tokens():
    from saesteer.web.schemas import FeatureAct, FireResult

    pieces = _window()
    first = pieces.index("")
    whole = next(i for i in range(first, len(pieces)) if pieces[i])
    per_token = [[] for _ in pieces]
    per_token[first] = [FeatureAct(latent=7, act=1.5, label="kanji")]
    per_token[whole] = [FeatureAct(latent=7, act=0.5), FeatureAct(latent=3, act=0.9)]
    shade = [0] * len(pieces)
    shade[first] = 6
    result = FireResult(tokens=pieces, token_shade=shade, features=[], per_token=per_token)
    spans = fire_row(result)
    assert all(text for _, _, text in spans) and len(spans) == len([x for x in pieces if x]), spans
    span = next(s for s in spans if s[2] == pieces[whole])
    assert "s6" in span[0].split() and span[1] == "#7 1.5 kanji\n#3 0.9"  # each feature once, at its strongest
    assert spans[-1][1] == "no feature fires"


def test_the_html_export_draws_a_split_character_as_one_span_too():
    from features.export import _example_html
    from features.records import Example

    pieces = _window()
    first = pieces.index("")
    whole = next(i for i in range(first, len(pieces)) if pieces[i])
    acts = [0.0] * len(pieces)
    acts[first] = 2.0
    ex = Example(id=1, latent=0, kind="top", rank=0, activation=2.0, quantile=None, seq_index=0, position=first,
                 centre=first, token_ids=list(range(len(pieces))), tokens=pieces, acts=acts, text="".join(pieces))
    html = _example_html(ex, 2.0)
    spans = tok_spans(html)
    assert all(text for _, _, text in spans), spans
    marked = [s for s in spans if "centre" in s[0].split()]
    assert [s[2] for s in marked] == [pieces[whole]] and marked[0][1].split(" · ")[0] == "2"
    assert 'style="background:rgba(255,140,0,1.000)" title="2 · ' in html  # the character in its token's colour
