"""Search by substring, for the queries the word index cannot answer as meant.

The full-text index (FTS5, unicode61) holds words: letters and digits between separators. Text of a
script written without spaces (Chinese, Japanese, Thai) is one "word" per run between punctuation,
so "テキスト" is not found inside "日本語のテキストを…"; an emoji or another symbol is a separator, so
"🐳" is no word at all. FTS5's trigram tokenizer would index substrings, but it cannot match a query
under three characters (most Chinese and Japanese words are one or two) and would triple the size
of every store. So these queries are answered by one pass over the same text (labels first, then
the top examples), stopping at `limit` hits: linear in the store's text, with no index to build or
upgrade (benchmarks/bench_substring_search.py: 0.2 s of CPU over 114 MB of example text
where nothing matches). A query's parts are each looked for in every row that holds none of them,
so their number is bounded too (`MAX_PARTS`).
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata

from features.records import SNIPPET_CLOSE, SNIPPET_OPEN, SearchHit
from features.store.schema import latest_label_sql

__all__ = ["MAX_PARTS", "beyond_words", "substring_search"]

# Scripts written without spaces between words: Thai, Lao, kana, CJK ideographs
_UNSPACED = re.compile("[\u0e00-\u0eff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SNIPPET_CONTEXT = 40  # characters of text each side of the first match
# most distinct parts one query may have: a search that finds nothing costs a pass over the store's text
# per part (100 one-character parts, which a 200-character web query holds, cost 65 times one part)
MAX_PARTS = 8


def beyond_words(text: str) -> bool:
    """Whether the word index cannot match `text` as meant: it holds text of a script written
    without spaces, a symbol past ASCII (an emoji, "→"), or no word at all ("->")."""
    if not text.strip():
        return False
    if _UNSPACED.search(text) or not re.search(r"\w", text):
        return True
    return any(ord(ch) > 127 and unicodedata.category(ch)[0] == "S" for ch in text)


def _contains(column: str, term: str) -> tuple[str, str]:
    """SQL that `column` holds `term`, and its argument: LIKE where the term has ASCII letters (it
    folds their case, as the word index does), else instr (no case to fold: twice as fast)."""
    if any(ch.isascii() and ch.isalpha() for ch in term):
        return f"{column} LIKE ? ESCAPE '\\'", "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return f"instr({column}, ?) > 0", term


def substring_search(c: sqlite3.Connection, text: str, limit: int) -> list[SearchHit]:
    """The latents whose label or top examples contain every whitespace-separated part of `text`
    (ASCII letters in any case), or any part when none contains all of them; those with all parts
    in the label first. Each query stops at `limit` rows; more than `MAX_PARTS` parts: ValueError."""
    terms = list(dict.fromkeys(text.split()))
    if len(terms) > MAX_PARTS:
        raise ValueError(f"a search for text the word index cannot match (CJK, Thai, emoji, symbols) takes at most "
                         f"{MAX_PARTS} space-separated parts, got {len(terms)}: search for fewer (a run of CJK "
                         f"text without spaces is one part)")
    for joiner in (" AND ", " OR ") if len(terms) > 1 else (" AND ",):
        label = [_contains("label", t) for t in terms]
        either = [(_contains("label", t), _contains("examples", t)) for t in terms]
        in_label = joiner.join(sql for sql, _ in label)
        in_either = joiner.join(f"({a[0]} OR {b[0]})" for a, b in either)
        ids = [r[0] for r in c.execute(f"SELECT rowid FROM feature_fts WHERE {in_label} LIMIT ?",
                                       (*[arg for _, arg in label], limit))]
        if len(ids) < limit:
            seen = ",".join(map(str, ids)) or "-1"
            ids += [r[0] for r in c.execute(
                f"SELECT rowid FROM feature_fts WHERE ({in_either}) AND rowid NOT IN ({seen}) LIMIT ?",
                (*[arg for a, b in either for arg in (a[1], b[1])], limit - len(ids)))]
        if ids:
            return _hits(c, ids, terms)
    return []


def _hits(c: sqlite3.Connection, ids: list[int], terms: list[str]) -> list[SearchHit]:
    rows = {r[0]: r[1:] for r in c.execute(
        f"SELECT t.rowid, t.label, t.examples, {latest_label_sql('t.rowid')}, f.freq "
        f"FROM feature_fts t JOIN features f ON f.latent = t.rowid WHERE t.rowid IN ({','.join('?' * len(ids))})",
        ids)}
    hits, pattern = [], _pattern(terms)
    for i in ids:  # in the order found (labels first), so that pages cut from more hits agree
        fts_label, examples, label, freq = rows[i]
        where = examples if _find(examples or "", terms) else (fts_label or "")
        # its score: how often the parts occur, a label's counted 5 times (bm25's label weight)
        score = 5 * len(pattern.findall(fts_label or "")) + len(pattern.findall(examples or ""))
        hits.append(SearchHit(i, float(score), label, _snippet(where, terms), freq))
    return hits


def _pattern(terms: list[str]) -> re.Pattern:
    # LIKE folds ASCII letters only: so does this (no re.IGNORECASE, which folds every script)
    alts = ["".join(f"[{ch}{ch.swapcase()}]" if ch.isascii() and ch.isalpha() else re.escape(ch) for ch in t)
            for t in sorted(terms, key=len, reverse=True)]
    return re.compile("|".join(alts))


def _find(text: str, terms: list[str]) -> re.Match | None:
    return _pattern(terms).search(text)


def _snippet(text: str, terms: list[str]) -> str:
    """The text around the first match, each match between SNIPPET_OPEN and SNIPPET_CLOSE, on one
    line of the text (the examples are one per line), cut with "..." as FTS5's snippets are."""
    m = _find(text, terms)
    if m is None:
        return ""
    start = text.rfind("\n", 0, m.start()) + 1
    end = text.find("\n", m.end())
    end = len(text) if end < 0 else end
    a, b = max(start, m.start() - _SNIPPET_CONTEXT), min(end, m.end() + _SNIPPET_CONTEXT)
    body = _pattern(terms).sub(lambda x: SNIPPET_OPEN + x.group(0) + SNIPPET_CLOSE, text[a:b])
    return ("..." if a > start else "") + body + ("..." if b < end else "")
