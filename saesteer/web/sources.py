"""What the web app serves: a list of stores, each with a catalog (reads) and maybe an engine (model runs).

The app never opens a file named by a request. The server is started with a fixed list of stores;
each gets a short id (from its file name, made unique) and requests name stores by that id only.

`Catalog` is what pages and the API read (in worker threads, see `api.py`); `Engine` is what runs the
model (slow, always on that model's `ModelQueue` thread). `saesteer.web.store_source` builds the
first from a feature store, `saesteer.web.model_source` the second from a loaded model and SAE.
"""

from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from saesteer.web.jobs import ModelQueue
from saesteer.web.schemas import (
    FeatureDetail,
    FeatureSummary,
    FireResult,
    Page,
    SteerRequest,
    SteerResult,
    StoreInfo,
    SweepRequest,
    SweepResult,
)

__all__ = ["FeatureQuery", "Catalog", "Engine", "StoreEntry", "make_store_ids"]


@dataclass(frozen=True)
class FeatureQuery:
    """Filters and order for the feature list (already validated against the limits)."""

    sort: str = "latent"
    descending: bool | None = None  # None: the natural order of the column
    label: str | None = None  # substring of the label, case-insensitive
    min_score: float | None = None
    min_freq: float | None = None
    max_freq: float | None = None
    health: str | None = None
    level: int | None = None
    labelled: bool | None = None  # True: only labelled; False: only unlabelled
    offset: int = 0
    limit: int = 50


class Catalog(Protocol):
    def info(self) -> StoreInfo: ...

    def live_info(self) -> dict[str, Any]:
        """The `info` fields another process may change while the server runs (has_labels, score_method),
        read cheaply: asked on every request."""

    def list_features(self, query: FeatureQuery) -> Page[FeatureSummary]: ...

    def feature(self, latent: int) -> FeatureDetail | None:
        """None if `latent` is not a latent of this store."""

    def search(self, text: str, offset: int, limit: int) -> Page[FeatureSummary]: ...

    def summaries(self, indices: Iterable[int], with_scores: bool = True) -> dict[int, FeatureSummary]:
        """Summaries of the given features that exist (unknown indices are left out)."""


class Engine(Protocol):
    """Blocking model work; called only from the model's queue thread."""

    def fire(self, text: str, top_k: int) -> FireResult: ...

    def steer(self, req: SteerRequest) -> SteerResult: ...

    def sweep(self, req: SweepRequest) -> SweepResult: ...


@dataclass
class StoreEntry:
    id: str
    catalog: Catalog
    engine: Engine | None = None
    queue: ModelQueue | None = None  # shared by all stores over the same model
    info: StoreInfo | None = field(default=None)
    browse_only_reason: str | None = None  # why there is no engine (shown on the pages and at start-up)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", self.id):
            raise ValueError(f"StoreEntry.id must be 1-64 lower-case letters, digits, '-' or '_', got {self.id!r}")
        if (self.engine is None) != (self.queue is None):
            raise ValueError("StoreEntry: give both an engine and its model queue, or neither")
        if self.info is None:
            self.info = self.catalog.info()
        reason = None if self.engine is not None else (self.browse_only_reason or "the server runs no model (start it with --model)")
        self.info = self.info.model_copy(update={"id": self.id, "can_steer": self.engine is not None,
                                                 "browse_only_reason": reason})

    def live_info(self) -> StoreInfo:
        """`info` with what another process may have changed since the server started: whether the
        store has labels (a `saesteer label` writing into it beside the server), and whether its file
        was rebuilt (this server keeps showing the one it opened until it is restarted)."""
        store = getattr(self.catalog, "store", None)
        note = None
        if store is not None and hasattr(store, "replaced") and store.replaced():
            name = Path(store.path).name
            note = (f"{name} was rebuilt or replaced after this server opened it; this shows the store it opened. "
                    "Restart `saesteer serve` to show the new one." if Path(store.path).exists() else
                    f"{name} was moved or deleted after this server opened it; this shows the store it opened until "
                    "the server stops.")
        return self.info.model_copy(update={**self.catalog.live_info(), "replaced_note": note})


def make_store_ids(names: Iterable[str]) -> list[str]:
    """URL-safe, unique ids from store names (file stems): 'My SAE.sqlite' -> 'my-sae'."""
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        base = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")[:56] or "store"
        sid, n = base, 2
        while sid in seen:
            sid, n = f"{base}-{n}", n + 1
        seen.add(sid)
        out.append(sid)
    return out
