"""What the feature build writes: metadata, the vocabulary, and blocks of latents (typed rows,
`features.store.rows`), each block with everything that belongs to it in one transaction."""

from __future__ import annotations

import json
from typing import Any

from features.store.base import StoreBase
from features.store.rows import (
    CorrelationRow,
    ExampleRow,
    FeatureRow,
    HistogramRow,
    LogitRow,
    NeighbourRow,
    SearchTextRow,
    insert_sql,
)


class StoreBuildWrites(StoreBase):
    """The build's writes (internal: used by `features.build`)."""

    def set_meta(self, **items: Any) -> None:
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in items.items()])
        self.refresh()

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
                            histograms: list[HistogramRow], examples: list[ExampleRow], logits: list[LogitRow],
                            neighbours: list[NeighbourRow], fts: list[SearchTextRow],
                            correlations: list[CorrelationRow]) -> None:
        """One build transaction: latents [first_latent, end_latent) with everything that belongs to them."""
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM build_progress WHERE block = ?", (block,)).fetchone():
                return
            c.executemany(insert_sql("features", FeatureRow), features)
            c.executemany(insert_sql("histograms", HistogramRow), histograms)
            c.executemany(insert_sql("examples", ExampleRow), examples)
            c.executemany(insert_sql("logit_effects", LogitRow), logits)
            c.executemany(insert_sql("neighbours", NeighbourRow), neighbours)
            c.executemany(insert_sql("correlations", CorrelationRow), correlations)
            c.executemany("INSERT INTO feature_fts(rowid, label, examples) VALUES (?, ?, ?)", fts)
            c.execute("INSERT INTO build_progress(block, first_latent, end_latent) VALUES (?, ?, ?)", (block, first_latent, end_latent))
