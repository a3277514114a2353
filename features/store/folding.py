"""Text as a search compares it: caseless, blind to how a character is composed and to its width.

`fold(text)` is the key both sides of a substring search are compared in (Unicode's compatibility
caseless match, D146, in its composed form): NFKC of the full case folding, so that
  * "café" typed (é, NFC) finds "café" stored decomposed (e + U+0301, as macOS writes names and
    text copied from it), and the reverse;
  * "STRASSE" finds "straße" and "straße" finds "STRASSE" (full folding, not `lower()`: ß is "ss",
    ẞ too); a Greek final sigma is a sigma ("ΟΔΟΣ" finds "οδος");
  * full-width Latin and digits and half-width kana (what an input method leaves on) are the
    characters they stand for, both ways: "ＡＢＣ" finds "ABC" and "ABC" finds "ＡＢＣ" (the stored
    side is folded too: a query folded alone would miss the very text it was pasted from), and the
    hit's snippet shows which form matched; ligatures and superscripts fold too ("ﬁ" is "fi", "x²" "x2");
  * "İ" (Turkish capital dotted I) is "i": its folding's combining dot above is dropped after an
    "i", as the word index drops it. Folding is Unicode's default, not Turkish: "I" is "i", never
    dotless "ı", which stays a letter of its own (the store does not know the language; search
    "ı" to find "ı").
Accents are kept (the word index drops Latin ones): a combining mark is part of the letter in
Japanese (テ and デ) and elsewhere, and a substring search matches what was typed.

`folded_spans(line)` says which characters of the stored text each piece of its folded form came
from, so that a match found in the folded text is highlighted on the stored characters.
`sources(ch)` are the stored characters one of which a text must hold for its fold to hold `ch`: a
search asks SQLite for those first, and folds only the rows that have one.
"""

from __future__ import annotations

import unicodedata
from functools import cache

__all__ = ["fold", "folded_spans", "sources"]


def fold(text: str) -> str:
    """The comparison key of `text` (see the module); folding it again changes nothing."""
    if text.isascii():  # most code and English: no composition, no width, simple case
        return text.lower()
    cased = text.casefold()
    key = unicodedata.normalize("NFKC", cased)
    if key is not cased:  # NFKC changed something (it returns the text itself when nothing changes), so
        key = unicodedata.normalize("NFKC", key.casefold())  # fold what it made: ℂ -> C -> c
    if "\u0307" in key:  # İ's dot dropped; what follows may now compose with the "i" ("İ" U+0301 is "í")
        key = unicodedata.normalize("NFC", key.replace("i\u0307", "i"))
    return key


def folded_spans(text: str) -> list[tuple[int, int, int]]:
    """`text` cut into its shortest pieces that fold on their own, each as (start in `text`, end in
    `text`, end in `fold(text)`): a piece starts at a character that is no combining mark, in the text
    or once folded, and does not compose with the piece before it ("e" + U+0301, Hangul jamo, "ﾃ" +
    "ﾞ" stay one piece). Their folds join to `fold(text)`; where they would not (a case no piece
    rule foresaw), the whole text is one piece."""
    if text.isascii():
        return [(i, i + 1, i + 1) for i in range(len(text))]
    spans: list[tuple[int, int, int]] = []
    start, piece, at = 0, "", 0
    for i, ch in enumerate(text):
        # a character that folds to a mark (half-width "ﾞ", Tibetan U+0F73) is one: a mark after it may
        # compose with the letter before it ("A" "ﾞ" U+0301 folds to "á" U+3099)
        mark = unicodedata.combining(ch) or unicodedata.combining(fold(ch)[0])
        if piece and not mark and fold(piece + ch) == fold(piece) + fold(ch):
            at += len(fold(piece))
            spans.append((start, i, at))
            start, piece = i, ""
        piece += ch
    if piece:
        spans.append((start, len(text), at + len(fold(piece))))
    if spans and spans[-1][2] == len(fold(text)) and "".join(fold(text[a:b]) for a, b, _ in spans) == fold(text):
        return spans
    return [(0, len(text), len(fold(text)))] if text else []


def sources(ch: str) -> frozenset[str]:
    """The characters of which a text holds one wherever its fold holds `ch` (a folded character):
    the first character of `ch` decomposed, and every character whose folding, decomposed, holds it
    ("テ": テ, デ, ﾃ, ㋢ ...; "a": a, A, à, Ａ, ª ... 124 of them). Folding composes only characters that
    decompose to what a text holds, so a text without any of them has no `ch` in its fold."""
    base = unicodedata.normalize("NFD", ch)[0]
    return _holders().get(base, frozenset()) | {base}


@cache
def _holders() -> dict[str, frozenset[str]]:
    """Each character, with the other characters whose decomposed folding holds it; once per process
    (about 0.1 s: only the characters folding changes, of the planes that have any)."""
    out: dict[str, set[str]] = {}
    for cp in (*range(0xD800), *range(0xE000, 0x30000), *range(0xE0000, 0xE0200)):
        c = chr(cp)
        once = unicodedata.normalize("NFKD", c.casefold())
        if once == c:
            continue
        for b in set(once + unicodedata.normalize("NFKD", once.casefold())) - {c}:
            out.setdefault(b, set()).add(c)
    return {b: frozenset(cs) for b, cs in out.items()}
