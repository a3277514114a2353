"""`features.store.folding` against slow references, over random Unicode text: the pieces
`folded_spans` cuts a text into are exactly its clean cuts (where folding the two sides apart gives
the fold of the whole), a search highlight covers whole stored characters and no more than the
match needs, and a row the search passes over unfolded (`sources`) holds no match."""

from __future__ import annotations

import re
import unicodedata

from hypothesis import example, given, settings
from hypothesis import strategies as st

from features.store.folding import fold, folded_spans, sources
from features.store.substring import _matches

_NFD = "NFD"
# characters whose fold changes length, composes across characters or starts with a mark: ß ẞ ﬁ ﬃ ŉ İ
# ǅ ㎏ ½ Ⅻ ﷺ, full-width, half-width kana and voicing marks, Hangul jamo, Tibetan U+0F73, U+0345, U+0344
_TRICKY = list("aAeEiIİıßẞsSſfテデﾃﾞﾟ\u3099\u309a\u0301\u0307\u0323\u0345\u0344éÉＡＢｓ가각ﬁﬃ²ΣσςΟΔ→🐳 ㎏½Ⅻŉǅᾳ῭¨´ﷺ"
               "\u0f71\u0f72\u0f73\u1100\u1161\u11a8")
_TRICKY += [unicodedata.normalize(_NFD, s) for s in ("é", "각", "ǖ", "Việt")]
_ANY = st.characters(exclude_categories=("Cs",))  # every code point a str can hold
_TEXT = st.lists(st.one_of(st.sampled_from(_TRICKY), _ANY), min_size=1, max_size=12).map("".join)


def _is_mark(ch: str) -> bool:
    """A mark stays with the letter before it, in the text or once folded (half-width "ﾞ" is U+3099)."""
    return bool(unicodedata.combining(ch) or unicodedata.combining(fold(ch)[0]))


def _clean_cuts(text: str) -> list[int]:
    """The reference: every place, before no mark, where the folds of the two sides join to the fold
    of the whole (each prefix and suffix folded apart)."""
    whole = fold(text)
    return [i for i in range(len(text) + 1)
            if (i in (0, len(text)) or not _is_mark(text[i])) and fold(text[:i]) + fold(text[i:]) == whole]


@settings(max_examples=400, deadline=None)
@given(_TEXT)
@example("Aﾞ\u0301 and more text")  # the acute composes with "A" across the voicing mark: "á" U+3099
@example("ǖﾟ ﬃ ཀ\u0f73\u0301 ok")
@example("㎏½Ⅻ ŉİß")
def test_the_pieces_are_the_clean_cuts(text):
    spans = folded_spans(text)
    assert [0] + [b for _, b, _ in spans] == _clean_cuts(text), [fold(text[a:b]) for a, b, _ in spans]
    assert [e for _, _, e in spans] == [len(fold(text[:b])) for _, b, _ in spans]


def _reference_marks(text: str, part: str) -> list[tuple[int, int]]:
    """Each match of `part` in the fold of `text`, as the clean cuts just around it (touching ones joined)."""
    cuts = _clean_cuts(text)
    ends = [len(fold(text[:i])) for i in cuts]
    out: list[tuple[int, int]] = []
    for m in re.finditer(re.escape(part), fold(text)):
        lo = max(c for c, e in zip(cuts, ends) if e <= m.start())
        hi = min(c for c, e in zip(cuts, ends) if e >= m.end())
        if out and lo < out[-1][1]:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


@settings(max_examples=300, deadline=None)
@given(_TEXT, st.data())
def test_a_highlight_covers_whole_characters_and_only_what_the_match_needs(text, data):
    key = fold(text)
    a = data.draw(st.integers(0, len(key) - 1))
    part = key[a:data.draw(st.integers(a + 1, len(key)))]
    marks = _matches(text, re.compile(re.escape(part)))
    assert marks == _reference_marks(text, part)
    assert all(0 <= lo < hi <= len(text) and part in fold(text[lo:hi]) for lo, hi in marks)


def test_a_match_inside_an_expansion_marks_the_whole_character():
    """Query "s" inside "ß" ("ss"), "f" inside "ﬃ", "i" inside "İ" (i + U+0307 folded to "i")."""
    assert _matches("Straße", re.compile("s")) == [(0, 1), (4, 5)]
    assert _matches("a ﬃ b", re.compile("fi")) == [(2, 3)]
    assert _matches("İstanbul", re.compile("is")) == [(0, 2)]
    assert _matches(unicodedata.normalize(_NFD, "データ"), re.compile("タ")) == [(3, 4)]  # デ is 2 stored chars


def test_a_mark_after_a_half_width_voicing_mark_does_not_mark_the_whole_line():
    """"A" "ﾞ" U+0301 folds to "á" U+3099: the acute reaches past the voicing mark (a mark once folded).
    Cut apart there, the pieces no longer joined to the fold and the whole line was one piece: a
    search for "see" marked all of it."""
    assert _matches("see Aﾞ\u0301 here", re.compile("see")) == [(0, 3)]


@settings(max_examples=400, deadline=None)
@given(_TEXT)
@example("㎏ ½ Ⅻ ﬃ ﷺ ℃ № ™ ǅ ŉ")
def test_every_folded_character_has_a_source_in_the_text(text):
    """What lets a search skip a row unfolded: a text whose fold holds `ch` holds one of `sources(ch)`,
    also where folding makes characters the text does not hold ("㎏" is "kg", "½" "1⁄2", "Ⅻ" "xii")."""
    held = set(text)
    assert all(sources(ch) & held for ch in fold(text))


@settings(max_examples=300, deadline=None)
@given(_TEXT)
@example("İ\u0301")  # İ's dot dropped left "i" U+0301 uncomposed: its fold was "í", and "í" was not found
def test_folding_twice_changes_nothing(text):
    """A query is folded once and compared with folded text: that needs the fold to be its own fold."""
    assert fold(fold(text)) == fold(text)


@settings(max_examples=200, deadline=None)
@given(_TEXT, _TEXT)
@example("ﾃﾞ" * 30, "")  # the context cut 40 characters before the match fell between ﾃ and its ﾞ
@example(unicodedata.normalize(_NFD, "한국어") * 10, "")  # ... or inside a syllable's jamo
def test_a_snippet_is_cut_only_where_the_text_folds_apart(before, after):
    """The snippet's context is cut where the fold of the text may be cut (`_clean_cuts`), so it shows
    no half of what folds as one (a lone voicing mark or jamo) and its text folds as in the line."""
    from features.records import SNIPPET_CLOSE, SNIPPET_OPEN
    from features.store.substring import _snippet

    before, after = (t.replace("\n", " ").replace(".", " ").replace(SNIPPET_OPEN, " ").replace(SNIPPET_CLOSE, " ")
                     for t in (before, after))  # no line break, no "...", no snippet mark (taken out of `shown`)
    line = before + " needle " + after
    shown = _snippet(line, ["needle"]).replace(SNIPPET_OPEN, "").replace(SNIPPET_CLOSE, "")
    body = shown[3 if shown.startswith("...") else 0:len(shown) - (3 if shown.endswith("...") else 0)]
    a = len(before) + 1 - body.index("needle")  # where the snippet was cut from the line
    assert line[a:a + len(body)] == body
    cuts = set(_clean_cuts(line))
    assert a in cuts and a + len(body) in cuts, (shown, a)
