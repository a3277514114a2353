"""Exact current activations of a few latents of a TopK SAE, without a full encode when they are off.

Shape key: N rows (token positions), D d_in, F d_sae, M latents read, C candidate latents,
P = M + C, K = k.

What is read: `sae.encode(x)[:, ids]`, bit for bit, for the rows given. Whether latent m is among
a row's k largest pre-activations depends on all F of them; a generation step needs it for a
few rows, and most of the time the latent is off. The bound path computes, in one product, the
M latents and a learned candidate set C of frequently selected latents (`TopKCandidates`): the
k-th largest candidate is a lower bound on the k-th largest of all, so "k candidates exceed its
pre-activation by more than `tol`" proves the latent off without the other F - C columns, where
`tol` (per row) bounds the float rounding of both this product and the SAE's own. When that
settles every row, the read is exactly zero (`read` returns None: callers skip work); otherwise
the full path runs the SAE's own expression over all rows given, and its top k decides, or,
for a few latents or a few needed (row, latent) pairs, a count of the pre-activations above each
one (a latent is selected iff fewer than k exceed it; a tie at the k-th place goes back to the
top k), so values and ties are the SAE's own. `TopKReader.reference` is the eager reference (the
SAE's encode); tests compare the two exactly.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from saes.base import SAE


def b_dec_of(sae: SAE) -> Tensor | None:
    """The decoder bias an SAE subtracts from its input (None when it does not)."""
    return sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else None


def weights_version(sae: SAE) -> tuple:
    """Which encoder weights an SAE holds now (storage and in-place version counters): cached
    bounds are rebuilt when they change, since stale ones could prove a firing latent off."""
    return tuple((t.data_ptr(), t._version) for t in (sae.W_enc, sae.b_enc, sae.b_dec))


class TopKCandidates:
    """Latents a TopK SAE selects most often, learned from the rows its readers fully encoded.

    Shared by every reader of one SAE (`TopKCandidates.of(sae)`), so a reader built for a new
    batch starts with what earlier ones learned; rebuilt when the SAE's encoder weights change.
    A poor candidate set only costs speed, never exactness: the bound it gives is checked
    against the rows at hand."""

    _by_sae: "weakref.WeakKeyDictionary[SAE, TopKCandidates]" = weakref.WeakKeyDictionary()

    def __init__(self, W_DF: Tensor, b_F: Tensor, n_candidates: int, learn_rows: int = 1024,
                 b_dec_D: Tensor | None = None) -> None:
        F_ = W_DF.shape[1]
        self.W_DF, self.b_F = W_DF, b_F
        self.n_candidates = min(F_, n_candidates)
        self.seen_F = torch.zeros(F_, dtype=torch.int64, device=W_DF.device)
        self.in_C_F = torch.zeros(F_, dtype=torch.bool, device=W_DF.device)
        self.C: Tensor | None = None
        self.W_DC: Tensor | None = None
        self.b_C: Tensor | None = None
        self.rows_since_rebuild = 0
        self.rebuild_rows = 256  # selected rows counted between rebuilds of the set (a rebuild copies columns)
        self.learned_rows = 0
        self.learn_rows = learn_rows  # rows learned before readers stop paying for top-k selections to teach it
        self.b_dec_D = b_dec_D
        self.weights_of: tuple = ()
        self._fold_b_dec()

    def _fold_b_dec(self) -> None:
        """Bounds read x itself: pre = x @ W + (b - b_dec @ W), within `tol(x) = err_per_norm *
        ||x|| + err_const` of the SAE's own computed pre-activations (rounding of both
        computations, of the folded bias and of the bound's own sums)."""
        W, b = self.W_DF.double(), self.b_F.double()
        b_dec = self.b_dec_D.double() if self.b_dec_D is not None else W.new_zeros(self.W_DF.shape[0])
        self.b_fold_F = (b - b_dec @ W).to(self.W_DF.dtype)
        eps = torch.finfo(self.W_DF.dtype).eps
        w_max = float(W.norm(dim=0).max())
        D = self.W_DF.shape[0]
        self.err_per_norm = 2.0 * (D + 4) * eps * w_max
        # a bias is one more term of each product's sum, so it carries the sum's error bound too
        big_b = float(self.b_fold_F.abs().max()) + float(b.abs().max())
        self.err_const = (self.err_per_norm * float(b_dec.norm()) + 2.0 * (D + 4) * eps * big_b
                          + torch.finfo(self.W_DF.dtype).tiny)
        self.err_const += 4.0 * eps * (big_b + self.err_const)  # the sum below rounds too

    @classmethod
    def of(cls, sae: SAE, n_candidates: int | None = None) -> "TopKCandidates":
        k = int(sae.cfg.k)
        # an eighth of the latents: the candidates' product costs that much of a full encode, and
        # the k-th largest of them bounds the k-th largest of all tightly enough to settle most rows
        want = n_candidates or max(8 * k, 256, sae.d_sae // 8)
        version = weights_version(sae)
        c = cls._by_sae.get(sae)
        if c is None or c.n_candidates != min(sae.d_sae, want) or c.weights_of != version:
            c = cls(sae.W_enc.detach(), sae.b_enc.detach(), want, b_dec_D=b_dec_of(sae))
            c.weights_of = version
            cls._by_sae[sae] = c
        return c

    @property
    def young(self) -> bool:
        """Still learning: no set yet, or fewer than `learn_rows` rows learned."""
        return self.W_DC is None or self.learned_rows < self.learn_rows

    def learn(self, idx_NK: Tensor, k: int) -> None:
        """Grow the candidate set from the latents the full path selected (most frequent first)."""
        flat = idx_NK.reshape(-1)
        self.seen_F.index_add_(0, flat, torch.ones_like(flat))
        self.rows_since_rebuild += idx_NK.shape[0]
        self.learned_rows += idx_NK.shape[0]
        if self.W_DC is not None and (self.rows_since_rebuild < self.rebuild_rows or bool(self.in_C_F[flat].all())):
            return
        seen = int((self.seen_F > 0).sum())
        if seen < k:
            return
        C = self.seen_F.topk(min(self.n_candidates, seen)).indices
        self.C = C
        self.rows_since_rebuild = 0
        self.in_C_F.zero_()
        self.in_C_F[C] = True
        self.W_DC = self.W_DF[:, C].contiguous()
        self.b_C = self.b_F[C].contiguous()


def _count(compare, values_NX: Tensor, bounds_NM: Tensor) -> Tensor:
    """[N, M]: how many of each row's X values pass `compare` against each of its M bounds
    (one latent, the usual case, without the [N, M, X] broadcast)."""
    if bounds_NM.shape[1] == 1:
        return compare(values_NX, bounds_NM).sum(1, keepdim=True)
    return compare(values_NX.unsqueeze(1), bounds_NM.unsqueeze(2)).sum(-1)


class TopKReader:
    """Exact activations [N, M] of latents `ids_M` of a TopK SAE: `sae.encode(x)[:, ids]`,
    bit for bit (see the module docstring).

    Paths, chosen per call: while the shared candidate set is young, the full path (its top k
    teaches the set); after that, the bound path when it pays (`bound_pays`: at most `bound_rows`
    rows, a candidate set at most half the latents, and a full product of at least
    `min_bound_macs` multiply-adds, below which the bound's extra operations cost more than they
    save), else the full path. Snapshot of the SAE's weights at construction (detached). Not
    thread-safe (counters, a reused buffer)."""

    def __init__(self, sae: SAE, ids_M: Tensor, *, n_candidates: int | None = None, bound_rows: int = 4096,
                 min_bound_macs: int = 0, count_latents: int = 2) -> None:
        self.sae = sae
        self.k = int(sae.cfg.k)
        self.ids_M = ids_M
        self.M = int(ids_M.numel())
        self.W_DF = sae.W_enc.detach()
        self.b_F = sae.b_enc.detach()
        self.D, self.F = self.W_DF.shape
        self.b_dec_D = b_dec_of(sae)
        self.cands = TopKCandidates.of(sae, n_candidates) if n_candidates is None else \
            TopKCandidates(self.W_DF, self.b_F, n_candidates, b_dec_D=self.b_dec_D)
        self.bound_rows = bound_rows
        self.min_bound_macs = min_bound_macs
        self.count_latents = count_latents  # a count costs two passes over F per latent; the top k one per row
        self.W_DM = self.W_DF[:, ids_M].contiguous()
        self.err_per_norm = self.cands.err_per_norm
        c = self.cands
        self.b_fold_hi_M = (c.b_fold_F[ids_M].double() + c.err_const).to(self.W_DF.dtype)  # + the tolerance's constant
        self._bound_of: Tensor | None = None  # the candidate columns _W_DP was built from
        self._W_DP = self._b_P = self.W_DM
        self._buffers: dict[int, Tensor] = {}
        self.keep_rows = 256  # reuse outputs of calls of at most this many rows (generation steps)
        self._pairs_of: tuple | None = None  # (mask, its key, its pairs, one pair per row): see _pairs
        self.full_rows = 0  # rows encoded in full (tests, tuning)
        self.counted_pairs = 0  # needed pairs the full path decided by a count (tests)
        self.bound_hits = 0  # rows the candidate bound alone proved off

    @property
    def W_DC(self) -> Tensor | None:
        return self.cands.W_DC

    def bound_pays(self, n_rows: int) -> bool:
        c = self.cands
        return (not c.young and n_rows <= self.bound_rows and 2 * c.n_candidates <= self.F
                and n_rows * self.D * self.F >= self.min_bound_macs)

    def __call__(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor:
        """`need_NM` (optional, bool): the (row, latent) pairs the caller will use; the others may
        come back as 0 whatever their activation."""
        a_NM = self.read(x_ND, need_NM)
        return x_ND.new_zeros(x_ND.shape[0], self.M) if a_NM is None else a_NM

    def read(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor | None:
        """As calling the reader, or None when the bound proves every needed latent off."""
        N = x_ND.shape[0]
        if self.bound_pays(N) and self.all_off(x_ND, need_NM):
            self.bound_hits += N
            return None
        return self.full(x_ND, need_NM)

    def all_off(self, x_ND: Tensor, need_NM: Tensor | None = None) -> bool:
        """Whether the candidate bound proves every needed latent of every row off: at least k
        candidates above the latent's pre-activation plus the tolerance."""
        W_DP, b_P = self._bound_weights()
        M = self.M
        pre_NP = torch.addmm(b_P, x_ND, W_DP)  # the M latents' columns carry + err_const
        hi_NM = torch.add(pre_NP[:, :M], torch.linalg.vector_norm(x_ND, dim=-1, keepdim=True), alpha=self.err_per_norm)
        if need_NM is not None and M > self.count_latents:  # the batched engine: each row needs a few of many
            rows_P, cols_P = self._pairs(need_NM)
            if rows_P.numel() == 0:
                return True
            above_P = (pre_NP[:, M:].index_select(0, rows_P) > hi_NM[rows_P, cols_P].unsqueeze(1)).sum(1)
            return int(above_P.min()) >= self.k
        above_NM = _count(torch.gt, pre_NP[:, M:], hi_NM)
        if need_NM is None:
            return int(above_NM.min()) >= self.k
        return not bool(((above_NM < self.k) & need_NM).any())

    def _bound_weights(self) -> tuple[Tensor, Tensor]:
        """Encoder columns and (folded) biases of the M latents followed by the candidates
        (rebuilt when the candidate set changes)."""
        W_DC = self.cands.W_DC
        if self._bound_of is not W_DC:
            assert W_DC is not None
            self._W_DP = torch.cat([self.W_DM, W_DC], 1)
            self._b_P = torch.cat([self.b_fold_hi_M, self.cands.b_fold_F[self.cands.C]])
            self._bound_of = W_DC
        return self._W_DP, self._b_P

    def full(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor:
        """The SAE's own encode of every row (its expression, its top k), latents `ids` read out.
        Once the candidate set is mature and few latents are read, a count decides instead of
        the top k: latent m is selected iff fewer than k pre-activations exceed its own, unless a
        tie straddles the k-th place (then the SAE's own top k decides). With more latents but a
        `need_NM` of few pairs (the batched engine: a latent or two per row), the count runs for
        the needed (row, latent) pairs alone (the others come back 0)."""
        self.full_rows += x_ND.shape[0]
        u_ND = x_ND - self.b_dec_D if self.b_dec_D is not None else x_ND
        pre_NF = torch.mm(u_ND, self.W_DF, out=self._buffer(u_ND)).add_(self.b_F)  # the SAE's own expression
        if self.M <= self.count_latents and not self.cands.young:
            pre_NM = pre_NF.index_select(1, self.ids_M)
            above_NM = _count(torch.gt, pre_NF, pre_NM)
            at_least_NM = _count(torch.ge, pre_NF, pre_NM)  # itself included
            selected_NM = above_NM < self.k
            if not bool((selected_NM & (at_least_NM > self.k)).any()):
                return pre_NM.relu_().mul_(selected_NM)
        elif need_NM is not None and not self.cands.young:
            a_NM = self._count_pairs(pre_NF, need_NM)
            if a_NM is not None:
                return a_NM
        vals_NK, idx_NK = pre_NF.topk(self.k, dim=-1, sorted=False)  # the SAE's own selection
        if self.cands.young:
            self.cands.learn(idx_NK, self.k)
        return (vals_NK.relu_()[:, :, None] * (idx_NK[:, :, None] == self.ids_M)).sum(1)

    def _count_pairs(self, pre_NF: Tensor, need_NM: Tensor) -> Tensor | None:
        """[N, M] activations of the needed pairs by a count over their rows (0 elsewhere), or
        None when the count does not pay (more than `count_latents` pairs per row on average: a
        count costs two passes over F per pair, the top k one per row) or a tie straddles a
        needed latent's k-th place (the SAE's own top k decides those)."""
        N = pre_NF.shape[0]
        rows_P, cols_P = self._pairs(need_NM)
        P = rows_P.numel()
        out_NM = pre_NF.new_zeros(N, self.M)
        if P == 0:
            return out_NM
        if P > self.count_latents * N:
            return None
        pre_PF = pre_NF if self._pairs_of[3] else pre_NF.index_select(0, rows_P)  # type: ignore[index]
        v_P1 = pre_NF[rows_P, self.ids_M[cols_P]].unsqueeze(1)
        above_P = (pre_PF > v_P1).sum(1)
        selected_P = above_P < self.k
        if bool((selected_P & ((pre_PF >= v_P1).sum(1) > self.k)).any()):  # >= counts the latent itself
            return None
        out_NM[rows_P, cols_P] = v_P1.squeeze(1).relu_().mul_(selected_P)
        self.counted_pairs += P
        return out_NM

    def _pairs(self, need_NM: Tensor) -> tuple[Tensor, Tensor]:
        """(rows, latent columns) of the needed pairs, row-major; kept for a mask seen last
        (the engine passes the same mask every decode step) while it is not modified."""
        key = (need_NM.data_ptr(), need_NM.shape, need_NM._version)
        if self._pairs_of is None or self._pairs_of[0] is not need_NM or self._pairs_of[1] != key:
            rows_P, cols_P = need_NM.nonzero().unbind(1)
            one_per_row = rows_P.numel() == need_NM.shape[0] and bool((need_NM.sum(1) == 1).all())
            self._pairs_of = (need_NM, key, (rows_P, cols_P), one_per_row)
        return self._pairs_of[2]

    def _buffer(self, u_ND: Tensor) -> Tensor:
        """A reused [N, F] output for calls of at most `keep_rows` rows (generation steps: a fresh
        one of this size costs page faults every step; a big one is not worth keeping)."""
        N = u_ND.shape[0]
        buf = self._buffers.get(N)
        if buf is None or buf.dtype != u_ND.dtype:
            buf = u_ND.new_empty(N, self.F)
            if N <= self.keep_rows:
                if len(self._buffers) >= 4:  # prefills of other lengths: keep a few sizes
                    self._buffers.clear()
                self._buffers[N] = buf
        return buf

    def reference(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor:
        """The eager reference: the SAE's own encode, latents `ids` read out."""
        return self.sae.encode(x_ND).index_select(1, self.ids_M)
