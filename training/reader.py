"""Read an activation cache for training: seeded shuffling, several epochs, bounded memory,
checksums verified before any row of a shard is used, exact resume, data-parallel ranks.

    reader = CacheReader("caches/toy", batch_size=4096, hook="blocks.2.hook_resid_post", seed=0)
    for batch in reader:            # ActivationBatch(acts [B, D] float32, token_ids, positions, seq_index)
        ...
        ckpt["data"] = reader.state_dict()       # small JSON-able dict
    ...
    reader.load_state_dict(ckpt["data"])         # continue with exactly the remaining stream

The stream. Epoch e visits the shards in a seeded random order (a permutation of the shard list
drawn from seed and e). Consecutive shards in that order are grouped into *windows* of at most
`buffer_rows` rows (at least one shard each). A window is read into memory and its rows are put
in a seeded random order (drawn from seed, e and the window's index). The epoch's stream is the
concatenation of its windows' shuffled rows; the whole stream is epoch 0's stream, then epoch 1's,
and so on, so every row appears exactly once per epoch and the order is a function of the seed.

Batches. The stream is cut into consecutive *global* batches of `batch_size * world_size` rows
(batches run across window and epoch boundaries; only the very last one can be short, and it is
dropped with `drop_last`). Rank r yields rows [r*batch_size, (r+1)*batch_size) of each global batch
(a short last batch is split as evenly as possible), so ranks are disjoint, together cover every
row once per epoch, and all yield the same number of batches.

State. The position in the stream is one integer (rows of the global stream consumed), the same on
every rank. `state_dict()` returns it with the settings that define the stream (seed,
buffer_rows, cache identity); `load_state_dict()` refuses a state from a different stream.
Batch size and world size may change across a resume: the remaining stream is the same rows in the
same order.

Disjoint shards instead (`shards=rank_shards(...)`, `saesteer train --dp-partition shards`): each
rank reads its own subset of the shards with world_size=1, so no shard is read twice; each rank's
stream is then its own (its state is per rank), and the global batch is the ranks' batches together.

Transcoders (`target_hook=`): each batch also carries the target hook's rows (`targets`), the same
rows in the same order as `acts` (one permutation, applied to both); the position's identity
names the target hook, so a run over another pair does not resume from it.

Memory: one window (at most max(buffer_rows, largest shard's rows) rows of one hook in the stored
dtype) plus one batch, whatever the cache size. Each shard's SHA-256s are checked (the parts this
reader reads, `training.shardset`) before any of its rows is used, once per reader object
(`verify="always"`: every time the shard is loaded); a bad shard raises `ShardCorruptError` naming it.

Shape key: B batch rows, D d_in, N window rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from saes.errors import SaesteerError
from training.shards import TensorEntry, read_into
from training.shardset import ROW_TENSORS, ShardSet, Verify

STATE_VERSION = 1


class ReaderStateError(SaesteerError, ValueError):
    """A saved reader position that belongs to another stream (cache, hook, seed or shuffle window)."""


# the reader's identity fields -> the config fields (DataConfig / TrainConfig) that set them
_IDENTITY_FIELDS = {"cache": "cache", "hook": "hook", "seed": "seed", "buffer_rows": "reader_buffer_rows",
                    "target_hook": "target_hook"}


class ActivationBatch(NamedTuple):
    """One batch of cached activations. The last three are None unless asked for."""

    acts: torch.Tensor  # [B, D] (float32 unless another dtype was asked for)
    token_ids: torch.Tensor | None = None  # [B] int64: the token at each row
    positions: torch.Tensor | None = None  # [B] int64: position in its context
    seq_index: torch.Tensor | None = None  # [B] int64: global context index in the cache
    targets: torch.Tensor | None = None  # [B, O] a transcoder's target hook rows, paired with acts


def make_batch(acts: torch.Tensor, meta_3B: np.ndarray | None, device: torch.device | None = None,
               targets: torch.Tensor | None = None) -> ActivationBatch:
    """An `ActivationBatch` of acts [B, D] and meta [3, B] (token ids, positions, context indices;
    None: activations only) and a transcoder's targets [B, O], moved to `device` when one is given."""
    if device is not None:
        acts = acts.to(device)
        targets = targets.to(device) if targets is not None else None
    if meta_3B is None:
        return ActivationBatch(acts, targets=targets)
    t = [torch.from_numpy(np.ascontiguousarray(m)) for m in meta_3B]
    if device is not None:
        t = [x.to(device) for x in t]
    return ActivationBatch(acts, t[0], t[1], t[2], targets)


