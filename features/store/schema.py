"""The feature store's SQLite schema, one file per SAE (stdlib sqlite3, WAL mode, FTS5).

Schema (version 1; `schema_version` holds it, `meta` the build's identity):

    schema_version(version INTEGER)
    meta(key TEXT PRIMARY KEY, value TEXT)           -- JSON values, see META KEYS below
    features(id INTEGER PRIMARY KEY,                 -- latent index 0..d_sae-1
             n_fires, freq, mean_act, std_act, max_act, sum_act, typical_max_act, q50, q90, q99,
             min_pos, max_pos, bos_fires, decoder_norm,
             flags TEXT,                            -- space-separated: dead dense bos_only single_position
             level, parent_id, parent_coact, parent_cos, parent_method,   -- Matryoshka (NULL otherwise)
             recommended_strength, strength_source, strength_details, strength_updated_at)  -- steering
    histograms(feature_id PRIMARY KEY, bin_width REAL, counts TEXT)   -- JSON list; bin i = [i*w, (i+1)*w)
    examples(id INTEGER PRIMARY KEY, feature_id, kind TEXT ('top'|'quantile'|'negative'), rank,
             activation REAL, quantile REAL, seq_index, position, centre,
             token_ids BLOB, acts BLOB, text TEXT,   -- blobs: little-endian int32 / float32, one per token
             token_offsets BLOB)  -- int32 per token: where its piece starts in `text` (see features.tokentext)
    vocab(token_id INTEGER PRIMARY KEY, text TEXT)  -- every token decoded on its own (logit effects)
    logit_effects(feature_id, kind ('promoted'|'suppressed'), rank, token_id, value)
    neighbours(feature_id, kind ('decoder'|'coact'), rank, other_id, score, count)
    label_provenance(id, judge_model, judge_kind, offline, prompt_version, examples_used JSON,
                     params JSON, created_at, extra JSON)
    labels(id, feature_id, label, explanation, provenance_id, created_at)   -- newest = current
    scores(id, feature_id, label_id, method, value, n_examples, details JSON, provenance_id, created_at)
    concept_matches(concept, rank, feature_id, f1, precision, recall, source)
    build_progress(block INTEGER PRIMARY KEY, first_id, end_id)   -- feature blocks written so far
    feature_fts USING fts5(label, examples)         -- rowid = feature id
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

import sqlite3
from pathlib import Path

from features.store.rows import ExampleRow, FeatureRow

SCHEMA_VERSION = 1

# Tables added after schema version 1 shipped: created in new stores and, when an older store is
# opened for writing, added to it (additive: nothing else changes, older saesteers ignore them).
ADDED_TABLES = (
    # one vector per latent and embedding model, of the label `label_id` (autointerp.semantic)
    "CREATE TABLE IF NOT EXISTS label_embeddings (feature_id INTEGER NOT NULL, model TEXT NOT NULL, "
    "label_id INTEGER, dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model, feature_id)) WITHOUT ROWID",
    # 2-d layouts of the latents for the web app's map (saesteer.featuremap)
    "CREATE TABLE IF NOT EXISTS feature_map (method TEXT NOT NULL, feature_id INTEGER NOT NULL, x REAL NOT NULL, "
    "y REAL NOT NULL, PRIMARY KEY (method, feature_id)) WITHOUT ROWID",
)

SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE features (
    id INTEGER PRIMARY KEY,
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
    parent_id INTEGER,
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
CREATE INDEX features_parent ON features(parent_id);
CREATE TABLE histograms (feature_id INTEGER PRIMARY KEY, bin_width REAL NOT NULL, counts TEXT NOT NULL);
CREATE TABLE examples (
    id INTEGER PRIMARY KEY,
    feature_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('top', 'quantile', 'negative')),
    rank INTEGER NOT NULL,
    activation REAL NOT NULL,
    quantile REAL,
    seq_index INTEGER NOT NULL,
    position INTEGER NOT NULL,
    centre INTEGER NOT NULL,
    token_ids BLOB NOT NULL,
    acts BLOB NOT NULL,
    text TEXT,
    token_offsets BLOB,
    UNIQUE (feature_id, kind, rank)
);
CREATE TABLE vocab (token_id INTEGER PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE logit_effects (
    feature_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('promoted', 'suppressed')),
    rank INTEGER NOT NULL,
    token_id INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (feature_id, kind, rank)
) WITHOUT ROWID;
CREATE TABLE neighbours (
    feature_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('decoder', 'coact')),
    rank INTEGER NOT NULL,
    other_id INTEGER NOT NULL,
    score REAL NOT NULL,
    count INTEGER,
    PRIMARY KEY (feature_id, kind, rank)
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
    feature_id INTEGER NOT NULL,
    label TEXT NOT NULL,
    explanation TEXT,
    provenance_id INTEGER REFERENCES label_provenance(id),
    created_at TEXT NOT NULL
);
CREATE INDEX labels_feature ON labels(feature_id, id);
CREATE TABLE scores (
    id INTEGER PRIMARY KEY,
    feature_id INTEGER NOT NULL,
    label_id INTEGER REFERENCES labels(id),
    method TEXT NOT NULL,
    value REAL NOT NULL,
    n_examples INTEGER,
    details TEXT,
    provenance_id INTEGER REFERENCES label_provenance(id),
    created_at TEXT NOT NULL
);
CREATE INDEX scores_feature ON scores(feature_id, method, id);
CREATE TABLE concept_matches (
    concept TEXT NOT NULL,
    rank INTEGER NOT NULL,
    feature_id INTEGER NOT NULL,
    f1 REAL NOT NULL,
    precision REAL NOT NULL,
    recall REAL NOT NULL,
    source TEXT,
    PRIMARY KEY (concept, rank)
) WITHOUT ROWID;
CREATE TABLE build_progress (block INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, end_id INTEGER NOT NULL);
CREATE VIRTUAL TABLE feature_fts USING fts5(label, examples, tokenize = 'unicode61');
""" + "".join(t + ";\n" for t in ADDED_TABLES)

FEATURE_COLUMNS = FeatureRow._fields  # the build's columns of `features` (steering writes the others)
EXAMPLE_SELECT = "id, feature_id, kind, rank, activation, quantile, seq_index, position, centre, token_ids, acts, text"
EXAMPLE_COLUMNS = ExampleRow._fields


def connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn

