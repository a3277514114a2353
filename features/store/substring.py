"""Search by substring, for the queries the word index cannot answer as meant.

The full-text index (FTS5, unicode61) holds words: letters and digits between separators. Text of a
script written without spaces (Chinese, Japanese, Thai) is one "word" per run between punctuation,
so "テキスト" is not found inside "日本語のテキストを…"; an emoji or another symbol is a separator, so
"🐳" is no word at all. FTS5's trigram tokenizer would index substrings, but it cannot match a query
under three characters (most Chinese and Japanese words are one or two) and would triple the size
of every store. So these queries are answered by a pass over the same text, labels first, then the
top examples, stopping at `limit` hits: linear in the store's text, with no index to build or
upgrade. Both sides are compared folded (`features.store.folding`: case, composition, width), and
a hit's snippet marks the stored characters that matched.

A query's whitespace-separated parts are all looked for in each row's folded text, read and folded
once per query whatever the number of parts: a part costs a `str.find` over text already folded, a
small share of the folding. A row that holds none of the characters its fold would need to hold a
part (`_telling_characters`) is not folded at all, so a query found nowhere costs about what an
exact search did (benchmarks/bench_substring_search.py). So the parts are bounded only against
abuse (`MAX_PARTS`, more than a web query of the default `max_query_chars`, 200, holds).
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from bisect import bisect_left, bisect_right

from features.records import SNIPPET_CLOSE, SNIPPET_OPEN, SearchHit
from features.store.folding import fold, folded_spans, sources
from features.store.schema import latest_label_sql

__all__ = ["MAX_PARTS", "beyond_words", "substring_search"]

# Scripts written without spaces between words: Thai, Lao, kana, CJK ideographs
_UNSPACED = re.compile("[\u0e00-\u0eff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SNIPPET_CONTEXT = 40  # characters of text each side of the first match
# most distinct parts one query may have: each costs a find over every row's folded text (128 parts found
# nowhere: 5.5x the CPU of one part, less than 8 parts cost when each was an SQL pass), so a CLI or API
# caller is bounded too
MAX_PARTS = 128
_MOST_SOURCES = 32  # characters `_telling_characters` looks for at most (each a find: 64 cost about a fold)


def beyond_words(text: str) -> bool:
    """Whether the word index cannot match `text` as meant: it holds text of a script written
    without spaces, a symbol past ASCII (an emoji, "→"), or no word at all ("->")."""
    if not text.strip():
        return False
    if _UNSPACED.search(text) or not re.search(r"\w", text):
        return True
    return any(ord(ch) > 127 and unicodedata.category(ch)[0] == "S" for ch in text)


def query_parts(text: str) -> list[str]:
    """The distinct folded parts of a query, longest first; more than `MAX_PARTS`: ValueError."""
    parts = sorted({p for p in (fold(w).strip() for w in text.split()) if p}, key=lambda p: (-len(p), p))
    if len(parts) > MAX_PARTS:
        raise ValueError(f"a search for text the word index cannot match (CJK, Thai, emoji, symbols) takes at most "
                         f"{MAX_PARTS} space-separated parts, got {len(parts)}: search for fewer (a run of CJK "
                         f"text without spaces is one part)")
    return parts


def substring_search(c: sqlite3.Connection, text: str, limit: int) -> list[SearchHit]:
    """The latents whose label or top examples contain every whitespace-separated part of `text`
    (folded: `features.store.folding`), or any part when none contains all of them; those with all
    parts in the label first. Stops once `limit` latents hold all the parts; more than `MAX_PARTS`
    parts: ValueError."""
    parts = query_parts(text)
    if not parts or limit == 0:
        return []
    # labels first (short: a cheap pass), then the examples of every latent, read once for both the
    # "all parts" and the "any part" answer
    in_label: dict[int, frozenset[str]] = {}
    for rowid, label in c.execute("SELECT rowid, label FROM feature_fts"):
        key = fold(label or "")
        found = frozenset(p for p in parts if p in key)
        if found:
            in_label[rowid] = found
    whole = set(parts)
    label_all = [i for i, f in in_label.items() if f == whole][:limit]
    label_any = [i for i in in_label if i not in label_all]
    either_all: list[int] = []
    either_any: list[int] = []
    if len(label_all) < limit:
        either_all, either_any = _in_examples(c, parts, in_label, set(label_all), limit - len(label_all),
                                              limit - len(label_any))
    ids = (label_all + either_all) if label_all or either_all else (label_any + either_any)
    return _hits(c, ids[:limit], parts)


def _in_examples(c: sqlite3.Connection, parts: list[str], in_label: dict[int, frozenset[str]], taken: set[int],
                 want_all: int, want_any: int) -> tuple[list[int], list[int]]:
    """The latents not `taken` whose examples hold each part their label does not (up to `want_all`)
    and, while none does, those whose label holds no part and whose examples hold one (up to
    `want_any`). A row is folded only where it may be one of them: it holds a telling character of
    the query's rarest part (or its label holds that part), or one of any part while the "any" answer
    still wants rows; so "print →" costs about what "→" does, not a fold of every row."""
    rarest = min(parts, key=lambda p: len(_rarest_sources(p)))
    for_all, for_any = _telling_characters([rarest]), _telling_characters(parts)
    all_ids: list[int] = []
    any_ids: list[int] = []
    for rowid, examples in c.execute("SELECT rowid, examples FROM feature_fts"):
        if rowid in taken:
            continue
        examples = examples or ""
        seen = in_label.get(rowid, frozenset())
        if for_all is not None and rarest not in seen and not any(ch in examples for ch in for_all):
            if all_ids or seen or len(any_ids) >= want_any:
                continue  # it lacks the rarest part once folded, and the "any" answer needs it not
            if for_any is not None and not any(ch in examples for ch in for_any):
                continue  # it holds no part once folded
        key = fold(examples)
        missing = [p for p in parts if p not in seen and p not in key]
        if not missing:
            all_ids.append(rowid)
            if len(all_ids) >= want_all:
                break
        elif len(missing) < len(parts) and not seen and not all_ids and len(any_ids) < want_any:
            any_ids.append(rowid)
    return all_ids, any_ids


def _rarest_sources(part: str) -> frozenset[str]:
    """The sources (`folding.sources`) of the character of `part` that has the fewest."""
    return min((sources(ch) for ch in part), key=len)


def _telling_characters(parts: list[str]) -> frozenset[str] | None:
    """Characters of which a row's text holds one wherever it holds a part once folded: the sources
    of each part's rarest character. Looking for them in the stored text costs a few percent of
    folding it, so a row without one is passed over unfolded (a query found nowhere costs what an
    exact search did). None where they are too many to be worth it."""
    chars: set[str] = set()
    for p in parts:
        chars |= _rarest_sources(p)
        if len(chars) > _MOST_SOURCES:
            return None
    return frozenset(chars)


def _hits(c: sqlite3.Connection, ids: list[int], parts: list[str]) -> list[SearchHit]:
    if not ids:
        return []
    rows = {r[0]: r[1:] for r in c.execute(
        f"SELECT t.rowid, t.label, t.examples, {latest_label_sql('t.rowid')}, f.freq "
        f"FROM feature_fts t JOIN features f ON f.latent = t.rowid WHERE t.rowid IN ({','.join('?' * len(ids))})",
        ids)}
    hits = []
    for i in ids:  # in the order found (labels first), so that pages cut from more hits agree
        fts_label, examples, label, freq = rows[i]
        label_key, examples_key = fold(fts_label or ""), fold(examples or "")
        where = (examples or "") if any(p in examples_key for p in parts) else (fts_label or "")
        # its score: how often the parts occur, a label's counted 5 times (bm25's label weight)
        score = sum(5 * label_key.count(p) + examples_key.count(p) for p in parts)
        hits.append(SearchHit(i, float(score), label, _snippet(where, parts), freq))
    return hits


def _matches(line: str, pattern: re.Pattern) -> list[tuple[int, int]]:
    """Where `pattern` (the folded parts) matches the fold of `line`, as character ranges of `line`
    itself: a match of "strasse" covers "ß", of "café" the "e" and its combining accent."""
    found = [(m.start(), m.end()) for m in pattern.finditer(fold(line))]
    if not found:
        return []
    spans = folded_spans(line)
    ends = [e for _, _, e in spans]  # the fold's end of each piece, ascending
    out: list[tuple[int, int]] = []
    for a, b in found:  # the pieces whose folds the match touches
        lo, hi = spans[bisect_right(ends, a)][0], spans[bisect_left(ends, b)][1]
        if out and lo < out[-1][1]:  # two matches in one piece ("ﬃ" found as "ff" and "fi"): one mark
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def _snippet(text: str, parts: list[str]) -> str:
    """The line of the text (the examples are one per line) with the first match, cut to the match and
    `_SNIPPET_CONTEXT` characters each side with "..." as FTS5's snippets are, each match between
    SNIPPET_OPEN and SNIPPET_CLOSE."""
    pattern = re.compile("|".join(map(re.escape, parts)))  # longest first: a part inside another is not marked alone
    for line in text.split("\n"):
        marks = _matches(line, pattern)
        if marks:
            break
    else:
        return ""
    # cut where a piece of the fold starts (`folded_spans`): never inside "e" + accent, "ﾃﾞ" or Hangul jamo
    starts = [start for start, _, _ in folded_spans(line)] + [len(line)]
    a = starts[bisect_right(starts, max(0, marks[0][0] - _SNIPPET_CONTEXT)) - 1]
    b = starts[bisect_right(starts, min(len(line), marks[0][1] + _SNIPPET_CONTEXT)) - 1]
    out, at = [], a
    for lo, hi in marks:
        if lo < a or hi > b:
            continue
        out += [line[at:lo], SNIPPET_OPEN, line[lo:hi], SNIPPET_CLOSE]
        at = hi
    out.append(line[at:b])
    return ("..." if a > 0 else "") + "".join(out) + ("..." if b < len(line) else "")
