"""The rows the feature build writes, one typed row per table row: the field order is the table's
column order, so `FeatureStore.write_feature_block` builds its INSERTs from the fields and no list of
columns has to be kept in step with positional tuples. They are named tuples: sqlite3 takes them as
they are (no copy per row), and a build writes millions of them."""

from __future__ import annotations

from typing import NamedTuple


class FeatureRow(NamedTuple):
    """A latent's statistics (table `features`; the steering columns are written later, by steering)."""

    latent: int
    n_fires: int
    freq: float
    mean_act: float | None
    std_act: float | None
    max_act: float
    sum_act: float
    typical_max_act: float | None
    q50: float | None
    q90: float | None
    q99: float | None
    min_pos: int | None
    max_pos: int | None
    bos_fires: int
    decoder_norm: float
    flags: str  # space-separated: dead dense bos_only single_position
    level: int | None = None  # Matryoshka level and parent link (None otherwise)
    parent_latent: int | None = None
    parent_coact: float | None = None
    parent_cos: float | None = None
    parent_method: str | None = None


class HistogramRow(NamedTuple):
    latent: int
    bin_width: float
    counts: str  # JSON list; bin i = [i*w, (i+1)*w)


class ExampleRow(NamedTuple):
    """One example: written as a row of `example_refs` naming its window in `windows` (each window
    once, `features.store.windows`), read back through the view `examples`; SQLite assigns its `id`."""

    latent: int
    kind: str  # 'top' | 'quantile' | 'negative'
    rank: int
    activation: float
    quantile: float | None
    seq_index: int
    position: int
    centre: int  # index of `position` in the window
    token_ids: bytes  # little-endian int32 per token
    acts: bytes  # little-endian float32 per token
    text: str | None  # None when built without a tokenizer
    token_offsets: bytes | None  # int32 per token: where its piece starts in `text`


class LogitRow(NamedTuple):
    latent: int
    kind: str  # 'promoted' | 'suppressed'
    rank: int
    token_id: int
    value: float


class NeighbourRow(NamedTuple):
    latent: int
    kind: str  # 'decoder' | 'coact'
    rank: int
    other_latent: int
    score: float
    count: int | None  # coact only: co-firings in this latent's sample of firing events (<= n_quantile)


class CorrelationRow(NamedTuple):
    """One of a latent's most correlated latents by activation (table `correlations`)."""

    latent: int
    rank: int  # 0 = the largest Pearson correlation
    other_latent: int
    pearson: float  # Pearson correlation of the two latents' activations over every token
    cossim: float  # cosine similarity of the same two activation vectors


class SearchTextRow(NamedTuple):
    """A latent's full-text search row (table `feature_fts`, rowid = latent)."""

    latent: int
    label: str
    examples: str  # its top examples' text, one per line


def insert_sql(table: str, columns) -> str:
    """INSERT INTO table(<columns>) VALUES (?, ...); `columns` is a row type (its fields) or the names."""
    cols = getattr(columns, "_fields", columns)
    return f"INSERT INTO {table}({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
