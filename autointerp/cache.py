"""A persistent cache of judge responses, so a re-run or a resumed run pays for nothing twice.

One SQLite file (WAL mode). The key is the SHA-256 of a canonical JSON of the backend kind, the
model and the full request (messages, temperature, max_tokens, response format...): any change in
a prompt is a new key. Every response the server completed is stored, the moment it arrives and
in its own transaction, so after a crash (even SIGKILL) only requests still in flight are sent
again. Invalid answers are cached too: re-asking is a new request (the conversation grows), so
re-running reproduces the same path through the cache without paying again. Each entry also keeps
the settings its request went with beyond the key (a reasoning model's switch to
max_completion_tokens and no temperature), so a re-run's provenance says how its answers were asked,
and whether the server sent reasoning beside the answer (and how many tokens it said were thinking),
so a cached reply is read as the fresh one was (`Judge.complete`: a reply cut at the limit after
sent reasoning is an answer, not a draft inside thinking).

What each entry keeps beyond the first schema lives in tables of its own beside `responses`, added
when a file is opened: a cache written before reads on (its entries have none: read as they were
then), and an older saesteer reads and writes a newer cache as before (no format bump to refuse).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ResponseCache", "CachedResponse", "cache_beside", "check_cache_file", "request_key"]


def request_key(request: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of a request (sorted keys, no whitespace)."""
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    text: str | None
    refusal: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    # the settings the request went with beyond its key (`Judge.settings_for`: a reasoning model's
    # switches); None in an entry stored before they were recorded
    settings_sent: dict[str, Any] | None = None
    # the server sent reasoning beside the answer / said this many output tokens were thinking
    # (`wire.ChatResponse`); False / 0 in an entry stored before they were recorded
    reasoned: bool = False
    reasoning_tokens: int = 0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT,
    refusal TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
);
-- beside `responses`, not a column of it: a cache from before has none, and an older saesteer still
-- writes `responses` rows as it did
CREATE TABLE IF NOT EXISTS settings_sent (key TEXT PRIMARY KEY, settings TEXT NOT NULL);
-- a row only for a reply with reasoning (sent apart, or counted): none reads as none
CREATE TABLE IF NOT EXISTS reasoning (key TEXT PRIMARY KEY, reasoned INTEGER NOT NULL, tokens INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""
_FORMAT = "saesteer-judge-cache-1"


def cache_beside(path: str | os.PathLike) -> Path:
    """The judge cache a command keeps beside a file it works on (the store): `<path>.judge-cache.sqlite`."""
    path = Path(path)
    return path.with_name(path.name + ".judge-cache.sqlite")


def check_cache_file(path: str | os.PathLike) -> None:
    """Refuse (ValueError) a file at `path` that is no judge response cache, by reading it only: a
    command says so before its model loads, and `ResponseCache` before it writes its tables (and WAL
    mode) into another SQLite file given as the cache, such as a feature store. No file: nothing to say."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; the judge response cache is one file: point --judge-cache-path at a file")
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        db = sqlite3.connect(str(path))
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            fmt = db.execute("SELECT v FROM meta WHERE k='format'").fetchone() if {"responses", "meta"} <= tables else None
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{path}: cannot open the judge response cache ({e}); "
                         "delete it or choose another --judge-cache-path") from None
    # every cache saesteer writes has both (`_SCHEMA`); another tool's file may have a `responses` table too
    lacks = [name for name in ("responses", "meta") if name not in tables]
    if tables and lacks:
        raise ValueError(f"{path} is not a saesteer judge cache (its tables: {', '.join(sorted(tables)[:4])}"
                         f"{', ...' if len(tables) > 4 else ''}; it has no {' and no '.join(lacks)} table); "
                         "point --judge-cache-path at another file")
    if fmt is not None and fmt[0] != _FORMAT:
        raise ValueError(f"{path}: not a saesteer judge cache (format {fmt[0]!r}); point --judge-cache-path at another file")


class ResponseCache:
    """`get(key)` / `put(key, model, response)`; thread-safe; `path=None` keeps it in memory."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            check_cache_file(self.path)  # before anything is written into a file of another kind
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path) if self.path else ":memory:", check_same_thread=False)
        try:
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a committed answer survives a killed process (not power loss)
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT v FROM meta WHERE k='format'").fetchone()
            if row is None:
                with self._db:
                    self._db.execute("INSERT INTO meta VALUES ('format', ?)", (_FORMAT,))
            elif row[0] != _FORMAT:
                raise ValueError(f"{self.path}: not a saesteer judge cache (format {row[0]!r}); "
                                 "point --judge-cache-path at another file")
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise ValueError(f"{self.path}: cannot open the judge response cache ({e}); "
                             "delete it or choose another --judge-cache-path") from None
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> CachedResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, refusal, finish_reason, prompt_tokens, completion_tokens, s.settings, r.reasoned, r.tokens "
                "FROM responses LEFT JOIN settings_sent AS s USING (key) LEFT JOIN reasoning AS r USING (key) "
                "WHERE key=?",
                (key,),
            ).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return CachedResponse(*row[:5], json.loads(row[5]) if row[5] else None,
                                  reasoned=bool(row[6]), reasoning_tokens=int(row[7] or 0))

    def contains(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM responses WHERE key=?", (key,)).fetchone() is not None

    def put(self, key: str, model: str, resp: CachedResponse) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?)",
                (key, model, resp.text, resp.refusal, resp.finish_reason,
                 int(resp.prompt_tokens), int(resp.completion_tokens), time.time()),
            )
            self._db.execute("DELETE FROM settings_sent WHERE key=?", (key,))
            if resp.settings_sent is not None:
                self._db.execute("INSERT INTO settings_sent VALUES (?,?)", (key, json.dumps(resp.settings_sent)))
            self._db.execute("DELETE FROM reasoning WHERE key=?", (key,))
            if resp.reasoned or resp.reasoning_tokens:
                self._db.execute("INSERT INTO reasoning VALUES (?,?,?)",
                                 (key, int(bool(resp.reasoned)), int(resp.reasoning_tokens)))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
