"""The feature store: one SQLite file per SAE (stdlib sqlite3, WAL mode, FTS5).

    store = FeatureStore.open("features/toy-topk.db")                # read-only by default
    rec = store.feature(4117)                                        # FeatureRecord
    page = store.list_features(sort="freq", filter={"alive_only": True}, offset=0, limit=50)
    hits = store.search("ocean")
    with FeatureStore.open(path, readonly=False) as store:          # auto-interp / steering
        store.write_label(4117, "ocean words", provenance=LabelProvenance(...))

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

Every write happens in one transaction (the build writes `write_block` latents per
transaction, with their examples and search text), and every multi-query read runs inside one
read transaction, so a reader never sees half a batch.

Stores written before `examples.token_offsets` existed stay readable: the column is added when
such a store is opened for writing, and the pieces of their examples are aligned from the window
text and the vocabulary (`features.tokentext.align_pieces`, best effort; the text is exact).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from features.records import (
    ConceptMatch,
    Example,
    FeatureFilter,
    FeatureRecord,
    FeatureStats,
    FeatureSummary,
    Histogram,
    Label,
    LabelProvenance,
    LogitEffects,
    Neighbour,
    ParentLink,
    Score,
    ScoreInput,
    SNIPPET_CLOSE,
    SNIPPET_OPEN,
    SearchHit,
    TokenEffect,
    utc_now,
)
from features.tokentext import align_pieces, pieces_from_offsets
from saes.errors import SaesteerError

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

FEATURE_COLUMNS = (
    "id", "n_fires", "freq", "mean_act", "std_act", "max_act", "sum_act", "typical_max_act", "q50", "q90", "q99",
    "min_pos", "max_pos", "bos_fires", "decoder_norm", "flags", "level", "parent_id", "parent_coact", "parent_cos",
    "parent_method",
)
_EXAMPLE_SELECT = "id, feature_id, kind, rank, activation, quantile, seq_index, position, centre, token_ids, acts, text"
EXAMPLE_COLUMNS = (
    "feature_id", "kind", "rank", "activation", "quantile", "seq_index", "position", "centre", "token_ids", "acts", "text",
    "token_offsets",
)

_SORTS = {
    "id": ("f.id", False),
    "freq": ("f.freq", True),
    "n_fires": ("f.n_fires", True),
    "mean_act": ("f.mean_act", True),
    "max_act": ("f.max_act", True),
    "typical_max_act": ("f.typical_max_act", True),
    "level": ("f.level", False),
    "label": ("label", False),  # through temp.current_label (see _refresh_current)
    "recommended_strength": ("f.recommended_strength", True),
}
_CUR_LABEL = "(SELECT l.label FROM labels l WHERE l.feature_id = f.id ORDER BY l.id DESC LIMIT 1)"
_NOT_NULL = ("f.id", "f.freq", "f.n_fires", "f.max_act")  # sort columns declared NOT NULL
_NULLABLE = ("f.mean_act", "f.typical_max_act", "f.level", "f.recommended_strength")


class StoreError(SaesteerError):
    """A feature store problem; the message says what to do."""


class StoreMismatchError(StoreError, ValueError):
    """The store was built from another SAE or cache than the one given."""


class FeatureIndexError(StoreError, IndexError):
    """A feature id outside 0..d_sae-1."""


class FeatureNotWrittenError(StoreError, KeyError):
    """The build has not written this feature yet."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else ""


class StoreReadOnlyError(StoreError):
    """A write on a store opened read-only."""


def _ints_blob(values) -> bytes:
    return np.asarray(values, dtype="<i4").tobytes()


def _floats_blob(values) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def _fts_query(text: str, mode: str = "AND") -> str:
    words = re.findall(r"\w+", text, flags=re.UNICODE)
    return f" {mode} ".join('"' + w.replace('"', '""') + '"' for w in words)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _none_if_nan(x):
    if x is None:
        return None
    x = float(x)
    return None if x != x else x


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


