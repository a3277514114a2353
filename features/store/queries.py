"""Querying many latents: a filtered, sorted page (`list_features`), counts, full-text search, and
the concept matches. Label and score sorts read indexed temp tables, not a subquery per latent."""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from itertools import product
from typing import Any

from features.records import SNIPPET_CLOSE, SNIPPET_OPEN, ConceptMatch, FeatureFilter, FeatureSummary, SearchHit
from features.store.base import StoreBase
from features.store.folding import fold
from features.store.schema import latest_label_sql
from features.store.substring import beyond_words, substring_search

_SORTS = {
    "latent": ("f.latent", False),
    "freq": ("f.freq", True),
    "n_fires": ("f.n_fires", True),
    "mean_act": ("f.mean_act", True),
    "max_act": ("f.max_act", True),
    "typical_max_act": ("f.typical_max_act", True),
    "level": ("f.level", False),
    "label": ("label", False),  # through temp.current_label (see _refresh_current)
    "recommended_strength": ("f.recommended_strength", True),
}
_CUR_LABEL = latest_label_sql("f.latent")
_NOT_NULL = ("f.latent", "f.freq", "f.n_fires", "f.max_act")  # sort columns declared NOT NULL
_NULLABLE = ("f.mean_act", "f.typical_max_act", "f.level", "f.recommended_strength")


def _fts_query(text: str, mode: str = "AND") -> str:
    """The words of `text` as an FTS5 query, each as `("word" OR "variant" ...)`: its forms the index's
    simple case folding keeps apart (`_word_forms`). A word is looked for once however often the query
    repeats it (in any case): FTS5 ranks every match per phrase ("the " * 50 took 2.2 s at 4k latents)."""
    words = re.findall(r"\w+", unicodedata.normalize("NFC", text))  # NFC: a decomposed accent is no separator
    distinct: dict[str, str] = {}
    for w in words:
        distinct.setdefault(fold(w), w)
    groups = []
    for w in distinct.values():
        forms = " OR ".join('"' + f.replace('"', '""') + '"' for f in _word_forms(w))
        groups.append(f"({forms})")
    return f" {mode} ".join(groups)


def _word_forms(word: str) -> list[str]:
    """`word` and the forms of it that the word index (unicode61: simple case folding, Latin accents
    dropped) holds apart but a reader does not (`features.store.folding`, full folding): its full
    folding ("STRAẞE", "ＡＢＣ", "ﬁne" as "strasse", "abc", "fine"), "ß" for each "ss" of it (the index
    holds "straße" as it is: "STRASSE" finds it), and the full-width form of a folded Latin word
    ("ABC" finds "ＡＢＣ" in Japanese text)."""
    key = fold(word)
    forms = [word, key]
    pieces = re.split("(ss)", key)  # "strasse" -> "stra", "ss", "e"
    pairs = [k for k, p in enumerate(pieces) if p == "ss"][:4]  # 16 forms at most
    for pick in product(("ss", "ß"), repeat=len(pairs)):
        chosen = dict(zip(pairs, pick))
        forms.append("".join(chosen.get(k, p) for k, p in enumerate(pieces)))
    if key.isascii() and key.isalnum():
        forms.append("".join(chr(ord(ch) + 0xFEE0) for ch in key))
    return list(dict.fromkeys(forms))