class _Window(NamedTuple):
    shards: tuple[int, ...]  # shard indices, in stream order
    start: int  # first stream row (within the epoch)
    rows: int


def seeded_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, *map(int, keys)])


class CacheReader:
    """Shuffled, resumable, rank-partitioned batches of one hook's activations from a cache.

    Args:
        path: cache directory (must be complete).
        batch_size: rows per batch on this rank.
        hook: which cached hook point (optional when the cache holds one).
        seed: fixes the order of every epoch.
        epochs: passes over the data (None: endless).
        buffer_rows: shuffle window size in rows (memory bound; windows hold whole shards).
        rank, world_size: data-parallel partition (see the module doc).
        with_tokens: also yield token ids, positions and context indices.
        drop_last: drop the final short batch.
        dtype: dtype of yielded activations (None: as stored).
        device: move yielded tensors there.
        verify: "once" (default: each shard's SHA-256s checked once per reader before its rows are
            used), "always" (every time a shard is loaded), or "never".
        target_hook: a transcoder's target hook: batches carry its rows as `targets`.
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        *,
        hook: str | None = None,
        seed: int = 0,
        epochs: int | None = 1,
        buffer_rows: int = 1 << 20,
        rank: int = 0,
        world_size: int = 1,
        with_tokens: bool = False,
        drop_last: bool = False,
        dtype: torch.dtype | None = torch.float32,
        device: str | torch.device | None = None,
        verify: Verify = "once",
        shards: Sequence[int] | None = None,
        target_hook: str | None = None,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size; got rank={rank}, world_size={world_size}")
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be >= 0 or None (endless); got {epochs}")
        if buffer_rows < 1:
            raise ValueError(f"buffer_rows must be positive; got {buffer_rows}")
        self.cache = ShardSet(path, hook, verify=verify, target_hook=target_hook)
        self.path, self.manifest, self.hook = self.cache.path, self.cache.manifest, self.cache.hook
        self.target_hook, self.d_out = self.cache.target_hook, self.cache.d_out
        self.d_in, self.stored_dtype = self.cache.d_in, self.cache.stored_dtype
        self.batch_size = batch_size
        self.seed = int(seed)
        self.epochs = epochs
        self.buffer_rows = int(buffer_rows)
        self.rank = rank
        self.world_size = world_size
        self.with_tokens = with_tokens
        self.drop_last = drop_last
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self._index = _shard_subset(len(self.cache.shards), shards)  # stream position -> cache shard index
        self._shards = [self.cache.shards[i] for i in self._index]
        self._shard_rows = np.array([s.rows for s in self._shards], dtype=np.int64)
        self.rows_per_epoch = int(self._shard_rows.sum())
        self._windows_cache: tuple[int, list[_Window]] | None = None
        self._starts_cache: tuple[int, np.ndarray] | None = None  # (epoch, first stream row of each window)
        self._loaded: tuple[int, int] | None = None  # (epoch, window index)
        self._buf_acts: torch.Tensor | None = None
        self._buf_targets: torch.Tensor | None = None  # [N, O] transcoder targets, same rows as _buf_acts
        self._buf_meta: np.ndarray | None = None  # [3, N] token_ids, positions, seq_index
        self._perm: np.ndarray | None = None
        self._row = 0  # global stream rows consumed

    # -- stream layout -------------------------------------------------------------------
    @property
    def total_rows(self) -> int | None:
        """Rows of the whole stream (None when endless)."""
        return None if self.epochs is None else self.epochs * self.rows_per_epoch

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches this reader yields from its current position (same on every rank)."""
        if self.total_rows is None:
            raise TypeError("an endless reader (epochs=None) has no length")
        left = max(0, self.total_rows - self._row)
        G = self.global_batch_size
        return left // G if self.drop_last else -(-left // G)

    def windows(self, epoch: int) -> list[_Window]:
        """The windows of epoch `epoch`, in stream order."""
        if self._windows_cache and self._windows_cache[0] == epoch:
            return self._windows_cache[1]
        order = seeded_rng(self.seed, epoch).permutation(len(self._shards)) if self._shards else np.empty(0, np.int64)
        out: list[_Window] = []
        cur: list[int] = []
        cur_rows = start = 0
        for s in order:
            r = int(self._shard_rows[s])
            if cur and cur_rows + r > self.buffer_rows:
                out.append(_Window(tuple(cur), start, cur_rows))
                start += cur_rows
                cur, cur_rows = [], 0
            cur.append(int(s))
            cur_rows += r
        if cur:
            out.append(_Window(tuple(cur), start, cur_rows))
        self._windows_cache = (epoch, out)
        return out

    def _window_starts(self, epoch: int, wins: list[_Window]) -> np.ndarray:
        """First stream rows of the epoch's windows, built once per epoch (a 1e9-token cache has
        thousands of windows: rebuilding the list for every batch made a run's bookkeeping
        grow with the square of its length)."""
        if self._starts_cache is None or self._starts_cache[0] != epoch:
            self._starts_cache = (epoch, np.fromiter((w.start for w in wins), dtype=np.int64, count=len(wins)))
        return self._starts_cache[1]

    # -- loading ---------------------------------------------------------------------------
    def _load_window(self, epoch: int, w: int) -> None:
        if self._loaded == (epoch, w):
            return
        win = self.windows(epoch)[w]
        entries = [self.cache.entries(self._index[i]) for i in win.shards]  # every shard checked before any row is used
        N = win.rows
        if self._buf_acts is None or self._buf_acts.shape[0] < N:
            self._buf_acts = torch.empty(N, self.d_in, dtype=self.stored_dtype)
            if self.target_hook is not None:
                self._buf_targets = torch.empty(N, self.d_out, dtype=self.stored_dtype)
            self._buf_meta = np.empty((3, N), dtype=np.int64) if self.with_tokens else None
        r = 0
        for i, ent in zip(win.shards, entries):
            n = self._shards[i].rows
            if n:
                self._read_rows(i, ent, r, n)
            r += n
        self._perm = seeded_rng(self.seed, epoch, w).permutation(N)
        self._loaded = (epoch, w)
        self._hash_ahead(epoch, w)

    def _read_rows(self, i: int, entries: dict[str, TensorEntry], r: int, n: int) -> None:
        """Shard i's n rows into the window buffers at row r (`entries`: its checked header)."""
        with self.cache.open_shard(self._index[i], entries) as (f, ent):
            read_into(f, ent[f"acts/{self.hook}"], self._buf_acts[r:r + n])
            if self.target_hook is not None:
                read_into(f, ent[f"acts/{self.target_hook}"], self._buf_targets[r:r + n])
            if self.with_tokens:
                for j, k in enumerate(ROW_TENSORS):
                    tmp = torch.empty(n, dtype=ent[k].dtype)
                    read_into(f, ent[k], tmp)
                    self._buf_meta[j, r:r + n] = tmp.numpy()

    def _hash_ahead(self, epoch: int, w: int) -> None:
        """Hash the next window's shards in the background while this window is consumed."""
        wins = self.windows(epoch)
        if w + 1 < len(wins):
            nxt = wins[w + 1].shards
        elif self.epochs is None or epoch + 1 < self.epochs:
            nxt = self.windows(epoch + 1)[0].shards
            self._windows_cache = (epoch, wins)  # keep the current epoch's layout cached
        else:
            return
        self.cache.hash_ahead([self._index[i] for i in nxt])

    def close(self) -> None:
        """Stop the background verification thread (also done when the reader is garbage collected)."""
        self.cache.close()

    def _gather(self, a: int, b: int) -> list[tuple[torch.Tensor, np.ndarray | None, torch.Tensor | None]]:
        """Rows [a, b) of the global stream, as (acts, meta, targets) pieces."""
        pieces = []
        R = self.rows_per_epoch
        while a < b:
            epoch, off = divmod(a, R)
            wins = self.windows(epoch)
            starts = self._window_starts(epoch, wins)
            w = int(np.searchsorted(starts, off, side="right")) - 1  # O(log windows) per batch
            win = wins[w]
            self._load_window(epoch, w)
            lo = off - win.start
            hi = min(win.rows, lo + (b - a))
            idx = self._perm[lo:hi]
            t_idx = torch.from_numpy(idx)
            acts = self._buf_acts.index_select(0, t_idx)
            meta = self._buf_meta[:, idx] if self.with_tokens else None
            targets = self._buf_targets.index_select(0, t_idx) if self.target_hook is not None else None
            pieces.append((acts, meta, targets))
            a += hi - lo
        return pieces

    # -- iteration -------------------------------------------------------------------------
    def _rank_range(self, start: int, size: int) -> tuple[int, int]:
        B, W, r = self.batch_size, self.world_size, self.rank
        if size == B * W:
            return start + r * B, start + (r + 1) * B
        return start + (r * size) // W, start + ((r + 1) * size) // W

    def __iter__(self) -> Iterator[ActivationBatch]:
        G = self.global_batch_size
        total = self.total_rows
        if self.rows_per_epoch == 0:
            return
        while total is None or self._row < total:
            size = G if total is None else min(G, total - self._row)
            if size < G and self.drop_last:
                return
            a, b = self._rank_range(self._row, size)
            pieces = self._gather(a, b) if b > a else [self._empty_piece()]
            self._row += size  # before yielding: state_dict() now describes what comes next
            yield self._make_batch(pieces)

    def _empty_piece(self) -> tuple[torch.Tensor, np.ndarray | None, torch.Tensor | None]:
        targets = torch.empty(0, self.d_out, dtype=self.stored_dtype) if self.target_hook is not None else None
        return (torch.empty(0, self.d_in, dtype=self.stored_dtype),
                np.empty((3, 0), np.int64) if self.with_tokens else None, targets)

    def _make_batch(self, pieces) -> ActivationBatch:
        def joined(j: int) -> torch.Tensor:
            t = pieces[0][j] if len(pieces) == 1 else torch.cat([p[j] for p in pieces])
            return t.to(self.dtype) if self.dtype is not None else t

        acts = joined(0)
        targets = joined(2) if self.target_hook is not None else None
        if not self.with_tokens:
            return make_batch(acts, None, self.device, targets)
        meta = pieces[0][1] if len(pieces) == 1 else np.concatenate([p[1] for p in pieces], axis=1)
        return make_batch(acts, meta, self.device, targets)

    # -- resume ----------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        ident = {"cache": self.cache.shards_digest(self._index), "hook": self.hook, "seed": self.seed,
                 "buffer_rows": self.buffer_rows}
        if self.target_hook is not None:  # (an SAE's saved positions stay as they were)
            ident["target_hook"] = self.target_hook
        return ident

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands (JSON-able; identical on every rank)."""
        epoch, off = divmod(self._row, self.rows_per_epoch) if self.rows_per_epoch else (0, 0)
        return {"version": STATE_VERSION, "row": self._row, "epoch": epoch, "row_in_epoch": off, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict()` of a reader over the same stream)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a CacheReader state (version {STATE_VERSION}): {str(state)[:200]}")
        mine = self._identity()
        keys = list(mine) + [k for k in ("target_hook",) if k in state and k not in mine]  # an SAE's vs a pair's
        differ = [k for k in keys if state.get(k) != mine.get(k)]
        if differ:
            lines = []
            for k in differ:
                if k == "cache":  # a digest of every shard's SHA-256: only "another cache" is readable
                    lines.append(f"cache: another cache (its shards hash to {str(state.get(k))[:12]}..., this "
                                 f"one's to {mine[k][:12]}...)")
                else:
                    lines.append(f"{_IDENTITY_FIELDS[k]}: the saved position has {state.get(k)!r}, now {mine.get(k)!r}")
            raise ReaderStateError(
                "the saved reader position belongs to another stream:\n  - " + "\n  - ".join(lines)
                + "\nuse the cache and settings the run started with, or start a new run",
                field=_IDENTITY_FIELDS[differ[0]] if len(differ) == 1 else None)
        row = int(state["row"])
        if row < 0:
            raise ValueError(f"bad reader state row {row}")
        self._row = row

    def seek(self, row: int) -> None:
        """Jump to global stream row `row` (used by tests and tools)."""
        self._row = int(row)


def _shard_subset(n: int, shards: Sequence[int] | None) -> list[int]:
    """The cache shards a reader streams, in cache order (all, or a subset: `rank_shards`)."""
    if shards is None:
        return list(range(n))
    bad = [i for i in shards if not 0 <= int(i) < n]
    if bad or len(set(shards)) != len(shards) or not shards:
        raise ValueError(f"shards must be distinct indices in [0, {n}) and not empty; got {list(shards)[:20]}")
    return sorted(int(i) for i in shards)


def rank_shards(shard_rows: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The shards (indices) of one rank when ranks read disjoint sets of shards: largest first,
    each to the rank with the fewest rows so far (ties: lowest rank), so the ranks' row counts
    differ by at most about one shard. Every rank gets at least one shard."""
    if len(shard_rows) < world_size:
        raise ValueError(f"the cache has {len(shard_rows)} shard(s), fewer than the {world_size} ranks; read by rows "
                         f"(--dp-partition rows) or write the cache with more, smaller shards")
    load = [0] * world_size
    mine: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(shard_rows)), key=lambda j: (-int(shard_rows[j]), j)):
        r = min(range(world_size), key=lambda q: (load[q], len(mine[q]), q))
        mine[r].append(i)
        load[r] += int(shard_rows[i])
    return sorted(mine[rank])
