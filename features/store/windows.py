"""Each example window stored once (schema version 3): the table `windows` holds a window's token
ids, text and offsets, `example_refs` one row per example naming its window, and the view `examples`
joins them back into version 2's columns (`features.store.schema`).

The build hands its examples over as an `ExampleBlock` (each distinct window once, the examples as
columns naming them: no Python object per example); `WindowIds` gives each window its id in the
store, adding the windows it has not seen; `share_windows` converts a version-2 store (one table
`examples`, every window in every row) in place.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Iterable, Iterator

from features.store.rows import ExampleRow, insert_sql
from features.store.schema import EXAMPLES_VIEW, SCHEMA

WindowKey = tuple  # (token_ids, text, token_offsets): the window's stored bytes, so equal keys read the same

# one example's row of `example_refs`: ExampleRow's fields with the window's id in place of its bytes
REF_COLUMNS = ("latent", "kind", "rank", "activation", "quantile", "seq_index", "position", "centre", "window", "acts")
INSERT_REF = insert_sql("example_refs", REF_COLUMNS)
_WINDOW = REF_COLUMNS.index("window")


@dataclass(frozen=True)
class ExampleBlock:
    """A write block's examples: `windows` each window the block shows, as its stored bytes
    (token_ids, text, token_offsets), in the order the examples first name them (new windows get
    their ids in that order), and `columns` one list per `REF_COLUMNS` entry with a value per
    example, `window` an index into `windows` and `acts` None when all zero bytes (the view gives
    them back). The same window may be listed twice (two positions with the same tokens): the store
    keeps it once. Iterating gives the examples as `ExampleRow`s (`of_rows` is the way back)."""

    windows: list[WindowKey]
    columns: tuple[list, ...]

    def __len__(self) -> int:
        return len(self.columns[0])

    def __iter__(self) -> Iterator[ExampleRow]:
        for latent, kind, rank, act, q, seq, pos, centre, w, acts in zip(*self.columns):
            ids, text, offsets = self.windows[w]
            yield ExampleRow(latent, kind, rank, act, q, seq, pos, centre, ids, bytes(len(ids)) if acts is None else acts,
                             text, offsets)

    @classmethod
    def of_rows(cls, examples: Iterable[ExampleRow]) -> "ExampleBlock":
        index: dict[WindowKey, int] = {}
        refs = []
        for e in examples:
            w = index.setdefault((e.token_ids, e.text, e.token_offsets), len(index))
            acts = None if e.acts.count(0) == len(e.acts) else e.acts
            refs.append((e.latent, e.kind, e.rank, e.activation, e.quantile, e.seq_index, e.position, e.centre, w, acts))
        return cls(list(index), tuple(map(list, zip(*refs))) if refs else tuple([] for _ in REF_COLUMNS))


class WindowIds:
    """The id of every window a store holds, by its bytes, read from the store once (a resumed build
    finds the windows its earlier blocks wrote)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._ids: dict[WindowKey, int] = {
            (t, x, o): i for i, t, x, o in conn.execute("SELECT id, token_ids, text, token_offsets FROM windows")}
        self._next = max(self._ids.values(), default=0) + 1

    def refs(self, block: ExampleBlock) -> tuple[list[tuple], Iterable[tuple]]:
        """(new window rows, example_refs rows) for `block`'s examples; the new windows are remembered as
        written, so call it inside the transaction that inserts both, and read the ids again (a new
        `WindowIds`) after a rollback. Windows new to the store get ids in the order the block first
        names them (the order the examples name them)."""
        ids, new, stored = self._ids, [], []
        for key in block.windows:
            w = ids.get(key)
            if w is None:
                w = ids[key] = self._next
                self._next += 1
                new.append((w, *key))
            stored.append(w)
        cols = list(block.columns)
        cols[_WINDOW] = [stored[w] for w in cols[_WINDOW]]
        return new, zip(*cols)


def share_windows(conn: sqlite3.Connection) -> int:
    """Convert a version-2 store's `examples` table to version 3 (each window once, the view
    `examples`) in one transaction; the example ids stay. Returns the number of distinct windows.
    The file keeps its size until it is VACUUMed (`features.upgrade` does)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("ALTER TABLE examples RENAME TO examples_v2")
        for name in ("windows", "example_refs"):
            conn.execute(_create_statement(name))
        conn.execute("INSERT INTO windows(token_ids, text, token_offsets) SELECT token_ids, text, token_offsets "
                     "FROM examples_v2 GROUP BY token_ids, text, token_offsets ORDER BY MIN(id)")
        conn.execute("CREATE INDEX window_of ON windows(token_ids, text, token_offsets)")
        conn.execute(
            f"INSERT INTO example_refs(id, {', '.join(REF_COLUMNS)}) SELECT x.id, x.latent, x.kind, x.rank, x.activation, "
            "x.quantile, x.seq_index, x.position, x.centre, w.id, CASE WHEN x.acts = zeroblob(length(x.acts)) THEN NULL "
            "ELSE x.acts END FROM examples_v2 x JOIN windows w ON w.token_ids = x.token_ids AND w.text IS x.text "
            "AND w.token_offsets IS x.token_offsets ORDER BY x.id")
        conn.execute("DROP INDEX window_of")
        conn.execute("DROP TABLE examples_v2")
        conn.execute(EXAMPLES_VIEW)
        n = conn.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
        conn.execute("UPDATE schema_version SET version = 3")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n


def _create_statement(table: str) -> str:
    """The schema's own CREATE TABLE statement of `table`."""
    for stmt in SCHEMA.split(";"):
        if stmt.strip().startswith(f"CREATE TABLE {table} ("):
            return stmt
    raise KeyError(table)
