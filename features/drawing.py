"""Dataset and model text shown in a terminal or a page: its control, bidi and invisible characters
drawn as visible marks, never written (the stored text stays as it was).

    draw_controls("a\x1b[2J")        # 'a␛[2J': every such character drawn (token views: tokentext.visible)
    readable(label)                   # running text: line breaks, tabs, joiners in a word, kept

One rule for the CLI (`saesteer.terminal.plain`, the error boundary), the web pages and the HTML
export; saesteer/web/static/readable.js is its copy for the text a page's script writes itself.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["draw_controls", "readable", "CONTROL_NAMES", "RTL_BLOCKS"]


# Characters that are drawn, never written, wherever dataset or model text is shown: the C0/C1
# controls and DEL move a terminal's cursor, clear or retitle it and open links (ESC[2J, ESC]0;..BEL,
# ESC]8;;url), bidi overrides, embeddings, isolates and marks reorder the text after them (Trojan
# Source: U+202E), and the other format characters (zero-width space and joiners, BOM, soft hyphen,
# line/paragraph separators) are invisible, so a token made of one would show as nothing. A lone
# surrogate (only from a JSON "\ud800") cannot even be written to UTF-8.
_DRAWN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
CONTROL_NAMES = {
    0x00AD: "SHY", 0x061C: "ALM", 0x180E: "MVS", 0x200B: "ZWSP", 0x200C: "ZWNJ", 0x200D: "ZWJ", 0x200E: "LRM",
    0x200F: "RLM", 0x2028: "LSEP", 0x2029: "PSEP", 0x202A: "LRE", 0x202B: "RLE", 0x202C: "PDF", 0x202D: "LRO",
    0x202E: "RLO", 0x2060: "WJ", 0x2066: "LRI", 0x2067: "RLI", 0x2068: "FSI", 0x2069: "PDI", 0xFEFF: "BOM",
}


def _drawn(ch: str) -> str:
    """One character as drawn: C0 controls and DEL by their Control Pictures (ESC is ␛, NUL ␀), the
    rest of the drawn characters as their abbreviation or code point in ⟨⟩ (⟨RLO⟩, ⟨ZWJ⟩, ⟨U+009B⟩)."""
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    if unicodedata.category(ch) in _DRAWN_CATEGORIES:
        return "\u27e8" + CONTROL_NAMES.get(code, f"U+{code:04X}") + "\u27e9"
    return ch


# The spaces other than " " (Unicode's Zs: NBSP, narrow NBSP, em space, ...), which str.isprintable
# counts as unprintable but nothing draws: as " ", for the cheap test of a text with nothing to draw.
_SPACES_AS_SPACE = str.maketrans(dict.fromkeys("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
                                               "\u2008\u2009\u200a\u202f\u205f\u3000", " "))


def _nothing_to_draw(text: str, table: dict = _SPACES_AS_SPACE) -> bool:
    """Whether `text` holds no character to draw: isprintable is False for all of them (and for the
    spaces of `table`, which are not drawn; a French text's NBSPs need not take the slow path)."""
    return text.isprintable() or text.translate(table).isprintable()


def draw_controls(text: str) -> str:
    """`text` with every control, bidi and invisible format character drawn as a visible mark
    (`_drawn`): the one rule for showing dataset or model text in a terminal or a page (the stored
    text stays as it was). Token views use it as it is (`visible`); running text, `readable`."""
    if _nothing_to_draw(text):  # the common case
        return text
    return "".join(map(_drawn, text))


# Kept in running text, but drawn where they could hide or mislead (see `readable`):
_KEPT_BETWEEN_VISIBLE = "\u00ad\u200c\u200d"  # soft hyphen, ZWNJ, ZWJ: inside a word or an emoji sequence
_BIDI_MARKS = "\u200e\u200f\u061c"  # LRM, RLM, ALM
# The Unicode blocks of the right-to-left scripts (Hebrew, Arabic, Syriac, Thaana, N'Ko, ...: those
# whose characters default to bidi class R or AL), as inclusive code point ranges; readable.js gets
# them from the steer page (saesteer.web.pages.READABLE_RULE).
RTL_BLOCKS = ((0x0590, 0x08FF), (0xFB1D, 0xFDFF), (0xFE70, 0xFEFF), (0x10800, 0x10FFF), (0x1E800, 0x1EFFF))
_KEPT_AS_SPACE = {**_SPACES_AS_SPACE, ord("\n"): " ", ord("\t"): " "}
_EMOJI_TAGS = re.compile("(?<=\U0001F3F4)[\U000E0020-\U000E007E]+\U000E007F")  # 🏴 + tags: a region's flag


def _shows(ch: str) -> bool:
    """Whether a character is visible on its own (not a control, format character, separator or space)."""
    return ch.isprintable() and not ch.isspace()


def _joining(text: str, i: int) -> bool:
    """Whether the character at `i` sits between two visible characters (a word, an emoji sequence),
    where a joiner or a soft hyphen does its work; alone, at an edge or beside a space it shows nothing."""
    return 0 < i < len(text) - 1 and _shows(text[i - 1]) and _shows(text[i + 1])


def _right_to_left(text: str) -> bool:
    """Whether `text` holds a letter of a right-to-left script (`RTL_BLOCKS`)."""
    return any(unicodedata.category(ch)[0] == "L" and any(a <= ord(ch) <= b for a, b in RTL_BLOCKS) for ch in text)


def readable(text: str) -> str:
    """Running text (a label, a snippet, generated text, a message) as a terminal or a page shows it:
    `draw_controls`, but keeping what written text needs and cannot misuse: line breaks (a CRLF as
    one) and tabs; a joiner (ZWJ, ZWNJ) or soft hyphen between two visible characters (emoji, Persian,
    Indic scripts, hyphenation points); the bidi marks LRM, RLM and ALM in text that holds a
    right-to-left letter, where the writer placed them (drawn, their LTR names would split and
    reorder the Arabic or Hebrew around them; in other text they could only reorder its digits and
    punctuation, invisibly); and the tag characters of a region's flag emoji (🏴 + tags)."""
    text = text.replace("\r\n", "\n")
    if _nothing_to_draw(text, _KEPT_AS_SPACE):  # the common case
        return text
    flags = {i for m in _EMOJI_TAGS.finditer(text) for i in range(*m.span())}
    marks = any(ch in _BIDI_MARKS for ch in text) and _right_to_left(text)

    def shown(i: int, ch: str) -> str:
        if (ch in "\n\t" or i in flags or (marks and ch in _BIDI_MARKS)
                or (ch in _KEPT_BETWEEN_VISIBLE and _joining(text, i))):
            return ch
        return _drawn(ch)

    return "".join(shown(i, ch) for i, ch in enumerate(text))
