"""Exact current activations of a few latents of a TopK SAE, without a full encode when they are off.

Shape key: N rows (token positions), D d_in, F d_sae, M latents read, C candidate latents,
P = M + C, R rows left open by the bound, K = k.

What is read (the same contract as the threshold and ReLU readers in `steering.interventions`):
- a latent's value is its own pre-activation, `(x - b_dec) @ W_enc[:, ids] + b_enc[ids]` over the
  rows given, after the ReLU;
- it fires where the SAE's own encode of the row alone selects it (`sae.encode_sparse(row)`), so
  what fires never depends on the other rows or latents read alongside.

Deciding whether latent m is among a row's k largest pre-activations, with `tol` (per row) twice
the largest difference between two computations of one pre-activation (float rounding):
- off, certainly: at least k latents exceed it by more than tol, or it is below -tol (the ReLU
  gives 0 whether it is selected or not);
- on, certainly: fewer than k other latents come within tol of it or above;
- otherwise (a near-tie at the k-th place, rare): the SAE's own encode of the row alone decides.

The bound path (small batches: generation steps) first computes the M latents and a learned
candidate set C of frequently selected latents in one product: the k-th largest candidate is a
lower bound on the k-th largest of all, so "k candidates exceed it by more than tol" proves a
latent off without the other F - C columns. Only rows it leaves open (typically those where the
latent does fire) compute their full pre-activation row. `TopKReader.reference` is the eager
reference (every row encoded alone by the SAE); tests compare the two exactly.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from saes.base import SAE


class TopKCandidates:
    """Latents a TopK SAE selects most often, learned from the rows its readers fully encoded.

    Shared by every reader of one SAE (`TopKCandidates.of(sae)`), so a reader built for a new
    batch starts with what earlier ones learned. Stale candidates only cost speed, never
    exactness: the bound they give is checked against the rows at hand."""

    _by_sae: "weakref.WeakKeyDictionary[SAE, TopKCandidates]" = weakref.WeakKeyDictionary()

    def __init__(self, W_DF: Tensor, b_F: Tensor, n_candidates: int, learn_rows: int = 1024) -> None:
        F_ = W_DF.shape[1]
        self.W_DF, self.b_F = W_DF, b_F
        self.n_candidates = min(F_, n_candidates)
        self.seen_F = torch.zeros(F_, dtype=torch.int64, device=W_DF.device)
        self.in_C_F = torch.zeros(F_, dtype=torch.bool, device=W_DF.device)
        self.W_DC: Tensor | None = None
        self.b_C: Tensor | None = None
        self.rows_since_rebuild = 0
        self.rebuild_rows = 256  # selected rows counted between rebuilds of the set (a rebuild copies columns)
        self.learned_rows = 0
        self.learn_rows = learn_rows  # rows learned before readers stop paying for top-k selections to teach it
        # |computed - exact| <= D * eps * ||u|| * ||w|| + eps * |b| for each pre-activation; two
        # computations of the same value differ by at most twice that (per SAE: readers share it)
        eps = torch.finfo(W_DF.dtype).eps
        self.err_per_norm = 2.0 * (W_DF.shape[0] + 2) * eps * float(W_DF.norm(dim=0).max())
        self.err_bias = 4.0 * eps * float(b_F.abs().max()) + torch.finfo(W_DF.dtype).tiny

    @classmethod
    def of(cls, sae: SAE, n_candidates: int | None = None) -> "TopKCandidates":
        k = int(sae.cfg.k)
        # an eighth of the latents: the candidates' product costs that much of a full encode, and
        # the k-th largest of them bounds the k-th largest of all tightly enough to settle most rows
        want = n_candidates or max(8 * k, 256, sae.d_sae // 8)
        c = cls._by_sae.get(sae)
        if c is None or c.n_candidates != min(sae.d_sae, want) or c.W_DF.data_ptr() != sae.W_enc.data_ptr():
            c = cls(sae.W_enc.detach(), sae.b_enc.detach(), want)
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
        self.rows_since_rebuild = 0
        self.in_C_F.zero_()
        self.in_C_F[C] = True
        self.W_DC = self.W_DF[:, C].contiguous()
        self.b_C = self.b_F[C].contiguous()


class TopKReader:
    """Exact activations [N, M] of latents `ids_M` of a TopK SAE (see the module docstring).

    Paths, chosen per call: while the shared candidate set is young, every row computes its full
    pre-activation row and its top k teaches the set; after that, the bound path when it pays
    (`bound_pays`: at most `bound_rows` rows, a candidate set at most half the latents, and a
    full product of at least `min_bound_macs` multiply-adds, below which the bound's extra small
    operations cost more than they save), else the full path without learning. Deciding a full
    row counts (M <= `count_latents`: two passes over F per latent) or uses the row's k+1 largest.
    Snapshot of the SAE's weights at construction (detached). Not thread-safe (counters)."""

    def __init__(self, sae: SAE, ids_M: Tensor, *, n_candidates: int | None = None, bound_rows: int = 4096,
                 count_latents: int = 2, min_bound_macs: int = 0) -> None:
        self.sae = sae
        self.k = int(sae.cfg.k)
        self.ids_M = ids_M
        self.M = int(ids_M.numel())
        self.W_DF = sae.W_enc.detach()
        self.b_F = sae.b_enc.detach()
        self.D, self.F = self.W_DF.shape
        self.b_dec_D = sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else None
        self.cands = TopKCandidates.of(sae, n_candidates) if n_candidates is None else \
            TopKCandidates(self.W_DF, self.b_F, n_candidates)
        self.bound_rows = bound_rows
        self.count_latents = count_latents
        self.min_bound_macs = min_bound_macs
        self.W_DM = self.W_DF[:, ids_M].contiguous()
        self.b_M = self.b_F[ids_M].contiguous()
        self.err_per_norm, self.err_bias = self.cands.err_per_norm, self.cands.err_bias
        self._bound_of: Tensor | None = None  # the candidate columns _W_DP was built from
        self._W_DP = self._b_P = self.W_DM
        self.full_rows = 0  # rows whose full pre-activation row was computed (tests, tuning)
        self.bound_hits = 0  # rows decided by the candidate bound alone
        self.alone_rows = 0  # rows re-encoded alone by the SAE (near-ties)

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
        u_ND = x_ND - self.b_dec_D if self.b_dec_D is not None else x_ND
        N = u_ND.shape[0]
        tol_N1 = torch.linalg.vector_norm(u_ND, dim=-1, keepdim=True).mul_(self.err_per_norm).add_(self.err_bias)
        rows_R = None
        if self.bound_pays(N):
            open_N = self.open_rows(u_ND, tol_N1, need_NM)
            if open_N is None:
                self.bound_hits += N
                return None
            rows_R = open_N.nonzero().squeeze(1)
            self.bound_hits += N - rows_R.numel()
            if rows_R.numel() == N:
                rows_R = None
        on_NM = self._fires(x_ND, u_ND, tol_N1, need_NM, rows_R)
        return torch.addmm(self.b_M, u_ND, self.W_DM).relu_().mul_(on_NM)  # values: the latents' own pre-activations

    def open_rows(self, u_ND: Tensor, tol_N1: Tensor, need_NM: Tensor | None = None) -> Tensor | None:
        """[N] bool: rows with a needed latent that the candidate bound leaves open; None when
        every needed latent of every row is certainly off. `u_ND`: the SAE's input (b_dec removed)."""
        W_DP, b_P = self._bound_weights()
        M = self.M
        pre_NP = torch.addmm(b_P, u_ND, W_DP)
        hi_NM = pre_NP[:, :M] + tol_N1
        if M == 1:
            open_NM = (pre_NP[:, 1:] > hi_NM).sum(1, keepdim=True) < self.k
        else:
            open_NM = (pre_NP[:, None, M:] > hi_NM[:, :, None]).sum(-1) < self.k
        if need_NM is not None:
            open_NM &= need_NM
        open_N = open_NM.squeeze(1) if M == 1 else open_NM.any(1)
        return open_N if bool(open_N.any()) else None

    def _bound_weights(self) -> tuple[Tensor, Tensor]:
        """Encoder columns and biases of the M latents followed by the candidates (rebuilt when
        the candidate set changes)."""
        W_DC = self.cands.W_DC
        if self._bound_of is not W_DC:
            assert W_DC is not None and self.cands.b_C is not None
            self._W_DP = torch.cat([self.W_DM, W_DC], 1)
            self._b_P = torch.cat([self.b_M, self.cands.b_C])
            self._bound_of = W_DC
        return self._W_DP, self._b_P

    def _fires(self, x_ND: Tensor, u_ND: Tensor, tol_N1: Tensor, need_NM: Tensor | None,
               rows_R: Tensor | None) -> Tensor:
        """[N, M] bool: where the SAE (row alone) selects each latent, from the full pre-activation
        rows of `rows_R` (every row when None; the others are off)."""
        if rows_R is None:
            on_NM, undecided_NM = self._decide(u_ND, tol_N1, need_NM)
            rows = None
        else:
            on_RM, undecided_NM = self._decide(u_ND.index_select(0, rows_R), tol_N1.index_select(0, rows_R),
                                               None if need_NM is None else need_NM.index_select(0, rows_R))
            on_NM = on_RM.new_zeros(u_ND.shape[0], self.M).index_copy_(0, rows_R, on_RM)
            rows = rows_R.tolist()
        if undecided_NM is not None:  # a near-tie at the k-th place: the SAE's own encode of the row alone
            for r in undecided_NM.any(1).nonzero().flatten().tolist():
                n = r if rows is None else rows[r]
                on_NM[n] = self._alone(x_ND[n : n + 1])
                self.alone_rows += 1
        return on_NM

    def _decide(self, u_RD: Tensor, tol_R1: Tensor, need_RM: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """From the rows' full pre-activations: [R, M] bool where a latent is certainly selected,
        and the needed (row, latent) pairs neither certainly selected nor certainly off (None if none)."""
        self.full_rows += u_RD.shape[0]
        pre_RF = torch.addmm(self.b_F, u_RD, self.W_DF)  # any computation within the rounding bound will do
        k = self.k
        if k >= self.F:
            return torch.ones(u_RD.shape[0], self.M, dtype=torch.bool, device=u_RD.device), None
        pre_RM = pre_RF.index_select(1, self.ids_M)
        lo_RM = pre_RM - tol_R1
        if self.M <= self.count_latents and not self.cands.young:
            # on: at most k latents (itself included) within tol of it or above
            if self.M == 1:
                on_RM = (pre_RF >= lo_RM).sum(1, keepdim=True) <= k
            else:
                on_RM = (pre_RF.unsqueeze(1) >= lo_RM.unsqueeze(2)).sum(-1) <= k
            open_RM = ~on_RM if need_RM is None else need_RM & ~on_RM
            if not bool(open_RM.any()):
                return on_RM, None
            hi_RM = pre_RM + tol_R1  # off: k latents certainly above it, or certainly below zero
            if self.M == 1:
                sure_RM = (pre_RF > hi_RM).sum(1, keepdim=True)
            else:
                sure_RM = (pre_RF.unsqueeze(1) > hi_RM.unsqueeze(2)).sum(-1)
            open_RM &= (sure_RM < k) & (hi_RM >= 0)
        else:
            vals_RK1, idx_RK1 = pre_RF.topk(k + 1, dim=-1)  # sorted: the k-th and (k+1)-th largest
            if self.cands.young:
                self.cands.learn(idx_RK1[:, :k], k)
            on_RM = vals_RK1[:, k : k + 1] < lo_RM
            hi_RM = pre_RM + tol_R1
            open_RM = ~on_RM & (vals_RK1[:, k - 1 : k] <= hi_RM) & (hi_RM >= 0)
            if need_RM is not None:
                open_RM &= need_RM
        return on_RM, (open_RM if bool(open_RM.any()) else None)

    def _alone(self, x_1D: Tensor) -> Tensor:
        """[M] bool: the SAE's own selection for one row encoded alone."""
        chosen = self.sae.encode_sparse(x_1D).indices_N
        return (chosen.unsqueeze(1) == self.ids_M).any(0)

    def reference(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor:
        """The eager reference: every row encoded alone by the SAE, values from the latents' own
        pre-activations over the rows given."""
        u_ND = x_ND - self.b_dec_D if self.b_dec_D is not None else x_ND
        on_NM = torch.stack([self._alone(x_ND[r : r + 1]) for r in range(x_ND.shape[0])]) if x_ND.shape[0] else \
            torch.zeros(0, self.M, dtype=torch.bool, device=x_ND.device)
        return torch.addmm(self.b_M, u_ND, self.W_DM).relu_().mul_(on_NM)
