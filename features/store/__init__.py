"""The feature store: one SQLite file per SAE (stdlib sqlite3, WAL mode, FTS5).

    store = FeatureStore.open("features/toy-topk.db")                # read-only by default
    rec = store.feature(4117)                                        # FeatureRecord
    page = store.list_features(sort="freq", filter={"alive_only": True}, offset=0, limit=50)
    hits = store.search("ocean")
    with FeatureStore.open(path, readonly=False) as store:          # auto-interp / steering
        store.write_label(4117, "ocean words", provenance=LabelProvenance(...))

Every write happens in one transaction (the build writes `write_block` latents per
transaction, with their examples and search text), and every multi-query read runs inside one
read transaction, so a reader never sees half a batch.

Stores written before `examples.token_offsets` existed stay readable: the column is added when
such a store is opened for writing, and the pieces of their examples are aligned from the window
text and the vocabulary (`features.tokentext.align_pieces`, best effort; the text is exact).

`FeatureStore` is one class made of one part per idea, each a module here:
    schema       the SQLite schema (documented there), its version, `connect`
    errors       StoreError and its kinds
    base         opening and creating a file, transactions, identity checks, the vocabulary, the writers' lock
    reads        one latent's record, examples, labels and scores
    queries      pages of latents (sort, filter), counts, full-text search, concept matches
    writes       labels, scores, recommended strengths, concept matches
    presets      steering presets
    embeddings   label embeddings (search by meaning)
    maps         2-d layouts for the web app's map
    rows         the typed rows the build writes
    buildwrites  the build's writes: metadata, vocabulary, blocks of latents
    windows      each example window stored once (schema version 3), and converting a version-2 store
"""

from __future__ import annotations

from features.store.base import StoreBase, writer_lock
from features.store.buildwrites import StoreBuildWrites
from features.store.embeddings import StoreLabelEmbeddings
from features.store.errors import (
    FeatureIndexError,
    FeatureNotWrittenError,
    StoreError,
    StoreMismatchError,
    StoreReadOnlyError,
)
from features.store.maps import StoreFeatureMaps
from features.store.presets import StorePresets
from features.store.queries import StoreQueries
from features.store.reads import StoreReads
from features.store.rows import ExampleRow, FeatureRow, HistogramRow, LogitRow, NeighbourRow, SearchTextRow
from features.store.schema import SCHEMA_VERSION, connect
from features.store.writes import StoreWrites

__all__ = [
    "FeatureStore", "StoreBase", "SCHEMA_VERSION", "connect", "writer_lock",
    "StoreError", "StoreMismatchError", "FeatureIndexError", "FeatureNotWrittenError", "StoreReadOnlyError",
    "FeatureRow", "HistogramRow", "ExampleRow", "LogitRow", "NeighbourRow", "SearchTextRow",
]


class FeatureStore(StoreReads, StoreQueries, StoreWrites, StorePresets, StoreLabelEmbeddings, StoreFeatureMaps,
                   StoreBuildWrites):
    """A feature store file. Use `FeatureStore.open(...)`; building is `features.build_feature_store`."""
