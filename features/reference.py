"""Eager reference of the streaming pass (for tests): holds every activation of a small cache in
memory and computes the same quantities with plain loops, one event at a time.

It shares nothing with `features.accumulate` but the definitions (and the hash in
`features.hashing`, which defines the random choices), so agreement between the two is a real
check of the vectorised code. Not for real caches: memory is rows x d_sae.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from features.accumulate import NEG_TAG, _skip
from features.config import BuildConfig
from features.hashing import uniform
from features.source import ActivationSource


@dataclass
class ReferenceResult:
    n_rows: int
    acts_RF: Tensor  # dense activations (values <= 0 zeroed)
    seq_R: Tensor
    pos_R: Tensor
    tok_R: Tensor
    n_fires: Tensor
    sum: Tensor
    max: Tensor
    min_pos: Tensor
    max_pos: Tensor
    bos_fires: Tensor
    hist: Tensor
    hist_top: Tensor
    top: list[list[tuple[float, int]]]  # per latent: (value, row) best first
    reservoir: list[list[int | None]]  # per latent: the row in each slot (None: empty)
    neg_rows: list[int | None]  # the row in each pool slot
    neg_mask: Tensor  # [P, F] latents active in each pool row's window

    def window(self, row: int, f: int, cfg: BuildConfig) -> list[float]:
        """Latent f's activation at each position of row's window (0 outside / no row)."""
        c, p = int(self.seq_R[row]), int(self.pos_R[row])
        out = []
        for q in range(p - cfg.window_before, p + cfg.window_after + 1):
            hit = ((self.seq_R == c) & (self.pos_R == q)).nonzero()
            out.append(float(self.acts_RF[int(hit[0, 0]), f]) if hit.numel() else 0.0)
        return out


def _u(seed: int, a: int, b: int) -> Tensor:
    return uniform(seed, torch.tensor([a]), torch.tensor([b]))


def reference_pass(sae, source: ActivationSource, cfg: BuildConfig) -> ReferenceResult:
    A, seq, pos, tok = _encode_all(sae, source)
    R, F = A.shape
    K, Q, H = cfg.top_k, cfg.n_quantile, cfg.hist_bins
    fired = A > 0
    n_fires = fired.sum(0)
    total = A.double().sum(0)
    mx = A.max(0).values
    min_pos = torch.full((F,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    max_pos = torch.full((F,), -1, dtype=torch.int64)
    bos = torch.zeros(F, dtype=torch.int64)
    hist = torch.zeros(F, H, dtype=torch.int64)
    top_of = torch.zeros(F)
    top: list[list[tuple[float, int]]] = []
    reservoir: list[list[int | None]] = []
    for f in range(F):
        rows = fired[:, f].nonzero(as_tuple=True)[0].tolist()
        if rows:
            min_pos[f] = min(int(pos[r]) for r in rows)
            max_pos[f] = max(int(pos[r]) for r in rows)
            if source.bos_id is not None:
                bos[f] = sum(int(tok[r]) == source.bos_id for r in rows)
            m = float(mx[f])
            U = 2.0 ** (math.floor(math.log2(m)) + 1)  # smallest power of two above the max
            top_of[f] = U
            for r in rows:
                hist[f, min(H - 1, int(math.floor(float(A[r, f]) / U * H)))] += 1
        events = sorted(((float(A[r, f]), r) for r in rows), key=lambda t: (-t[0], t[1]))
        top.append(events[:K])
        reservoir.append(_reservoir_slots(rows, Q, cfg.seed, f))
    neg_rows, neg_mask = _negatives(R, fired, seq, pos, cfg)
    return ReferenceResult(R, A, seq, pos, tok, n_fires, total, mx, min_pos, max_pos, bos, hist, top_of, top, reservoir,
                           neg_rows, neg_mask)


def _encode_all(sae, source: ActivationSource):
    """(every row's activations, values <= 0 zeroed; their sequence, position, token)."""
    acts, seqs, poss, toks = [], [], [], []
    for b in source.batches(0, 1):
        acts.append(b.acts_BD)
        seqs.append(b.seq_index_B)
        poss.append(b.positions_B)
        toks.append(b.token_ids_B)
    x = torch.cat(acts)
    with torch.no_grad():
        A = sae.encode(x.to(sae.dtype)).float()
    A = torch.where(A > 0, A, torch.zeros_like(A))
    return A, torch.cat(seqs), torch.cat(poss), torch.cat(toks)


def _reservoir_slots(rows: list[int], Q: int, seed: int, f: int) -> list[int | None]:
    """Latent f's quantile reservoir of Q rows over its firing `rows`: Algorithm L, one event at a time."""
    slots: list[int | None] = [None] * Q
    if Q:
        w = torch.exp(torch.log(_u(seed, f, 0)) / Q)
        nxt = Q + int(_skip(_u(seed, f, 1), w)) + 1
        m_acc = 0
        for t, r in enumerate(rows, 1):
            if t <= Q:
                slots[t - 1] = r
            elif t == nxt:
                j = min(Q - 1, int(math.floor(float(_u(seed, f, 2 + 3 * m_acc)) * Q)))
                slots[j] = r
                w = w * torch.exp(torch.log(_u(seed, f, 3 + 3 * m_acc)) / Q)
                nxt += int(_skip(_u(seed, f, 4 + 3 * m_acc), w)) + 1
                m_acc += 1
    return slots


def _negatives(R: int, fired: Tensor, seq: Tensor, pos: Tensor, cfg: BuildConfig):
    """(the negative pool's rows: Algorithm R over all rows; [P, F] latents active in each one's window)."""
    P = cfg.negative_pool
    neg_rows: list[int | None] = [None] * P
    for r in range(R):
        t = r + 1
        j = t - 1 if t <= P else int(math.floor(float(_u(cfg.seed, r, NEG_TAG)) * t))
        if j < P:
            neg_rows[j] = r
    neg_mask = torch.zeros(P, fired.shape[1], dtype=torch.bool)
    for j, r in enumerate(neg_rows):
        if r is None:
            continue
        c, p = int(seq[r]), int(pos[r])
        inwin = (seq == c) & (pos >= p - cfg.window_before) & (pos <= p + cfg.window_after)
        neg_mask[j] = fired[inwin].any(0)
    return neg_rows, neg_mask
