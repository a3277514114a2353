"""What the feature build writes: metadata, the vocabulary, and blocks of latents (typed rows,
`features.store.rows`), each block with everything that belongs to it in one transaction; its
examples' windows each once (`features.store.windows`)."""

from __future__ import annotations

import json
from typing import Any

from features.store.base import StoreBase
from features.store.rows import (
    CorrelationRow,
    FeatureRow,
    HistogramRow,
    LogitRow,
    NeighbourRow,
    SearchTextRow,
    insert_sql,
)
from features.store.windows import INSERT_REF, ExampleBlock, WindowIds, share_windows


class StoreBuildWrites(StoreBase):
    """The build's writes (internal: used by `features.build`)."""

    _window_ids: WindowIds | None = None  # the stored windows' ids, read on the first block written

    def set_meta(self, **items: Any) -> None:
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in items.items()])
        self.refresh()

    def share_windows(self, vacuum: bool = False) -> int | None:
        """A version-2 store converted in place to version 3 (each example window once), then with
        `vacuum` shrunk to its new size: the number of distinct windows; None if it was version 3.
        With `vacuum` a version-3 store mostly of free pages is shrunk too: a conversion whose VACUUM
        was stopped (the conversion commits first; the VACUUM of a 1.2 GB store takes minutes)."""
        n = None
        if self.schema_version < 3:
            with self._lock:
                n = share_windows(self._conn)
            self._window_ids = None
            self.refresh()
        if vacuum and (n is not None or self._mostly_free()):
            with self._lock:
                self._conn.execute("VACUUM")
        return n

    def _mostly_free(self) -> bool:
        """Whether over a third of the file is free pages (a converted store's old examples: ~60%)."""
        with self._lock:
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        return free * 3 > pages

    def written_blocks(self) -> set[int]:
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT block FROM build_progress")}

    def write_vocab(self, strings: list[str], label_rule: int) -> None:
        """The vocabulary's labels and the rule they follow (meta "vocab_labels"), in one transaction."""
        with self.transaction() as c:
            c.execute("DELETE FROM vocab")
            c.executemany("INSERT INTO vocab(token_id, text) VALUES (?, ?)", list(enumerate(strings)))
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('vocab_labels', ?)", (json.dumps(label_rule),))
        self.refresh()
        self._vocab = None

    def write_feature_block(self, block: int, first_latent: int, end_latent: int, features: list[FeatureRow],
                            histograms: list[HistogramRow], examples: ExampleBlock, logits: list[LogitRow],
                            neighbours: list[NeighbourRow], fts: list[SearchTextRow],
                            correlations: list[CorrelationRow]) -> None:
        """One build transaction: latents [first_latent, end_latent) with everything that belongs to them
        (the examples as an `ExampleBlock`: `ExampleBlock.of_rows` makes one of `ExampleRow`s)."""
        try:
            self._write_block(block, first_latent, end_latent, features, histograms, examples, logits, neighbours,
                              fts, correlations)
        except BaseException:
            self._window_ids = None  # it may remember windows of the rolled-back block: read them again
            raise

    def _write_block(self, block, first_latent, end_latent, features, histograms, examples, logits, neighbours, fts,
                     correlations) -> None:
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM build_progress WHERE block = ?", (block,)).fetchone():
                return
            if self._window_ids is None:
                self._window_ids = WindowIds(c)
            windows, refs = self._window_ids.refs(examples)
            c.executemany(insert_sql("features", FeatureRow), features)
            c.executemany(insert_sql("histograms", HistogramRow), histograms)
            c.executemany("INSERT INTO windows(id, token_ids, text, token_offsets) VALUES (?, ?, ?, ?)", windows)
            c.executemany(INSERT_REF, refs)
            c.executemany(insert_sql("logit_effects", LogitRow), logits)
            c.executemany(insert_sql("neighbours", NeighbourRow), neighbours)
            c.executemany(insert_sql("correlations", CorrelationRow), correlations)
            c.executemany("INSERT INTO feature_fts(rowid, label, examples) VALUES (?, ?, ?)", fts)
            c.execute("INSERT INTO build_progress(block, first_latent, end_latent) VALUES (?, ?, ?)", (block, first_latent, end_latent))