class StoreQueries(StoreBase):
    """Page, count and search the store's latents."""

    def _where(self, flt: FeatureFilter) -> tuple[str, list[Any]]:
        cond: list[str] = []
        args: list[Any] = []
        for col, op, val in (("freq", ">=", flt.min_freq), ("freq", "<=", flt.max_freq), ("max_act", ">=", flt.min_max_act),
                             ("level", "=", flt.level), ("parent_latent", "=", flt.parent_latent)):
            if val is not None:
                cond.append(f"f.{col} {op} ?")
                args.append(val)
        for fl in flt.flags or []:
            cond.append("(' ' || f.flags || ' ') LIKE ?")
            args.append(f"% {fl} %")
        for fl in flt.exclude_flags or []:
            cond.append("(' ' || f.flags || ' ') NOT LIKE ?")
            args.append(f"% {fl} %")
        if flt.alive_only:
            cond.append("f.n_fires > 0")
        if flt.has_label is not None:
            cond.append(("" if flt.has_label else "NOT ") + "EXISTS (SELECT 1 FROM labels l WHERE l.latent = f.latent)")
        if flt.label_contains:  # compared folded, as a search is ("STRASSE" finds "Straße")
            cond.append("f.latent IN (SELECT latent FROM temp.current_label WHERE instr(label_key, ?) > 0)")
            args.append(fold(flt.label_contains))
        if flt.latents is not None:
            ids = [self._check_latent(i) for i in flt.latents]
            cond.append(f"f.latent IN ({','.join('?' * len(ids))})" if ids else "0")
            args.extend(ids)
        if flt.min_score is not None:
            if not flt.score_method:
                raise ValueError("filter min_score needs score_method (e.g. 'detection')")
            cond.append("f.latent IN (SELECT latent FROM temp.latest_score WHERE method = ? AND value >= ?)")
            args.extend([flt.score_method, flt.min_score])
        return (" WHERE " + " AND ".join(cond)) if cond else "", args

    def list_features(
        self,
        sort: str = "latent",
        filter: FeatureFilter | dict | None = None,  # noqa: A002 - the public name others use
        offset: int = 0,
        limit: int = 50,
        descending: bool | None = None,
    ) -> list[FeatureSummary]:
        """A page of latents. sort: latent, freq, n_fires, mean_act, max_act, typical_max_act, level,
        label, recommended_strength, or 'score:<method>' (latest score of that method given to the
        current label, or to none; filter min_score reads the same); stats sort
        descending by default. NULLs (dead latents, unlabelled) always come last."""
        flt = FeatureFilter.coerce(filter)
        where, args = self._where(flt)
        method = None
        if sort.startswith("score:"):
            expr, desc, method = "", True, sort.split(":", 1)[1]
        elif sort in _SORTS:
            expr, desc = _SORTS[sort]
        else:
            raise ValueError(f"unknown sort {sort!r}; choose one of {', '.join(_SORTS)} or score:<method>")
        if descending is not None:
            desc = descending
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must be >= 0, got offset={offset}, limit={limit}")
        direction = "DESC" if desc else "ASC"
        with self._read() as c:
            if method is not None or expr == "label" or "temp." in where:
                self._refresh_current(c)
            if method is not None:  # latents with a score of that method by value, then the others by id
                ids = self._two_part_page(c, "temp.latest_score t", "t.method = ? AND ", [method], f"t.value {direction}",
                                          where, args, offset, limit)
            elif expr == "label":  # labelled latents by label, then the unlabelled by id
                ids = self._two_part_page(c, "temp.current_label t", "", [], f"t.label {direction}", where, args, offset, limit)
            else:
                if expr in _NOT_NULL or (expr in _NULLABLE and desc):  # NULLs sort last in SQLite's DESC order anyway
                    order = f"{expr} {direction}, f.latent"  # an indexed column's index serves it: no sort of every row
                else:
                    order = f"{expr} IS NULL, {expr} {direction}, f.latent"
                q_ids = f"SELECT f.latent FROM features f{where} ORDER BY {order} LIMIT ? OFFSET ?"
                ids = [r[0] for r in c.execute(q_ids, args + [int(limit), int(offset)])]
            # then the page's rows: a label subquery per row of the page, not of the store
            rows = []
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                rows += c.execute(
                    f"SELECT f.latent, f.n_fires, f.freq, f.mean_act, f.max_act, f.typical_max_act, f.flags, f.level, "
                    f"f.parent_latent, {_CUR_LABEL}, f.recommended_strength FROM features f "
                    f"WHERE f.latent IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        where_in_page = {i: n for n, i in enumerate(ids)}
        rows.sort(key=lambda r: where_in_page[r[0]])
        return [
            FeatureSummary(r[0], r[1], r[2], r[3], r[4], r[5], tuple(r[6].split()) if r[6] else (), r[7], r[8], r[9], r[10])
            for r in rows
        ]

    @staticmethod
    def _two_part_page(c: sqlite3.Connection, table: str, cond: str, cond_args: list[Any], order: str, where: str,
                       args: list[Any], offset: int, limit: int) -> list[int]:
        """A page of the order "rows of `table` (one per latent) by `order`, then the latents without
        one by id", both parts read through indexes: O(page), not O(latents) per request."""
        extra = f" AND {where[len(' WHERE '):]}" if where else ""
        first = (f"SELECT f.latent FROM {table} JOIN features f ON f.latent = t.latent WHERE {cond}1{extra} "
                 f"ORDER BY {order}, t.latent LIMIT ? OFFSET ?")
        ids = [r[0] for r in c.execute(first, cond_args + args + [int(limit), int(offset)])]
        if len(ids) == limit:
            return ids
        n_first = c.execute(f"SELECT COUNT(*) FROM {table} JOIN features f ON f.latent = t.latent WHERE {cond}1{extra}",
                            cond_args + args).fetchone()[0]
        rest = (f"SELECT f.latent FROM features f WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {cond}t.latent = f.latent)"
                f"{extra} ORDER BY f.latent LIMIT ? OFFSET ?")
        return ids + [r[0] for r in c.execute(rest, cond_args + args + [int(limit) - len(ids), max(0, int(offset) - n_first)])]

    def _refresh_current(self, c: sqlite3.Connection) -> None:
        """temp.current_label (each latent's current label) and temp.latest_score (its latest score
        per method that belongs to the current label or to no label), indexed, so that label / score sorts and filters read an index instead of
        running a subquery for every latent of the store (O(d_sae) per request: 0.5 s at 131k
        latents). Temp tables live in this connection only (read-only ones too); rebuilt when
        another connection committed (PRAGMA data_version) or this one wrote."""
        version = (c.execute("PRAGMA data_version").fetchone()[0], self._writes)
        if self._current_version == version:
            return
        c.create_function("fold", 1, fold, deterministic=True)  # label_key: what label_contains looks in
        for stmt in (
            "DROP TABLE IF EXISTS temp.current_label",
            "DROP TABLE IF EXISTS temp.latest_score",
            "CREATE TEMP TABLE current_label (latent INTEGER PRIMARY KEY, label_id INTEGER NOT NULL, "
            "label TEXT NOT NULL, label_key TEXT NOT NULL)",
            "INSERT INTO temp.current_label SELECT l.latent, l.id, l.label, fold(l.label) FROM labels l "
            "JOIN (SELECT latent, MAX(id) AS mid FROM labels GROUP BY latent) m ON l.id = m.mid",
            "CREATE INDEX temp.current_label_order ON current_label (label, latent)",
            "CREATE TEMP TABLE latest_score (method TEXT NOT NULL, latent INTEGER NOT NULL, value REAL NOT NULL, "
            "PRIMARY KEY (method, latent)) WITHOUT ROWID",
            # a score of an older label says nothing about the label shown beside it: only scores of
            # the current label (or of no label) count
            "INSERT INTO temp.latest_score SELECT s.method, s.latent, s.value FROM scores s "
            "JOIN (SELECT s2.latent, s2.method, MAX(s2.id) AS mid FROM scores s2 "
            "LEFT JOIN temp.current_label cl ON cl.latent = s2.latent "
            "WHERE s2.label_id IS NULL OR s2.label_id = cl.label_id GROUP BY s2.latent, s2.method) m "
            "ON s.id = m.mid",
            "CREATE INDEX temp.latest_score_order ON latest_score (method, value, latent)",
        ):
            c.execute(stmt)
        self._current_version = version

    def count_features(self, filter: FeatureFilter | dict | None = None) -> int:  # noqa: A002
        where, args = self._where(FeatureFilter.coerce(filter))
        with self._read() as c:
            if "temp." in where:
                self._refresh_current(c)
            return int(c.execute(f"SELECT COUNT(*) FROM features f{where}", args).fetchone()[0])

    def search(self, text: str, limit: int = 20, *, raw: bool = False) -> list[SearchHit]:
        """Full-text search over labels (weighted 5x) and top-example text. Words are matched as
        whole tokens, all of them first and any of them when that finds nothing. A query the word
        index cannot match as meant (CJK, Thai, an emoji: `substring.beyond_words`) is looked for
        as substrings instead. raw=True passes `text` to FTS5 as a query expression."""
        if int(limit) < 0:  # SQLite reads LIMIT -1 as no limit at all
            raise ValueError(f"limit must be >= 0, got {limit}")
        if not raw and beyond_words(text):
            with self._read() as c:
                return substring_search(c, text, int(limit))
        queries = [text] if raw else [q for q in (_fts_query(text, "AND"), _fts_query(text, "OR")) if q]
        with self._read() as c:
            for q in dict.fromkeys(queries):
                try:
                    # rank every match, but build snippets and look up labels for the hits kept only
                    ranked = c.execute(
                        "SELECT rowid, bm25(feature_fts, 5.0, 1.0) AS r FROM feature_fts WHERE feature_fts MATCH ? "
                        "ORDER BY r LIMIT ?", (q, int(limit)),
                    ).fetchall()
                    if not ranked:
                        continue
                    ids = [r[0] for r in ranked]
                    details = {r[0]: r[1:] for r in c.execute(
                        "SELECT t.rowid, "
                        f"snippet(feature_fts, -1, '{SNIPPET_OPEN}', '{SNIPPET_CLOSE}', '...', 12), "
                        f"{_CUR_LABEL.replace('f.latent', 't.rowid')}, f.freq "
                        "FROM feature_fts t JOIN features f ON f.latent = t.rowid "
                        f"WHERE feature_fts MATCH ? AND t.rowid IN ({','.join('?' * len(ids))})", (q, *ids),
                    )}
                except sqlite3.OperationalError as e:
                    raise ValueError(f"bad search query {text!r} ({e}): FTS5 syntax is words, \"quoted phrases\", "
                                     "AND / OR / NOT between terms, prefix* and NEAR(a b); quote a word that is an "
                                     "operator or holds punctuation, or search without raw=True") from None
                return [SearchHit(i, -r, details[i][1], details[i][0], details[i][2]) for i, r in ranked]
        return []

    def concept_matches(self, concept: str | None = None) -> list[ConceptMatch]:
        """Stored concept -> latent matches (see `features.concepts`), best first per concept."""
        q = "SELECT concept, latent, f1, precision, recall, rank FROM concept_matches"
        args: list[Any] = []
        if concept is not None:
            q += " WHERE concept = ?"
            args.append(concept)
        with self._read() as c:
            rows = c.execute(q + " ORDER BY concept, rank", args).fetchall()
        return [ConceptMatch(*r) for r in rows]
