"""Where the build pass reads activations from: rows in cache order, whole contexts per batch.

Shape key: B rows in the batch, D d_in, C contexts in the batch, L context length, W window.

The pass needs the rows *in cache order* (not shuffled) with their token ids, positions and
context index, so that it can rebuild the token window around any row together with the
latent's activation at every token of it. A batch always holds whole contexts, so a window never
crosses a batch boundary.

Two sources implement `ActivationSource`:
- `CacheSource(cache_dir, hook=None)`: an activation cache written by `training.cache` (the
  shard format of `training.shards`: `acts/<hook>`, `token_ids`, `positions`, `seq_index`,
  `context_tokens`). Shards are read region by region; the SHA-256 of each part of a shard read
  (`training.shardset`) is checked before its rows are used (unless `verify=False`).
- `TensorSource(acts, context_tokens, ...)`: in-memory rows, for tests and small experiments.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor


class ContextBatch(NamedTuple):
    """Rows of whole contexts, in cache order."""

    acts_BD: Tensor  # activations (stored dtype)
    token_ids_B: Tensor  # int64
    positions_B: Tensor  # int64, position within the context
    seq_index_B: Tensor  # int64, global context index
    first_row: int  # global row index of row 0 of the batch
    first_context: int  # global index of the batch's first context
    n_contexts: int


class ActivationSource(Protocol):
    """What the build pass needs from a cache."""

    fingerprint: str  # identity of the cached content (changes when any activation could change)
    hook_name: str | None
    d_in: int
    n_rows: int
    n_contexts: int
    context_length: int
    bos_id: int | None
    description: dict[str, Any]  # shown in the store's metadata (path, model, dataset...)

    def batches(self, start_context: int, contexts_per_batch: int) -> Iterator[ContextBatch]:
        """Batches of whole contexts from context `start_context` (a batch boundary) to the end."""
        ...

    def window_tokens(self, seq_N: Tensor, start_N: Tensor, width: int) -> Tensor:
        """Token ids [N, width] of context seq_N[i] from position start_N[i] (may be negative);
        positions outside the context are -1."""
        ...


def _slice_windows(ctx_NL: Tensor, start_N: Tensor, width: int) -> Tensor:
    """Windows [N, width] of the rows of ctx_NL starting at start_N (-1 outside [0, L))."""
    N, L = ctx_NL.shape
    pos_NW = start_N[:, None] + torch.arange(width)[None, :]
    valid_NW = (pos_NW >= 0) & (pos_NW < L)
    out_NW = ctx_NL.to(torch.int64).gather(1, pos_NW.clamp(0, max(L - 1, 0)))
    return torch.where(valid_NW, out_NW, torch.full_like(out_NW, -1))


# ----------------------------------------------------------------------------------------------
class TensorSource:
    """Rows held in memory: `context_tokens_CL` gives every context; `keep_CL` (default: all)
    says which positions have a row (e.g. False at BOS to mimic `exclude_tokens="bos"`).
    `acts_RD` holds the rows in context-then-position order (R = keep_CL.sum())."""

    def __init__(
        self,
        acts_RD: Tensor,
        context_tokens_CL: Tensor,
        keep_CL: Tensor | None = None,
        *,
        hook_name: str | None = None,
        bos_id: int | None = None,
        contexts_per_chunk: int | None = None,
        name: str = "tensors",
    ) -> None:
        C, L = context_tokens_CL.shape
        keep_CL = torch.ones(C, L, dtype=torch.bool) if keep_CL is None else keep_CL.to(torch.bool)
        if int(keep_CL.sum()) != acts_RD.shape[0]:
            raise ValueError(f"acts has {acts_RD.shape[0]} rows but keep marks {int(keep_CL.sum())} positions")
        self.acts_RD = acts_RD
        self.context_tokens_CL = context_tokens_CL.to(torch.int64)
        self.keep_CL = keep_CL
        seq_R, pos_R = keep_CL.nonzero(as_tuple=True)
        self.seq_R, self.pos_R = seq_R, pos_R
        self.tok_R = self.context_tokens_CL[seq_R, pos_R]
        self.row_start_C = torch.zeros(C + 1, dtype=torch.int64)
        torch.cumsum(keep_CL.sum(1), 0, out=self.row_start_C[1:])
        self.hook_name = hook_name
        self.d_in = acts_RD.shape[1]
        self.n_rows = acts_RD.shape[0]
        self.n_contexts = C
        self.context_length = L
        self.bos_id = bos_id
        # "shards": batches never cross a chunk boundary (mimics the cache's shards)
        self.contexts_per_chunk = contexts_per_chunk or C
        h = hashlib.sha256()
        for t in (acts_RD.contiguous(), self.context_tokens_CL.contiguous(), keep_CL.contiguous()):
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.cpu().numpy().tobytes())
        h.update(json.dumps([hook_name, bos_id, self.contexts_per_chunk]).encode())
        self.fingerprint = h.hexdigest()
        self.description = {"kind": "tensors", "name": name, "rows": self.n_rows, "contexts": C}

    def batches(self, start_context: int, contexts_per_batch: int) -> Iterator[ContextBatch]:
        C = self.n_contexts
        for chunk0 in range(0, C, self.contexts_per_chunk):
            chunk1 = min(C, chunk0 + self.contexts_per_chunk)
            for c0 in range(chunk0, chunk1, contexts_per_batch):
                if c0 < start_context:
                    continue
                c1 = min(chunk1, c0 + contexts_per_batch)
                r0, r1 = int(self.row_start_C[c0]), int(self.row_start_C[c1])
                yield ContextBatch(
                    self.acts_RD[r0:r1], self.tok_R[r0:r1], self.pos_R[r0:r1], self.seq_R[r0:r1], r0, c0, c1 - c0
                )

    def window_tokens(self, seq_N: Tensor, start_N: Tensor, width: int) -> Tensor:
        if seq_N.numel() == 0:
            return torch.empty(0, width, dtype=torch.int64)
        return _slice_windows(self.context_tokens_CL[seq_N], start_N, width)


# ----------------------------------------------------------------------------------------------
class CacheSource:
    """An activation cache directory (see `training.manifest`), read in storage order through
    `training.shardset.ShardSet` (each shard checked before its rows are used)."""

    def __init__(self, path: str | Path, hook: str | None = None, *, verify: bool = True) -> None:
        from training.shardset import ShardSet

        self.cache = ShardSet(path, hook, verify="once" if verify else "never")
        self.path, self.manifest, self.hook_name = self.cache.path, self.cache.manifest, self.cache.hook
        self.shards = self.cache.shards
        s = self.manifest.settings
        self.d_in = self.cache.d_in
        self.n_rows = self.manifest.total_rows
        self.n_contexts = self.manifest.total_contexts
        self.context_length = self.manifest.context_length
        self.bos_id = (s.get("tokenizer") or {}).get("bos_id")
        self.bos_policy = s.get("bos_policy")  # prepend / doc / none (training.text.TextConfig)
        self._row_base = np.concatenate([[0], np.cumsum([sh.rows for sh in self.shards])]).astype(np.int64)
        self.fingerprint = self.cache.fingerprint
        self.description = {
            "kind": "cache",
            "path": str(self.path.resolve()),
            "model": (s.get("model") or {}).get("id"),
            "hook": self.hook_name,
            "dataset": (s.get("dataset") or {}).get("name"),
            "rows": self.n_rows,
            "contexts": self.n_contexts,
            "context_length": self.context_length,
        }

    def recorded_model(self):
        """The model the cache was made with (`saes.identity.ModelIdentity`), or None if unknown."""
        return self.manifest.recorded_model()

    def model_config(self):
        """The config fields of the cache's model that the weight-processing check reads
        (`saes.processing.config_of_record`), or None (a cache from an older version)."""
        return self.manifest.model_config()

    def processing_applied(self):
        """The weight-processing flags the cache's model was loaded with ({flag: bool}), or None (a
        cache from an older version)."""
        return self.manifest.processing_applied()

    # -- reading -------------------------------------------------------------------------------
    @staticmethod
    def _read(fh, entry, first: int = 0, count: int | None = None) -> Tensor:
        from training.shards import read_into

        count = entry.shape[0] - first if count is None else count
        out = torch.empty((count,) + tuple(entry.shape[1:]), dtype=entry.dtype)
        if out.numel():
            read_into(fh, entry, out, first, count)
        return out

    def batches(self, start_context: int, contexts_per_batch: int) -> Iterator[ContextBatch]:
        for i, sh in enumerate(self.shards):
            if sh.first_context + sh.contexts <= start_context or sh.rows == 0:
                continue
            with self.cache.open_shard(i) as (fh, ent):
                seq_R = self._read(fh, ent["seq_index"]).to(torch.int64)
                # rows of context j of this shard: [bounds[j], bounds[j+1])
                local = seq_R - sh.first_context
                bounds = torch.searchsorted(local, torch.arange(sh.contexts + 1))
                for j0 in range(0, sh.contexts, contexts_per_batch):
                    c0 = sh.first_context + j0
                    if c0 < start_context:
                        continue
                    j1 = min(sh.contexts, j0 + contexts_per_batch)
                    r0, r1 = int(bounds[j0]), int(bounds[j1])
                    acts = self._read(fh, ent[f"acts/{self.hook_name}"], r0, r1 - r0)
                    tok = self._read(fh, ent["token_ids"], r0, r1 - r0).to(torch.int64)
                    pos = self._read(fh, ent["positions"], r0, r1 - r0).to(torch.int64)
                    yield ContextBatch(acts, tok, pos, seq_R[r0:r1], int(self._row_base[i]) + r0, c0, j1 - j0)

    def window_tokens(self, seq_N: Tensor, start_N: Tensor, width: int) -> Tensor:
        out = torch.full((seq_N.numel(), width), -1, dtype=torch.int64)
        if seq_N.numel() == 0:
            return out
        firsts = torch.tensor([sh.first_context for sh in self.shards], dtype=torch.int64)
        shard_N = torch.searchsorted(firsts, seq_N, right=True) - 1
        for i in shard_N.unique().tolist():
            sel = (shard_N == i).nonzero(as_tuple=True)[0]
            sh = self.shards[i]
            local = seq_N[sel] - sh.first_context
            with self.cache.open_shard(i) as (fh, ent):  # context tokens are small: one read per shard
                lo, hi = int(local.min()), int(local.max()) + 1
                rows = self._read(fh, ent["context_tokens"], lo, hi - lo)[local - lo]
            out[sel] = _slice_windows(rows, start_N[sel], width)
        return out


# ----------------------------------------------------------------------------------------------
class SyntheticSource:
    """A cache-like stream generated on the fly (nothing held but one chunk): `n_contexts`
    contexts of `context_length` random tokens, activations drawn per chunk of
    `contexts_per_chunk` contexts from a generator seeded with (seed, chunk). Same content for any
    batch size. For benchmarks and memory tests."""

    def __init__(
        self,
        n_contexts: int,
        context_length: int,
        d_in: int,
        *,
        vocab_size: int = 1000,
        seed: int = 0,
        contexts_per_chunk: int = 64,
        dtype: torch.dtype = torch.float16,
        bos_id: int | None = None,
        hook_name: str | None = None,
    ) -> None:
        self.n_contexts, self.context_length, self.d_in = n_contexts, context_length, d_in
        self.n_rows = n_contexts * context_length
        self.vocab_size, self.seed, self.contexts_per_chunk, self.dtype = vocab_size, seed, contexts_per_chunk, dtype
        self.bos_id, self.hook_name = bos_id, hook_name
        ident = [n_contexts, context_length, d_in, vocab_size, seed, contexts_per_chunk, str(dtype), bos_id, hook_name]
        self.fingerprint = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
        self.description = {"kind": "synthetic", "rows": self.n_rows, "contexts": n_contexts}

    def _chunk(self, k: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        c = min(self.contexts_per_chunk, self.n_contexts - k * self.contexts_per_chunk)
        toks = torch.randint(0, self.vocab_size, (c, self.context_length), generator=g)
        if self.bos_id is not None:
            toks[:, 0] = self.bos_id
        acts = torch.randn(c * self.context_length, self.d_in, generator=g).to(self.dtype)
        return toks, acts

    def batches(self, start_context: int, contexts_per_batch: int) -> Iterator[ContextBatch]:
        L, cpc = self.context_length, self.contexts_per_chunk
        for k in range(-(-self.n_contexts // cpc)):
            first = k * cpc
            if first + cpc <= start_context:
                continue
            toks, acts = self._chunk(k)
            c = toks.shape[0]
            for j0 in range(0, c, contexts_per_batch):
                if first + j0 < start_context:
                    continue
                j1 = min(c, j0 + contexts_per_batch)
                n = j1 - j0
                pos = torch.arange(L).repeat(n)
                seq = torch.arange(first + j0, first + j1).repeat_interleave(L)
                yield ContextBatch(acts[j0 * L:j1 * L], toks[j0:j1].reshape(-1), pos, seq, (first + j0) * L, first + j0, n)

    def window_tokens(self, seq_N: Tensor, start_N: Tensor, width: int) -> Tensor:
        out = torch.full((seq_N.numel(), width), -1, dtype=torch.int64)
        chunk_N = seq_N // self.contexts_per_chunk
        for k in chunk_N.unique().tolist():
            sel = (chunk_N == k).nonzero(as_tuple=True)[0]
            toks, _ = self._chunk(k)
            out[sel] = _slice_windows(toks[seq_N[sel] - k * self.contexts_per_chunk], start_N[sel], width)
        return out
