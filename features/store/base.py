"""The store's connection: opening and creating a store file, transactions, the build's identity
(SAE and cache fingerprints, the model), latent checks and the vocabulary. `FeatureStore`
(features.store) adds the reads, queries and writes to it."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, TypeVar

from features.store.errors import (
    FeatureIndexError,
    FeatureNotWrittenError,
    StoreError,
    StoreMismatchError,
    StoreReadOnlyError,
)
from features.store.schema import (ADDED_TABLES, FEATURE_COLUMNS, READABLE_VERSIONS, RENAMED_COLUMNS, SCHEMA,
                                   SCHEMA_VERSION, connect, remove_side_files)
from features.tokentext import LABEL_RULE, label_from_rule_1
from saes.errors import note
from saes.fileio import FileLock

_Store = TypeVar("_Store", bound="StoreBase")
LOCK_SUFFIX = ".lock"


def writer_lock(path: str | Path) -> FileLock:
    """The exclusive lock of a store's long-running writers (`features build`, `label`, `features
    upgrade`) on `<store>.lock`, so that a second one is refused at once naming the first, instead of
    both judging or building the same latents. A separate file: SQLite's own locks on the store must
    not be disturbed by opening and closing the database file here. Readers take no lock (WAL: a
    reader sees the last commit, never half of one), nor do one-transaction writes (a steering
    strength, an output score), which SQLite serializes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(path.name + LOCK_SUFFIX), busy=lambda holder: StoreError(
        f"{path} is being written by {holder}; wait for it to finish (or stop it), then run this again"))


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _rename_columns(conn: sqlite3.Connection) -> None:
    """Upgrade a version-1 store to version 2 in one transaction: its latent columns get their new
    names (`RENAMED_COLUMNS`; SQLite updates the indexes with them); nothing else changes (version 3's
    shared windows: `features.store.windows.share_windows`)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, old, new in RENAMED_COLUMNS:
            if old in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}")
        conn.execute("UPDATE schema_version SET version = 2")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        conn.close()
        raise


def _close_connection(conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
    conn.close()
    if readonly:
        remove_side_files(path)


class StoreBase:
    """A feature store file's connection and identity. Use `FeatureStore.open(...)`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self._conn = conn
        # closes the connection on `close()`, or when the store is collected or the process exits unclosed
        # (`serve` keeps its stores open to the end), so that no `-wal`/`-shm` file is left beside the store
        self._finalizer = weakref.finalize(self, _close_connection, conn, Path(path), readonly)
        self.path = Path(path)
        self.readonly = readonly
        self.schema_from = SCHEMA_VERSION  # the schema version the file had when opened (1: upgraded by this open)
        self._lock = threading.RLock()
        self._vocab: list[str] | None = None
        self._writes = 0  # commits through this connection (they do not change its PRAGMA data_version)
        self._current_version: tuple[int, int] | None = None  # of the temp current-label / latest-score tables
        self.meta: dict[str, Any] = {}
        self._file_id = _file_id(self.path)  # the file opened: `replaced()` tells a rebuilt one from it
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
    def open(cls: type[_Store], path: str | Path, readonly: bool = True, *, sae=None, cache=None) -> _Store:
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
            if "disk I/O error" in str(e) or "disk is full" in str(e):  # not the store's fault: it is not read
                raise StoreError(f"could not open {path} ({e}): SQLite writes its index {path.name}-shm beside it "
                                 "to read it; free some disk space (or raise the file size limit, `ulimit -f`), "
                                 "then re-run") from None
            raise StoreError(f"{path} is not a saesteer feature store ({e})") from None
        if version is None:
            conn.close()
            raise StoreError(f"{path} has no schema version; it is not a complete feature store - rebuild it")
        if version[0] == 1 and not readonly:
            _rename_columns(conn)
        elif version[0] == 1:
            conn.close()
            raise StoreError(f"{path} has feature-store schema version 1 (older column names); upgrade it in place "
                             f"with `saesteer features upgrade {path}`")
        elif version[0] not in READABLE_VERSIONS:
            conn.close()
            newer = version[0] > SCHEMA_VERSION
            raise StoreError(
                f"{path} has feature-store schema version {version[0]}, this saesteer reads version {SCHEMA_VERSION}; "
                + ("upgrade saesteer" if newer else "rebuild the store with `saesteer features build ... --overwrite`")
            )
        store = cls(conn, path, readonly)
        store.schema_from = version[0]
        if sae is not None:
            store.check_sae(sae)
        if cache is not None:
            store.check_cache(cache)
        return store

    @classmethod
    def create(cls: type[_Store], path: str | Path, meta: Mapping[str, Any]) -> _Store:
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
                self._finalizer()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def replaced(self) -> bool:
        """Whether the file at `path` is no longer the one this store opened (rebuilt with `features build
        --overwrite`, or removed): this connection still reads the one it opened, whole."""
        return _file_id(self.path) != self._file_id

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
    def schema_version(self) -> int:
        """The file's schema version now (2: every example's window in its row; reads the same)."""
        return int(self.meta["schema_version"])

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

    def check_sae(self, sae, fingerprint: str | None = None) -> None:
        """Refuse (StoreMismatchError) an SAE other than the one this store was built from.
        `fingerprint`: the SAE's, where the caller has hashed it already (its weights are not read again)."""
        from features.fingerprint import sae_fingerprint
        from saes.fingerprint import dtype_of_fingerprint

        fp = sae if isinstance(sae, str) else fingerprint or sae_fingerprint(sae)
        if fp != self.sae_fingerprint:
            built = self.meta.get("sae", {})
            held_as = None if isinstance(sae, str) else dtype_of_fingerprint(sae, self.sae_fingerprint)
            if held_as is not None:  # the same weights in another precision: say so, not two fingerprints
                given, want = (str(d).removeprefix("torch.") for d in (sae.dtype, held_as))
                why = (" (SAELens's from_pretrained and `sae_lens:` load float32 whatever the folder holds)"
                       if given == "float32" else "")
                raise StoreMismatchError(
                    f"{self.path} was built from this SAE's weights in {want}, but the SAE given holds them in "
                    f"{given}{why}; load it as {want} (`resolve_sae(spec, dtype=torch.{want})`, "
                    f"`sae.to(torch.{want})`), use the folder the store was built on "
                    f"({built.get('path') or 'not recorded'}), or build a store for it "
                    f"(`saesteer features build --sae ... --out NEW.db`)")
            raise StoreMismatchError(
                f"{self.path} was built from another SAE (fingerprint {self.sae_fingerprint[:12]}, "
                f"{built.get('architecture')} d_sae={built.get('d_sae')} from {built.get('path') or 'an in-memory SAE'}); "
                f"the SAE given has fingerprint {fp[:12]}. Use the store built for this SAE, or build one with "
                f"`saesteer features build --sae ... --out NEW.db`"
            )
        # same weights at another hook point (a Gemma Scope / OpenAI SAE takes its hook from --hook): the
        # store's statistics, examples and typical maxima describe the latents at the hook it was built at
        hook, built_hook = None if isinstance(sae, str) else (sae.cfg.metadata or {}).get("hook_name"), \
            self.meta.get("sae", {}).get("hook_name")
        if hook and built_hook and hook != built_hook:
            raise StoreMismatchError(f"{self.path} was built at hook point {built_hook}, but the SAE given is used at "
                                     f"{hook}; build a store at {hook} (`saesteer features build`), or, for an SAE "
                                     f"that records no hook of its own, use --hook {built_hook}")

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

    def _check_latent(self, latent: int) -> int:
        try:
            i = int(latent)
        except (TypeError, ValueError):
            raise FeatureIndexError(f"a latent must be an integer, got {latent!r}") from None
        if not 0 <= i < self.d_sae:
            raise FeatureIndexError(
                f"feature {i} is out of range: this store holds latents 0..{self.d_sae - 1} (d_sae={self.d_sae})"
            )
        return i

    def _check_written(self, conn: sqlite3.Connection, i: int) -> sqlite3.Row | tuple:
        row = conn.execute(f"SELECT {', '.join(FEATURE_COLUMNS)}, recommended_strength, strength_source "
                           f"FROM features WHERE latent = ?", (i,)).fetchone()
        if row is None:
            done = conn.execute("SELECT COUNT(*) FROM features").fetchone()[0]
            raise FeatureNotWrittenError(
                f"feature {i} is not in {self.path} yet: the build has written {done} of {self.d_sae} latents; "
                f"finish it by re-running the same `saesteer features build` command"
            )
        return row

    # -- vocabulary ----------------------------------------------------------------------------
    def vocab(self) -> list[str]:
        """Display string of every token id (`features.tokentext.token_label`; empty when the build had
        no tokenizer). Labels of an older rule (meta "vocab_labels") come converted, with a warning."""
        if self._vocab is None:
            with self._lock:
                rows = self._conn.execute("SELECT token_id, text FROM vocab ORDER BY token_id").fetchall()
            out = [""] * (rows[-1][0] + 1 if rows else 0)
            for i, t in rows:
                out[i] = t
            if out and self.meta.get("vocab_labels") != LABEL_RULE:
                out = [label_from_rule_1(t) for t in out]
                note(f"{self.path}: its token labels follow an older rule (parts of characters are "
                     f"shown marked, SentencePiece words may lack their leading space); re-run the "
                     f"`saesteer features build` command that made it, with its model, to rewrite them")
            self._vocab = out
        return self._vocab

    def has_vocab(self) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM vocab LIMIT 1").fetchone() is not None

    def token_str(self, token_id: int) -> str:
        v = self.vocab()
        return v[token_id] if 0 <= token_id < len(v) else (f"<{token_id}>" if token_id >= 0 else "")

    def _has_table(self, c: sqlite3.Connection, name: str) -> bool:
        return c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None

    def integrity_check(self) -> str:
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0]

    def checkpoint_wal(self) -> None:
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
