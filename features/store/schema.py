"""The feature store's SQLite schema, one file per SAE (stdlib sqlite3, WAL mode, FTS5).

Schema (version 3; `schema_version` holds it, `meta` the build's identity):

    schema_version(version INTEGER)
    meta(key TEXT PRIMARY KEY, value TEXT)           -- JSON values, see META KEYS below
    features(latent INTEGER PRIMARY KEY,             -- latent index 0..d_sae-1
             n_fires, freq, mean_act, std_act, max_act, sum_act, typical_max_act, q50, q90, q99,
             min_pos, max_pos, bos_fires, decoder_norm,
             flags TEXT,                            -- space-separated: dead dense bos_only single_position
             level, parent_latent, parent_coact, parent_cos, parent_method,   -- Matryoshka (NULL otherwise)
             recommended_strength, strength_source, strength_details, strength_updated_at)  -- steering
    histograms(latent PRIMARY KEY, bin_width REAL, counts TEXT)   -- JSON list; bin i = [i*w, (i+1)*w)
    windows(id INTEGER PRIMARY KEY,                -- each distinct example window once (version 3)
            token_ids BLOB, text TEXT,              -- blob: little-endian int32, one per token
            token_offsets BLOB)                     -- int32 per token: where its piece starts in `text` (features.tokentext)
    example_refs(id INTEGER PRIMARY KEY, latent, kind TEXT ('top'|'quantile'|'negative'), rank,
                 activation REAL, quantile REAL, seq_index, position, centre,
                 window,                            -- windows.id
                 acts BLOB)                         -- little-endian float32 per token; NULL: all 0 (negatives)
    examples                                        -- VIEW: example_refs joined with its window, the columns
                                                    -- version 2's table had (id, ..., centre, token_ids, acts,
                                                    -- text, token_offsets); readers read it, in every version
    vocab(token_id INTEGER PRIMARY KEY, text TEXT)  -- every token shown on its own (`token_label`; logit effects)
    logit_effects(latent, kind ('promoted'|'suppressed'), rank, token_id, value)
    neighbours(latent, kind ('decoder'|'coact'), rank, other_latent, score, count)
    correlations(latent, rank, other_latent, pearson, cossim)   -- Pearson / cosine of activations over all
                                                    -- tokens, descending Pearson (added after version 2 shipped)
    label_provenance(id, judge_model, judge_kind, offline, prompt_version, examples_used JSON,
                     params JSON, created_at, extra JSON)
    labels(id, latent, label, explanation, provenance_id, created_at)   -- newest = current
    scores(id, latent, label_id, method, value, n_examples, details JSON, provenance_id, created_at)
    concept_matches(concept, rank, latent, f1, precision, recall, source)
    build_progress(block INTEGER PRIMARY KEY, first_latent, end_latent)   -- feature blocks written so far
    feature_fts USING fts5(label, examples)         -- rowid = latent
    presets(name TEXT PRIMARY KEY, record JSON, created_at, updated_at)   -- steering presets (`steering.presets`);
                                                    -- made on the first save (stores from older versions have none)

META KEYS: schema_version, build_state ('building'|'complete'), sae_fingerprint,
cache_fingerprint, model_identity (the model the activations came from, `saes.identity`; absent in
stores from older versions), sae (architecture, d_in, d_sae, k, hook_name, model_name,
matryoshka_widths, path: absolute), cache (source description), d_sae, n_rows, context_length, window_before, window_after,
bos_id, build_config, logit_method (or null), coact (how co-activation was sampled), summary (counts per
flag), saesteer_version, built_at.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from features.store.errors import StoreError
from features.store.rows import FeatureRow

SCHEMA_VERSION = 3
# Version 2 kept every example's window (token ids, text, offsets) in its own row of table `examples`:
# the negatives of every latent repeat windows of one small pool, and a token that tops several
# latents is their example each time (24,576 latents: 1.77M example rows, ~58k distinct windows).
# Version 3 keeps each window once (`windows`) and a view `examples` with version 2's columns, so a
# version-2 store reads as it is (`features.store.windows` converts one: `saesteer features upgrade`).
READABLE_VERSIONS = (2, 3)

# Columns renamed since version 1 (a latent's index is called `latent` everywhere): (table, old, new).
# `StoreBase.open` renames them in a version-1 store opened for writing (`saesteer features upgrade`).
RENAMED_COLUMNS = (
    ("features", "id", "latent"), ("features", "parent_id", "parent_latent"),
    ("histograms", "feature_id", "latent"), ("examples", "feature_id", "latent"),
    ("logit_effects", "feature_id", "latent"), ("neighbours", "feature_id", "latent"),
    ("neighbours", "other_id", "other_latent"), ("labels", "feature_id", "latent"),
    ("scores", "feature_id", "latent"), ("concept_matches", "feature_id", "latent"),
    ("build_progress", "first_id", "first_latent"), ("build_progress", "end_id", "end_latent"),
    ("label_embeddings", "feature_id", "latent"), ("feature_map", "feature_id", "latent"),
)

# Tables added after schema version 1 shipped: created in new stores and, when an older store is
# opened for writing, added to it (additive: nothing else changes, older saesteers ignore them).
ADDED_TABLES = (
    # one vector per latent and embedding model, of the label `label_id` (autointerp.semantic)
    "CREATE TABLE IF NOT EXISTS label_embeddings (latent INTEGER NOT NULL, model TEXT NOT NULL, "
    "label_id INTEGER, dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model, latent)) WITHOUT ROWID",
    # 2-d layouts of the latents for the web app's map (saesteer.featuremap)
    "CREATE TABLE IF NOT EXISTS feature_map (method TEXT NOT NULL, latent INTEGER NOT NULL, x REAL NOT NULL, "
    "y REAL NOT NULL, PRIMARY KEY (method, latent)) WITHOUT ROWID",
    # each latent's most correlated latents by activation (features.analysis.activation_correlations);
    # stores built before it have none
    "CREATE TABLE IF NOT EXISTS correlations (latent INTEGER NOT NULL, rank INTEGER NOT NULL, "
    "other_latent INTEGER NOT NULL, pearson REAL NOT NULL, cossim REAL NOT NULL, PRIMARY KEY (latent, rank)) WITHOUT ROWID",
)

# what readers select from (`features.store.reads`): version 2's columns; a NULL acts is a window of zeros
EXAMPLES_VIEW = (
    "CREATE VIEW examples AS SELECT e.id, e.latent, e.kind, e.rank, e.activation, e.quantile, e.seq_index, "
    "e.position, e.centre, w.token_ids, COALESCE(e.acts, zeroblob(length(w.token_ids))) AS acts, w.text, "
    "w.token_offsets FROM example_refs e JOIN windows w ON w.id = e.window"
)

SCHEMA = ("""
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE features (
    latent INTEGER PRIMARY KEY,
    n_fires INTEGER NOT NULL,
    freq REAL NOT NULL,
    mean_act REAL,
    std_act REAL,
    max_act REAL NOT NULL,
    sum_act REAL NOT NULL,
    typical_max_act REAL,
    q50 REAL, q90 REAL, q99 REAL,
    min_pos INTEGER, max_pos INTEGER,
    bos_fires INTEGER NOT NULL,
    decoder_norm REAL NOT NULL,
    flags TEXT NOT NULL DEFAULT '',
    level INTEGER,
    parent_latent INTEGER,
    parent_coact REAL,
    parent_cos REAL,
    parent_method TEXT,
    recommended_strength REAL,
    strength_source TEXT,
    strength_details TEXT,
    strength_updated_at TEXT
);
CREATE INDEX features_freq ON features(freq);
CREATE INDEX features_max_act ON features(max_act);
CREATE INDEX features_parent ON features(parent_latent);
CREATE TABLE histograms (latent INTEGER PRIMARY KEY, bin_width REAL NOT NULL, counts TEXT NOT NULL);
CREATE TABLE windows (
    id INTEGER PRIMARY KEY,
    token_ids BLOB NOT NULL,
    text TEXT,
    token_offsets BLOB
);
CREATE TABLE example_refs (
    id INTEGER PRIMARY KEY,
    latent INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('top', 'quantile', 'negative')),
    rank INTEGER NOT NULL,
    activation REAL NOT NULL,
    quantile REAL,
    seq_index INTEGER NOT NULL,
    position INTEGER NOT NULL,
    centre INTEGER NOT NULL,
    window INTEGER NOT NULL,
    acts BLOB,
    UNIQUE (latent, kind, rank)
);
{EXAMPLES_VIEW};
CREATE TABLE vocab (token_id INTEGER PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE logit_effects (
    latent INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('promoted', 'suppressed')),
    rank INTEGER NOT NULL,
    token_id INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (latent, kind, rank)
) WITHOUT ROWID;
CREATE TABLE neighbours (
    latent INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('decoder', 'coact')),
    rank INTEGER NOT NULL,
    other_latent INTEGER NOT NULL,
    score REAL NOT NULL,
    count INTEGER,
    PRIMARY KEY (latent, kind, rank)
) WITHOUT ROWID;
CREATE TABLE label_provenance (
    id INTEGER PRIMARY KEY,
    judge_model TEXT NOT NULL,
    judge_kind TEXT NOT NULL,
    offline INTEGER NOT NULL,
    prompt_version TEXT NOT NULL,
    examples_used TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at TEXT NOT NULL,
    extra TEXT NOT NULL
);
CREATE TABLE labels (
    id INTEGER PRIMARY KEY,
    latent INTEGER NOT NULL,
    label TEXT NOT NULL,
    explanation TEXT,
    provenance_id INTEGER REFERENCES label_provenance(id),
    created_at TEXT NOT NULL
);
CREATE INDEX labels_feature ON labels(latent, id);
CREATE TABLE scores (
    id INTEGER PRIMARY KEY,
    latent INTEGER NOT NULL,
    label_id INTEGER REFERENCES labels(id),
    method TEXT NOT NULL,
    value REAL NOT NULL,
    n_examples INTEGER,
    details TEXT,
    provenance_id INTEGER REFERENCES label_provenance(id),
    created_at TEXT NOT NULL
);
CREATE INDEX scores_feature ON scores(latent, method, id);
CREATE TABLE concept_matches (
    concept TEXT NOT NULL,
    rank INTEGER NOT NULL,
    latent INTEGER NOT NULL,
    f1 REAL NOT NULL,
    precision REAL NOT NULL,
    recall REAL NOT NULL,
    source TEXT,
    PRIMARY KEY (concept, rank)
) WITHOUT ROWID;
CREATE TABLE build_progress (block INTEGER PRIMARY KEY, first_latent INTEGER NOT NULL, end_latent INTEGER NOT NULL);
CREATE VIRTUAL TABLE feature_fts USING fts5(label, examples, tokenize = 'unicode61');
"""  # noqa: E501
          .replace("{EXAMPLES_VIEW}", EXAMPLES_VIEW) + "".join(t + ";\n" for t in ADDED_TABLES))

FEATURE_COLUMNS = FeatureRow._fields  # the build's columns of `features` (steering writes the others)
EXAMPLE_SELECT = "id, latent, kind, rank, activation, quantile, seq_index, position, centre, token_ids, acts, text"


def latest_label_sql(latent_column: str) -> str:
    """SQL for the latest label of the latent in `latent_column` (a feature's, a neighbour's, a
    correlated latent's): labels are only added, the highest id is the current one."""
    return f"(SELECT l.label FROM labels l WHERE l.latent = {latent_column} ORDER BY l.id DESC LIMIT 1)"


def connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = _connect_readonly(Path(path))
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection. A WAL store is read through `<store>-shm` beside it, which SQLite creates
    on first read; in a folder nobody may write to (a read-only mount, a shared folder of another user)
    it cannot, so such a store is read as an unchanging file (`immutable`), which is what it is there
    unless the folder's owner writes it meanwhile; unless changes are still in its `-wal` file (not
    saved into the store yet: an immutable read would miss them), which is refused, saying what to do."""
    uri = path.resolve().as_uri()
    conn = sqlite3.connect(uri + "?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        return conn
    except sqlite3.OperationalError:
        if os.access(path.parent, os.W_OK):
            raise
        conn.close()
    wal = path.with_name(path.name + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        raise StoreError(f"{path} cannot be read in a read-only folder while changes are pending in {wal.name} beside "
                         "it; open it once where its folder is writable (e.g. `saesteer features list` by its owner), "
                         "or copy the store and that file into a writable folder")
    return sqlite3.connect(uri + "?immutable=1", uri=True, isolation_level=None, check_same_thread=False)


def remove_side_files(path: Path) -> None:
    """Let SQLite remove `<store>-wal` and `<store>-shm` once a read-only connection to a WAL store has
    closed. SQLite deletes them when the last connection closes, but only if that connection may
    write: a read-only one (every browse: `serve`, `features show`) leaves them beside the store. So a
    read-write connection is opened, reads, and closes; it removes them only when no other connection
    (a `label` writing, another reader) has the store open, else leaves them to the last one. Nothing
    is done where the store or its folder cannot be written (it was read `immutable`: no side files)."""
    path = Path(path)
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        return
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=rw", uri=True, timeout=1.0, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")  # opens the WAL, so that closing it cleans up
    except sqlite3.Error:
        pass
    finally:
        conn.close()