class FeatureStore:
    """A feature store file. Use `FeatureStore.open(...)`; building is `features.build_feature_store`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self._conn = conn
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._vocab: list[str] | None = None
        self._writes = 0  # commits through this connection (they do not change its PRAGMA data_version)
        self._current_version: tuple[int, int] | None = None  # of the temp current-label / latest-score tables
        self.meta: dict[str, Any] = {}
        self._offsets_column = self._upgrade_examples()
        if not readonly:
            for stmt in ADDED_TABLES:
                self._conn.execute(stmt)
        self.refresh()

    def _upgrade_examples(self) -> str:
        """The SQL for the examples' token offsets: the column, added to an older store opened for
        writing; NULL for an older store opened read-only."""
        cols = {r[1] for r in self._conn.execute("PRAGMA table_info(examples)")}
        if "token_offsets" in cols:
            return "token_offsets"
        if self.readonly:
            return "NULL"
        self._conn.execute("ALTER TABLE examples ADD COLUMN token_offsets BLOB")
        return "token_offsets"

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, readonly: bool = True, *, sae=None, cache=None) -> "FeatureStore":
        """Open an existing store. With `sae` (an SAE, or a fingerprint string) and/or `cache`
        (an ActivationSource, or a fingerprint string) the store must have been built from them,
        else `StoreMismatchError`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no feature store at {path}; build one with `saesteer features build --sae SAE_DIR --cache CACHE_DIR --out {path}`"
            )
        try:
            conn = connect(path, readonly)
            version = conn.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path} is not a saesteer feature store ({e})") from None
        if version is None:
            conn.close()
            raise StoreError(f"{path} has no schema version; it is not a complete feature store - rebuild it")
        if version[0] != SCHEMA_VERSION:
            conn.close()
            newer = version[0] > SCHEMA_VERSION
            raise StoreError(
                f"{path} has feature-store schema version {version[0]}, this saesteer reads version {SCHEMA_VERSION}; "
                + ("upgrade saesteer" if newer else "rebuild the store with `saesteer features build ... --overwrite`")
            )
        store = cls(conn, path, readonly)
        if sae is not None:
            store.check_sae(sae)
        if cache is not None:
            store.check_cache(cache)
        return store

    @classmethod
    def create(cls, path: str | Path, meta: Mapping[str, Any]) -> "FeatureStore":
        """A new, empty store (build_state 'building') with the given metadata. Internal: used by the build."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path, readonly=False)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("INSERT INTO schema_version(version) VALUES (?)", (SCHEMA_VERSION,))
            m = {"schema_version": SCHEMA_VERSION, "build_state": "building", **meta}
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in m.items()])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        return cls(conn, path, readonly=False)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def refresh(self) -> None:
        """Re-read the metadata (another process may have written)."""
        with self._lock:
            self.meta = {k: json.loads(v) for k, v in self._conn.execute("SELECT key, value FROM meta")}

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT; rolled back on error)."""
        if self.readonly:
            raise StoreReadOnlyError(f"{self.path} is open read-only; open it with FeatureStore.open(path, readonly=False)")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._writes += 1

    # -- identity ------------------------------------------------------------------------------
    @property
    def d_sae(self) -> int:
        return int(self.meta["d_sae"])

    @property
    def complete(self) -> bool:
        return self.meta.get("build_state") == "complete"

    @property
    def sae_fingerprint(self) -> str:
        return self.meta["sae_fingerprint"]

    @property
    def cache_fingerprint(self) -> str:
        return self.meta["cache_fingerprint"]

    def recorded_model(self):
        """The model whose activations the store was built from (`saes.identity.ModelIdentity`):
        meta `model_identity`, else (stores from older versions) the model id its cache or SAE
        recorded; None if unknown."""
        from saes.identity import ModelIdentity

        if self.meta.get("model_identity") is not None:
            return ModelIdentity.from_json(self.meta["model_identity"])
        return (ModelIdentity.from_id((self.meta.get("cache") or {}).get("model"))
                or ModelIdentity.from_id((self.meta.get("sae") or {}).get("model_name")))

    def check_sae(self, sae) -> None:
        """Refuse (StoreMismatchError) an SAE other than the one this store was built from."""
        from features.fingerprint import sae_fingerprint

        fp = sae if isinstance(sae, str) else sae_fingerprint(sae)
        if fp != self.sae_fingerprint:
            built = self.meta.get("sae", {})
            raise StoreMismatchError(
                f"{self.path} was built from another SAE (fingerprint {self.sae_fingerprint[:12]}, "
                f"{built.get('architecture')} d_sae={built.get('d_sae')} from {built.get('path') or 'an in-memory SAE'}); "
                f"the SAE given has fingerprint {fp[:12]}. Use the store built for this SAE, or build one with "
                f"`saesteer features build --sae ... --out NEW.db`"
            )

    def check_cache(self, cache) -> None:
        """Refuse (StoreMismatchError) a cache other than the one this store was built from."""
        fp = cache if isinstance(cache, str) else cache.fingerprint
        if fp != self.cache_fingerprint:
            built = self.meta.get("cache", {})
            raise StoreMismatchError(
                f"{self.path} was built from another activation cache (fingerprint {self.cache_fingerprint[:12]}, "
                f"{built.get('path') or built.get('name') or '?'}); the cache given has fingerprint {fp[:12]}. "
                f"Use the matching cache, or rebuild the store with `saesteer features build ... --overwrite`"
            )

    def _check_id(self, feature_id: int) -> int:
        try:
            i = int(feature_id)
        except (TypeError, ValueError):
            raise FeatureIndexError(f"feature id must be an integer, got {feature_id!r}") from None
        if not 0 <= i < self.d_sae:
            raise FeatureIndexError(
                f"feature {i} is out of range: this store holds latents 0..{self.d_sae - 1} (d_sae={self.d_sae})"
            )
        return i

    def _check_written(self, conn: sqlite3.Connection, i: int) -> sqlite3.Row | tuple:
        row = conn.execute(f"SELECT {', '.join(FEATURE_COLUMNS)}, recommended_strength, strength_source "
                           f"FROM features WHERE id = ?", (i,)).fetchone()
        if row is None:
            done = conn.execute("SELECT COUNT(*) FROM features").fetchone()[0]
            raise FeatureNotWrittenError(
                f"feature {i} is not in {self.path} yet: the build has written {done} of {self.d_sae} latents; "
                f"finish it by re-running the same `saesteer features build` command"
            )
        return row

    # -- vocabulary ----------------------------------------------------------------------------
    def vocab(self) -> list[str]:
        """Display string of every token id (empty when the build had no tokenizer)."""
        if self._vocab is None:
            with self._lock:
                rows = self._conn.execute("SELECT token_id, text FROM vocab ORDER BY token_id").fetchall()
            out = [""] * (rows[-1][0] + 1 if rows else 0)
            for i, t in rows:
                out[i] = t
            self._vocab = out
        return self._vocab

    def token_str(self, token_id: int) -> str:
        v = self.vocab()
        return v[token_id] if 0 <= token_id < len(v) else (f"<{token_id}>" if token_id >= 0 else "")

    # -- reading ---------------------------------------------------------------------------------
    def feature(self, feature_id: int) -> FeatureRecord:
        """Everything about one latent. Out of range: FeatureIndexError naming the valid range."""
        i = self._check_id(feature_id)
        with self._read() as c:
            row = self._check_written(c, i)
            r = dict(zip(FEATURE_COLUMNS + ("recommended_strength", "strength_source"), row))
            flags = tuple(r["flags"].split()) if r["flags"] else ()
            stats = FeatureStats(
                n_fires=r["n_fires"], freq=r["freq"], mean_act=r["mean_act"], std_act=r["std_act"], max_act=r["max_act"],
                sum_act=r["sum_act"], typical_max_act=r["typical_max_act"], q50=r["q50"], q90=r["q90"], q99=r["q99"],
                min_pos=r["min_pos"], max_pos=r["max_pos"], bos_fires=r["bos_fires"], decoder_norm=r["decoder_norm"],
                flags=flags,
            )
            h = c.execute("SELECT bin_width, counts FROM histograms WHERE feature_id = ?", (i,)).fetchone()
            hist = Histogram(h[0], json.loads(h[1])) if h else Histogram(0.0, [])
            ex = c.execute(
                f"SELECT {_EXAMPLE_SELECT}, {self._offsets_column} FROM examples WHERE feature_id = ? ORDER BY kind, rank",
                (i,),
            ).fetchall()
            logit_rows = c.execute(
                "SELECT kind, token_id, value FROM logit_effects WHERE feature_id = ? ORDER BY kind, rank", (i,)
            ).fetchall()
            nb = c.execute(
                "SELECT n.kind, n.other_id, n.score, n.count, "
                f"(SELECT l.label FROM labels l WHERE l.feature_id = n.other_id ORDER BY l.id DESC LIMIT 1) "
                f"FROM neighbours n WHERE n.feature_id = ? ORDER BY n.kind, n.rank", (i,),
            ).fetchall()
            children = c.execute(
                "SELECT id, parent_coact, parent_cos, parent_method FROM features WHERE parent_id = ? ORDER BY id", (i,)
            ).fetchall()
            label = self._current_label(c, i)
            scores = self._scores(c, i, label.id if label else None)
        examples = [self._example(e) for e in ex]
        logits = None
        if self.meta.get("logit_method"):
            prom = [TokenEffect(t, self.token_str(t), v) for k, t, v in logit_rows if k == "promoted"]
            supp = [TokenEffect(t, self.token_str(t), v) for k, t, v in logit_rows if k == "suppressed"]
            logits = LogitEffects(prom, supp)
        parent = None
        if r["parent_id"] is not None:
            parent = ParentLink(r["parent_id"], i, r["parent_coact"], r["parent_cos"], r["parent_method"])
        return FeatureRecord(
            id=i,
            stats=stats,
            histogram=hist,
            top_examples=[e for e in examples if e.kind == "top"],
            quantile_examples=[e for e in examples if e.kind == "quantile"],
            negative_examples=[e for e in examples if e.kind == "negative"],
            logits=logits,
            decoder_neighbours=[Neighbour(o, s, cnt, lab) for k, o, s, cnt, lab in nb if k == "decoder"],
            coact_neighbours=[Neighbour(o, s, cnt, lab) for k, o, s, cnt, lab in nb if k == "coact"],
            level=r["level"],
            parent=parent,
            children=[ParentLink(i, cid, pc, pcos, m) for cid, pc, pcos, m in children],
            label=label,
            scores=scores,
            recommended_strength=r["recommended_strength"],
            strength_source=r["strength_source"],
        )

    def _example(self, e) -> Example:
        ids = np.frombuffer(e[9], dtype="<i4").tolist()
        text, offsets = e[11], e[12]
        if text is not None and offsets is not None:
            tokens = pieces_from_offsets(text, np.frombuffer(offsets, dtype="<i4").tolist())
        elif text is not None:  # a store written before the offsets were kept
            tokens = align_pieces(text, [self.token_str(t) for t in ids])
        else:  # built without a tokenizer
            tokens = [self.token_str(t) for t in ids]
        return Example(
            id=e[0], feature_id=e[1], kind=e[2], rank=e[3], activation=e[4], quantile=e[5], seq_index=e[6],
            position=e[7], centre=e[8], token_ids=ids, tokens=tokens,
            acts=np.frombuffer(e[10], dtype="<f4").tolist(), text=text,
        )

    def examples(self, feature_id: int, kind: str | None = None) -> list[Example]:
        """The stored examples of a latent (optionally one kind), ordered by kind and rank."""
        i = self._check_id(feature_id)
        with self._read() as c:
            self._check_written(c, i)
            q = f"SELECT {_EXAMPLE_SELECT}, {self._offsets_column} FROM examples WHERE feature_id = ?"
            args: list[Any] = [i]
            if kind is not None:
                q += " AND kind = ?"
                args.append(kind)
            rows = c.execute(q + " ORDER BY kind, rank", args).fetchall()
        return [self._example(e) for e in rows]

    def promoted_tokens(self, ids: Iterable[int], top: int = 10) -> dict[int, list[TokenEffect]]:
        """The `top` tokens each given latent promotes most (logit effects), best first; {} when the
        store has no logit effects."""
        ids = [self._check_id(i) for i in dict.fromkeys(ids)]
        if not ids or not self.meta.get("logit_method"):
            return {}
        out: dict[int, list[TokenEffect]] = {i: [] for i in ids}
        with self._read() as c:
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                rows = c.execute(
                    f"SELECT feature_id, token_id, value FROM logit_effects WHERE kind = 'promoted' AND rank < ? "
                    f"AND feature_id IN ({','.join('?' * len(chunk))}) ORDER BY feature_id, rank", [int(top), *chunk],
                ).fetchall()
                for f, t, v in rows:
                    out[f].append(TokenEffect(t, self.token_str(t), v))
        return out

    def _current_label(self, c: sqlite3.Connection, i: int) -> Label | None:
        row = c.execute(
            "SELECT l.id, l.label, l.explanation, l.created_at, l.provenance_id, p.judge_model, p.judge_kind, "
            "p.prompt_version, p.examples_used, p.params, p.created_at, p.extra FROM labels l "
            "LEFT JOIN label_provenance p ON p.id = l.provenance_id WHERE l.feature_id = ? ORDER BY l.id DESC LIMIT 1",
            (i,),
        ).fetchone()
        if row is None:
            return None
        prov = None
        if row[4] is not None:
            prov = LabelProvenance(row[5], row[6], row[7], json.loads(row[8]), json.loads(row[9]), row[10], json.loads(row[11]))
        return Label(row[0], i, row[1], row[2], row[3], prov, row[4])

    def _scores(self, c: sqlite3.Connection, i: int, label_id: int | None) -> list[Score]:
        rows = c.execute(
            "SELECT s.id, s.label_id, s.method, s.value, s.n_examples, s.details, s.created_at, s.provenance_id, p.offline "
            "FROM scores s LEFT JOIN label_provenance p ON p.id = s.provenance_id "
            "WHERE s.feature_id = ? AND (s.label_id IS ? OR s.label_id IS NULL) ORDER BY s.id DESC",
            (i, label_id),
        ).fetchall()
        return [
            Score(r[0], i, r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None, r[6], r[7],
                  None if r[8] is None else bool(r[8]))
            for r in rows
        ]

    def label(self, feature_id: int) -> Label | None:
        """The current label of a latent (None when unlabelled)."""
        i = self._check_id(feature_id)
        with self._read() as c:
            self._check_written(c, i)
            return self._current_label(c, i)

    def label_score_methods(self, label_ids: Iterable[int]) -> dict[int, set[str]]:
        """Label id -> the score methods that have rows tied to that label."""
        ids = [int(i) for i in label_ids]
        out: dict[int, set[str]] = {i: set() for i in ids}
        with self._read() as c:
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                q = f"SELECT DISTINCT label_id, method FROM scores WHERE label_id IN ({','.join('?' * len(chunk))})"
                for label_id, method in c.execute(q, chunk).fetchall():
                    out[label_id].add(method)
        return out

    def labels(self, ids: Iterable[int]) -> dict[int, str]:
        """Current label text of each given latent that has one."""
        ids = [self._check_id(i) for i in ids]
        if not ids:
            return {}
        out: dict[int, str] = {}
        with self._read() as c:
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                q = (f"SELECT l.feature_id, l.label FROM labels l WHERE l.feature_id IN ({','.join('?' * len(chunk))}) "
                     f"AND l.id = (SELECT MAX(id) FROM labels m WHERE m.feature_id = l.feature_id)")
                out.update(dict(c.execute(q, chunk).fetchall()))
        return out

    def current_scores(self, ids: Iterable[int], method: str) -> dict[int, float]:
        """The latest `method` score of each given latent's current label (or a label-free one),
        for those that have one: what `feature(i).scores` would show first, in one query per 500
        latents instead of a whole record per latent."""
        ids = [self._check_id(i) for i in ids]
        out: dict[int, float] = {}
        with self._read() as c:
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                q = ("SELECT f.id, (SELECT s.value FROM scores s WHERE s.feature_id = f.id AND s.method = ? AND "
                     "(s.label_id IS NULL OR s.label_id = (SELECT MAX(l.id) FROM labels l WHERE l.feature_id = f.id)) "
                     f"ORDER BY s.id DESC LIMIT 1) FROM features f WHERE f.id IN ({','.join('?' * len(chunk))})")
                out.update((i, float(v)) for i, v in c.execute(q, [method, *chunk]) if v is not None)
        return out

    def _where(self, flt: FeatureFilter) -> tuple[str, list[Any]]:
        cond: list[str] = []
        args: list[Any] = []
        for col, op, val in (("freq", ">=", flt.min_freq), ("freq", "<=", flt.max_freq), ("max_act", ">=", flt.min_max_act),
                             ("level", "=", flt.level), ("parent_id", "=", flt.parent_id)):
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
            cond.append(("" if flt.has_label else "NOT ") + "EXISTS (SELECT 1 FROM labels l WHERE l.feature_id = f.id)")
        if flt.label_contains:
            cond.append("f.id IN (SELECT feature_id FROM temp.current_label WHERE label LIKE ? ESCAPE '\\')")
            args.append(f"%{_like_escape(flt.label_contains)}%")
        if flt.ids is not None:
            ids = [self._check_id(i) for i in flt.ids]
            cond.append(f"f.id IN ({','.join('?' * len(ids))})" if ids else "0")
            args.extend(ids)
        if flt.min_score is not None:
            if not flt.score_method:
                raise ValueError("filter min_score needs score_method (e.g. 'detection')")
            cond.append("f.id IN (SELECT feature_id FROM temp.latest_score WHERE method = ? AND value >= ?)")
            args.extend([flt.score_method, flt.min_score])
        return (" WHERE " + " AND ".join(cond)) if cond else "", args

    def list_features(
        self,
        sort: str = "id",
        filter: FeatureFilter | dict | None = None,  # noqa: A002 - the public name others use
        offset: int = 0,
        limit: int = 50,
        descending: bool | None = None,
    ) -> list[FeatureSummary]:
        """A page of latents. sort: id, freq, n_fires, mean_act, max_act, typical_max_act, level,
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
                    order = f"{expr} {direction}, f.id"  # an indexed column's index serves it: no sort of every row
                else:
                    order = f"{expr} IS NULL, {expr} {direction}, f.id"
                q_ids = f"SELECT f.id FROM features f{where} ORDER BY {order} LIMIT ? OFFSET ?"
                ids = [r[0] for r in c.execute(q_ids, args + [int(limit), int(offset)])]
            # then the page's rows: a label subquery per row of the page, not of the store
            rows = []
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                rows += c.execute(
                    f"SELECT f.id, f.n_fires, f.freq, f.mean_act, f.max_act, f.typical_max_act, f.flags, f.level, "
                    f"f.parent_id, {_CUR_LABEL}, f.recommended_strength FROM features f "
                    f"WHERE f.id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
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
        first = (f"SELECT f.id FROM {table} JOIN features f ON f.id = t.feature_id WHERE {cond}1{extra} "
                 f"ORDER BY {order}, t.feature_id LIMIT ? OFFSET ?")
        ids = [r[0] for r in c.execute(first, cond_args + args + [int(limit), int(offset)])]
        if len(ids) == limit:
            return ids
        n_first = c.execute(f"SELECT COUNT(*) FROM {table} JOIN features f ON f.id = t.feature_id WHERE {cond}1{extra}",
                            cond_args + args).fetchone()[0]
        rest = (f"SELECT f.id FROM features f WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {cond}t.feature_id = f.id)"
                f"{extra} ORDER BY f.id LIMIT ? OFFSET ?")
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
        for stmt in (
            "DROP TABLE IF EXISTS temp.current_label",
            "DROP TABLE IF EXISTS temp.latest_score",
            "CREATE TEMP TABLE current_label (feature_id INTEGER PRIMARY KEY, label_id INTEGER NOT NULL, "
            "label TEXT NOT NULL)",
            "INSERT INTO temp.current_label SELECT l.feature_id, l.id, l.label FROM labels l "
            "JOIN (SELECT feature_id, MAX(id) AS mid FROM labels GROUP BY feature_id) m ON l.id = m.mid",
            "CREATE INDEX temp.current_label_order ON current_label (label, feature_id)",
            "CREATE TEMP TABLE latest_score (method TEXT NOT NULL, feature_id INTEGER NOT NULL, value REAL NOT NULL, "
            "PRIMARY KEY (method, feature_id)) WITHOUT ROWID",
            # a score of an older label says nothing about the label shown beside it: only scores of
            # the current label (or of no label) count
            "INSERT INTO temp.latest_score SELECT s.method, s.feature_id, s.value FROM scores s "
            "JOIN (SELECT s2.feature_id, s2.method, MAX(s2.id) AS mid FROM scores s2 "
            "LEFT JOIN temp.current_label cl ON cl.feature_id = s2.feature_id "
            "WHERE s2.label_id IS NULL OR s2.label_id = cl.label_id GROUP BY s2.feature_id, s2.method) m "
            "ON s.id = m.mid",
            "CREATE INDEX temp.latest_score_order ON latest_score (method, value, feature_id)",
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
        whole tokens, all of them first and any of them when that finds nothing. raw=True passes
        `text` to FTS5 as a query expression."""
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
                        f"{_CUR_LABEL.replace('f.id', 't.rowid')}, f.freq "
                        "FROM feature_fts t JOIN features f ON f.id = t.rowid "
                        f"WHERE feature_fts MATCH ? AND t.rowid IN ({','.join('?' * len(ids))})", (q, *ids),
                    )}
                except sqlite3.OperationalError as e:
                    raise ValueError(f"bad search query {text!r}: {e}") from None
                return [SearchHit(i, -r, details[i][1], details[i][0], details[i][2]) for i, r in ranked]
        return []

    def concept_matches(self, concept: str | None = None) -> list[ConceptMatch]:
        """Stored concept -> latent matches (see `features.concepts`), best first per concept."""
        q = "SELECT concept, feature_id, f1, precision, recall, rank FROM concept_matches"
        args: list[Any] = []
        if concept is not None:
            q += " WHERE concept = ?"
            args.append(concept)
        with self._read() as c:
            rows = c.execute(q + " ORDER BY concept, rank", args).fetchall()
        return [ConceptMatch(*r) for r in rows]

    # -- writing (auto-interp, steering) ---------------------------------------------------------
    def _insert_provenance(self, c: sqlite3.Connection, p: LabelProvenance) -> int:
        created = p.created_at or utc_now()
        cur = c.execute(
            "INSERT INTO label_provenance(judge_model, judge_kind, offline, prompt_version, examples_used, params, "
            "created_at, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (p.judge_model, p.judge_kind, int(p.offline), p.prompt_version, json.dumps([int(x) for x in p.examples_used]),
             json.dumps(p.params, sort_keys=True), created, json.dumps(p.extra, sort_keys=True)),
        )
        return int(cur.lastrowid)

    def write_label(self, feature_id: int, label: str, *, provenance: LabelProvenance, explanation: str | None = None) -> int:
        """Record a new current label for a latent (older ones stay as history); returns its id."""
        i = self._check_id(feature_id)
        if not isinstance(label, str) or not label.strip():
            raise ValueError("label must be a non-empty string")
        if not isinstance(provenance, LabelProvenance):
            raise TypeError("provenance must be a LabelProvenance (judge model, kind, prompt version, examples used)")
        with self.transaction() as c:
            self._check_written(c, i)
            pid = self._insert_provenance(c, provenance)
            lid = int(c.execute(
                "INSERT INTO labels(feature_id, label, explanation, provenance_id, created_at) VALUES (?, ?, ?, ?, ?)",
                (i, label, explanation, pid, provenance.created_at or utc_now()),
            ).lastrowid)
            c.execute("UPDATE feature_fts SET label = ? WHERE rowid = ?", (label, i))
        return lid

    def write_scores(
        self,
        feature_id: int,
        scores: Mapping[str, float] | Iterable[ScoreInput],
        *,
        provenance: LabelProvenance | None = None,
        label_id: int | None | str = "current",
    ) -> list[int]:
        """Record scores (method -> value, or ScoreInput items) for a latent. By default they
        belong to its current label; pass label_id=None for label-free scores."""
        i = self._check_id(feature_id)
        items = [ScoreInput(k, float(v)) for k, v in scores.items()] if isinstance(scores, Mapping) else list(scores)
        for s in items:
            if not isinstance(s, ScoreInput):
                raise TypeError(f"scores must be a mapping or ScoreInput items, got {type(s).__name__}")
            if s.value != s.value:
                raise ValueError(f"score {s.method} is NaN")
        ids = []
        with self.transaction() as c:
            self._check_written(c, i)
            if label_id == "current":
                cur = self._current_label(c, i)
                label_id = cur.id if cur else None
            elif label_id is not None:
                ok = c.execute("SELECT 1 FROM labels WHERE id = ? AND feature_id = ?", (label_id, i)).fetchone()
                if not ok:
                    raise ValueError(f"label {label_id} does not belong to feature {i}")
            pid = self._insert_provenance(c, provenance) if provenance is not None else None
            now = provenance.created_at if provenance and provenance.created_at else utc_now()
            for s in items:
                ids.append(int(c.execute(
                    "INSERT INTO scores(feature_id, label_id, method, value, n_examples, details, provenance_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (i, label_id, s.method, float(s.value), s.n_examples,
                     json.dumps(s.details, sort_keys=True) if s.details is not None else None, pid, now),
                ).lastrowid))
        return ids

    def set_recommended_strength(self, feature_id: int, strength: float | None, *, source: str,
                                 details: dict[str, Any] | None = None) -> None:
        """Steering's calibrated strength for a latent (None clears it); `source` says how it was found."""
        i = self._check_id(feature_id)
        if strength is not None and not np.isfinite(float(strength)):
            raise ValueError(f"strength must be finite, got {strength}")
        with self.transaction() as c:
            self._check_written(c, i)
            c.execute(
                "UPDATE features SET recommended_strength = ?, strength_source = ?, strength_details = ?, "
                "strength_updated_at = ? WHERE id = ?",
                (None if strength is None else float(strength), source, json.dumps(details or {}, sort_keys=True), utc_now(), i),
            )

    def write_concept_matches(self, matches: Iterable[ConceptMatch], source: str | None = None) -> None:
        """Replace the stored matches of every concept present in `matches`."""
        matches = list(matches)
        with self.transaction() as c:
            for concept in {m.concept for m in matches}:
                c.execute("DELETE FROM concept_matches WHERE concept = ?", (concept,))
            c.executemany(
                "INSERT INTO concept_matches(concept, rank, feature_id, f1, precision, recall, source) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(m.concept, m.rank, m.feature_id, m.f1, m.precision, m.recall, source) for m in matches],
            )

    def _has_table(self, c: sqlite3.Connection, name: str) -> bool:
        return c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None

    # -- steering presets ------------------------------------------------------------------------
    def save_preset(self, name: str, record: Mapping[str, Any], *, overwrite: bool = False) -> None:
        """Keep a steering preset (a JSON record, `steering.presets.Preset.to_json()`) under `name`.
        A preset made for another SAE (`record["sae_fingerprint"]`) is refused (StoreMismatchError);
        an existing name is refused unless `overwrite`."""
        fp = record.get("sae_fingerprint")
        if fp != self.sae_fingerprint:
            raise StoreMismatchError(
                f"preset {name!r} was made for the SAE with weights hash {str(fp)[:12]}, but {self.path} describes "
                f"the SAE with hash {self.sae_fingerprint[:12]}; a feature id means nothing in another SAE: save the "
                f"preset again from this store's SAE"
            )
        text = json.dumps(dict(record), sort_keys=True, allow_nan=False)
        now = utc_now()
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS presets (name TEXT PRIMARY KEY, record TEXT NOT NULL, "
                      "created_at TEXT NOT NULL, updated_at TEXT NOT NULL)")
            old = c.execute("SELECT created_at FROM presets WHERE name = ?", (name,)).fetchone()
            if old is not None and not overwrite:
                raise StoreError(f"{self.path} already has a preset named {name!r}; pick another name or overwrite it")
            c.execute("INSERT OR REPLACE INTO presets(name, record, created_at, updated_at) VALUES (?, ?, ?, ?)",
                      (name, text, old[0] if old else now, now))

    def preset_record(self, name: str) -> dict[str, Any] | None:
        """The preset saved under `name` (None if there is none)."""
        with self._read() as c:
            if not self._has_table(c, "presets"):
                return None
            row = c.execute("SELECT record FROM presets WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def preset_names(self) -> list[str]:
        with self._read() as c:
            if not self._has_table(c, "presets"):
                return []
            return [r[0] for r in c.execute("SELECT name FROM presets ORDER BY name")]

    def delete_preset(self, name: str) -> bool:
        """Remove a preset; False if there was none by that name."""
        with self.transaction() as c:
            if not self._has_table(c, "presets"):
                return False
            return c.execute("DELETE FROM presets WHERE name = ?", (name,)).rowcount > 0

    # -- label embeddings and map layouts (tables added to older stores when opened for writing) ----
    def write_label_embeddings(self, model: str, rows: Iterable[tuple[int, int | None, Any]]) -> int:
        """Store (feature id, label id, vector) rows of one embedding model, replacing those latents' old ones."""
        data = []
        for fid, lid, vec in rows:
            v = np.asarray(vec, dtype="<f4").ravel()
            if not np.all(np.isfinite(v)):
                raise ValueError(f"embedding of feature {fid} has non-finite values")
            data.append((model, self._check_id(fid), lid, int(v.size), v.tobytes()))
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO label_embeddings(model, feature_id, label_id, dim, vector) "
                          "VALUES (?, ?, ?, ?, ?)", data)
        return len(data)

    def label_embeddings(self, model: str) -> tuple[list[int], list[int | None], np.ndarray]:
        """(feature ids, label ids, vectors [n, dim]) stored for `model`; empty when none."""
        with self._read() as c:
            if not self._has_table(c, "label_embeddings"):
                return [], [], np.zeros((0, 0), dtype=np.float32)
            rows = c.execute("SELECT feature_id, label_id, dim, vector FROM label_embeddings WHERE model = ? "
                             "ORDER BY feature_id", (model,)).fetchall()
        if not rows:
            return [], [], np.zeros((0, 0), dtype=np.float32)
        dims = {r[2] for r in rows}
        if len(dims) != 1:
            raise StoreError(f"{self.path}: label embeddings of {model!r} have several widths {sorted(dims)}; re-embed them")
        m = np.stack([np.frombuffer(r[3], dtype="<f4") for r in rows])
        return [r[0] for r in rows], [r[1] for r in rows], m

    def embedding_models(self) -> list[str]:
        """Embedding models with stored label vectors, the most vectors first."""
        with self._read() as c:
            if not self._has_table(c, "label_embeddings"):
                return []
            return [r[0] for r in c.execute("SELECT model, COUNT(*) n FROM label_embeddings GROUP BY model "
                                            "ORDER BY n DESC, model")]

    def write_feature_map(self, method: str, rows: Iterable[tuple[int, float, float]], info: Mapping[str, Any]) -> None:
        """Replace the 2-d layout `method` (feature id, x, y) and record how it was made (meta feature_map:<method>)."""
        data = [(method, self._check_id(i), float(x), float(y)) for i, x, y in rows]
        if any(not (np.isfinite(x) and np.isfinite(y)) for _, _, x, y in data):
            raise ValueError("map coordinates must be finite")
        with self.transaction() as c:
            c.execute("DELETE FROM feature_map WHERE method = ?", (method,))
            c.executemany("INSERT INTO feature_map(method, feature_id, x, y) VALUES (?, ?, ?, ?)", data)
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (f"feature_map:{method}", json.dumps(dict(info))))
        self.refresh()

    def feature_map(self, method: str) -> list[tuple[int, float, float]]:
        with self._read() as c:
            if not self._has_table(c, "feature_map"):
                return []
            return [tuple(r) for r in c.execute("SELECT feature_id, x, y FROM feature_map WHERE method = ? ORDER BY feature_id",
                                                (method,))]

    def feature_map_methods(self) -> list[str]:
        with self._read() as c:
            if not self._has_table(c, "feature_map"):
                return []
            return [r[0] for r in c.execute("SELECT DISTINCT method FROM feature_map ORDER BY method")]

    # -- build-side writes -------------------------------------------------------------------------
    def set_meta(self, **items: Any) -> None:
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in items.items()])
        self.refresh()

    def written_blocks(self) -> set[int]:
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT block FROM build_progress")}

    def write_vocab(self, strings: list[str]) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM vocab")
            c.executemany("INSERT INTO vocab(token_id, text) VALUES (?, ?)", list(enumerate(strings)))
        self._vocab = None

    def write_feature_block(self, block: int, first_id: int, end_id: int, features: list[tuple], histograms: list[tuple],
                            examples: list[tuple], logits: list[tuple], neighbours: list[tuple], fts: list[tuple]) -> None:
        """One build transaction: latents [first_id, end_id) with everything that belongs to them."""
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM build_progress WHERE block = ?", (block,)).fetchone():
                return
            c.executemany(f"INSERT INTO features({', '.join(FEATURE_COLUMNS)}) VALUES ({', '.join('?' * len(FEATURE_COLUMNS))})", features)
            c.executemany("INSERT INTO histograms(feature_id, bin_width, counts) VALUES (?, ?, ?)", histograms)
            c.executemany(f"INSERT INTO examples({', '.join(EXAMPLE_COLUMNS)}) VALUES ({', '.join('?' * len(EXAMPLE_COLUMNS))})", examples)
            c.executemany("INSERT INTO logit_effects(feature_id, kind, rank, token_id, value) VALUES (?, ?, ?, ?, ?)", logits)
            c.executemany("INSERT INTO neighbours(feature_id, kind, rank, other_id, score, count) VALUES (?, ?, ?, ?, ?, ?)", neighbours)
            c.executemany("INSERT INTO feature_fts(rowid, label, examples) VALUES (?, ?, ?)", fts)
            c.execute("INSERT INTO build_progress(block, first_id, end_id) VALUES (?, ?, ?)", (block, first_id, end_id))

    def integrity_check(self) -> str:
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0]

    def checkpoint_wal(self) -> None:
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
