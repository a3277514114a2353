"""Exact current activations of a few latents of a TopK SAE, without a full encode when they are off.

Shape key: N rows (token positions), D d_in, F d_sae, M latents read, C candidate latents,
P = M + C, K = k.

What is read, two contracts:
- without a need mask (`steer`'s hook): `sae.encode(x)[:, ids]`, bit for bit, for the rows given.
- with one (`need_NM`, the batched engine: each row needs the few latents its own edits use):
  each row as if it were alone, so a client's result does not depend on who shares its batch.
  Which needed latents are active is exactly what `sae.encode(x[r : r + 1])` says, and their
  values are within float rounding of it (the others come back 0).

Whether latent m is among a row's k largest pre-activations depends on all F of them; a
generation step needs it for a few rows, and most of the time the latent is off. The bound path
computes, in one product, the M latents and a learned candidate set C of frequently selected
latents (`TopKCandidates`): the k-th largest candidate is a lower bound on the k-th largest of
all, so "k candidates exceed its pre-activation by more than twice `tol`" proves the latent off
without the other F - C columns, where `tol` (per row) bounds the distance of each computed
pre-activation from the SAE's own over any batch holding the row (one latent, steer's usual
read: one product of the candidates' differences from it, with the three tolerances summed).
When that settles every row, the read is exactly zero (`read` returns None: callers skip work).

Otherwise, without a need mask, the full path runs the SAE's own expression over all rows given,
and its top k decides, or, for a few latents, a count of the pre-activations above each one (a
latent is selected iff fewer than k exceed it; a tie at the k-th place goes back to the top k),
so values and ties are the SAE's own. With a need mask, only the rows the bound left open are
computed, in one product (`_read_rows_alone`): the same count with margins of 2 tol decides
each needed latent, and a row with a pre-activation within 2 tol of the latent's around the
k-th place (or the latent's within 2 tol of 0) is encoded alone by the SAE itself. A bound that
has saved little in its recent tries (a busy latent fires on some row at most steps) is skipped
and retried now and then. `TopKReader.reference` is the eager reference of either contract.

bf16 / fp16: a tolerance of the worst-case form (D + 4) eps ||x|| ||w|| exceeds every
pre-activation in these dtypes, so nothing would settle and every needed row would be encoded
alone. Where the dtype's products round once from float32 (`steering.lowprecision`: CPU always,
CUDA with reduced-precision reductions off) the bound and the count compute the SAE's own
expression, (x - b_dec) @ W + b, and compare against thresholds relative to each value instead
(`RelativeTolerance`); elsewhere the worst case stays (exact, slow).

Cost model (toy model, one generation step): each tensor op costs several microseconds inside a
forward pass whatever its size, and comparisons into bools several times more than float
arithmetic, so counts use signs of differences and a step's few rows finish in Python.
"""

from __future__ import annotations

import weakref
from array import array

import torch
from torch import Tensor

from saes.base import SAE
from saes.precision import matmul_rounding
from steering.lowprecision import RelativeTolerance, rounds_once_in_float32


def b_dec_of(sae: SAE) -> Tensor | None:
    """The decoder bias an SAE subtracts from its input (None when it does not)."""
    return sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else None


def weights_version(sae: SAE) -> tuple:
    """Which encoder weights an SAE holds now (storage and in-place version counters): cached
    bounds are rebuilt when they change, since stale ones could prove a firing latent off."""
    return tuple((t.data_ptr(), t._version) for t in (sae.W_enc, sae.b_enc, sae.b_dec))


def fold_b_dec(W_DX: Tensor, b_X: Tensor, b_dec_D: Tensor | None,
               rounding: torch.dtype | None = None) -> tuple[Tensor, float, float]:
    """(b_fold_X, err_per_norm, err_const) for reading x itself: pre = x @ W + b_fold with
    b_fold = b - b_dec @ W is within `tol(x) = err_per_norm * ||x|| + err_const` of the SAE's own
    computed pre-activations (x - b_dec) @ W + b, for every column of W_DX (rounding of both
    computations, of the folded bias and of a sum pre + tol in the caller's dtype). The products'
    rounding (`rounding`) is by default the one torch's settings give now (`saes.precision`: TF32
    on a GPU rounds a float32 product's inputs to float16's mantissa, its sums stay float32)."""
    W, b = W_DX.double(), b_X.double()
    b_dec = b_dec_D.double() if b_dec_D is not None else W.new_zeros(W_DX.shape[0])
    b_fold_X = (b - b_dec @ W).to(W_DX.dtype)
    rounding = rounding or matmul_rounding(W_DX.dtype, W_DX.device)
    # products of inputs rounded coarser than their dtype (TF32, bf16-internal float32) still sum in
    # the dtype: each input is off by at most eps_in relative (to nearest or truncated), so a product
    # is off by (2 eps_in + eps_in^2) |x_i W_i|, in all at most that times ||x|| ||W_col|| (Cauchy-
    # Schwarz), without the D factor of the sums' own rounding
    acc = float(torch.finfo(W_DX.dtype).eps)
    eps_in = float(torch.finfo(rounding).eps) if rounding != W_DX.dtype else 0.0
    D = W_DX.shape[0]
    rel = (2.0 + eps_in) * eps_in + (D + 4) * acc * (1.0 + eps_in) ** 2
    w_max = float(W.norm(dim=0).max()) if W.shape[1] else 0.0
    err_per_norm = 2.0 * rel * w_max  # ours and the SAE's own computation
    # a bias is one more term of each product's sum, so it carries the sum's error bound too
    big_b = (float(b_fold_X.abs().max()) + float(b.abs().max())) if W.shape[1] else 0.0
    err_const = err_per_norm * float(b_dec.norm()) + 2.0 * rel * big_b + torch.finfo(W_DX.dtype).tiny
    err_const += 4.0 * acc * (big_b + err_const)  # the sum pre + tol rounds too (in the dtype)
    return b_fold_X, err_per_norm, err_const


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
        # the products' rounding its tolerances were built for: a set built before TF32 (or bf16)
        # was allowed must not serve readers after, whose products are coarser
        self.rounding = matmul_rounding(self.W_DF.dtype, self.W_DF.device)
        self.b_fold_F, self.err_per_norm, self.err_const = fold_b_dec(self.W_DF, self.b_F, self.b_dec_D,
                                                                       self.rounding)

    @classmethod
    def of(cls, sae: SAE, n_candidates: int | None = None) -> "TopKCandidates":
        k = int(sae.cfg.k)
        # an eighth of the latents: the candidates' product costs that much of a full encode, and
        # the k-th largest of them bounds the k-th largest of all tightly enough to settle most rows
        want = n_candidates or max(8 * k, 256, sae.d_sae // 8)
        version = weights_version(sae)
        c = cls._by_sae.get(sae)
        if (c is None or c.n_candidates != min(sae.d_sae, want) or c.weights_of != version
                or c.rounding != matmul_rounding(sae.W_enc.dtype, sae.W_enc.device)):
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


def norm_dtype(x: Tensor) -> torch.dtype:
    """A dtype for norms of x that does not overflow where x's own would (float16 tops out at 65504)."""
    return torch.promote_types(x.dtype, torch.float32)


def _signs(values_NX: Tensor, bounds_NM: Tensor, out: Tensor | None = None) -> Tensor:
    """[N, X] (one bound per row, the usual case) or [N, M, X]: the sign (-1, 0, 1, as floats) of
    each value minus each of its row's bounds. Exact: a difference of two floats is 0 only when
    they are equal, and its sign is theirs (NaN where one is NaN). Float arithmetic, since a
    comparison into bools costs several times as much on CPU."""
    if bounds_NM.shape[1] == 1:
        return torch.sub(values_NX, bounds_NM, out=out).sign_()
    return torch.sub(values_NX.unsqueeze(1), bounds_NM.unsqueeze(2)).sign_()


def _count_above(values_NX: Tensor, bounds_NM: Tensor) -> Tensor:
    """[N, M]: how many of each row's X values exceed each of its M bounds (a NaN is never
    above). The bounds' counts are over the candidates, a few hundred values a row: two ops (a
    comparison into bools, a sum) cost less there than the signs' four."""
    if bounds_NM.shape[1] == 1:
        return (values_NX > bounds_NM).sum(1, keepdim=True)
    return (values_NX.unsqueeze(1) > bounds_NM.unsqueeze(2)).sum(-1)


def _above_and_net(values_NX: Tensor, bounds_NM: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """([N, M], [N, M]) floats: how many of each row's X values are above each of its bounds, and
    that less how many are below, from one pass of signs (so at least = X - above + net; `out`:
    where the signs go, [N, X], for one bound per row)."""
    s = _signs(values_NX, bounds_NM, out)
    keep = s.dim() == 2  # one bound per row: [N, X] -> [N, 1]
    # counts summed in a float that holds them exactly (bf16 spaces integers 16 apart near 4096)
    exact = torch.float32 if values_NX.shape[-1] <= 2**24 else torch.float64
    net = s.sum(-1, keepdim=keep, dtype=exact)  # above - below
    return s.relu_().sum(-1, keepdim=keep, dtype=exact), net


class TopKReader:
    """Exact activations [N, M] of latents `ids_M` of a TopK SAE: `sae.encode(x)[:, ids]` bit
    for bit, or with a need mask each row's as if alone (see the module docstring).

    Paths, chosen per call: while the shared candidate set is young, the full path (its top k
    teaches the set); after that, the bound path when it pays (`bound_pays`: at most `bound_rows`
    rows, a candidate set at most half the latents, and a full product of at least
    `min_bound_macs` multiply-adds, below which the bound's extra operations cost more than they
    save), else the full path. With a need mask the full path is the rows-alone read
    (`_read_rows_alone`) of every row that needs a latent, and after the bound, of the rows it
    left open (its folded top k teaches a young set). Built for the SAE's weights at construction
    (some detached views, some copies): build a new one after changing them in place. Not
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
        self.first_id = int(ids_M[0]) if self.M else 0
        self.err_per_norm = self.cands.err_per_norm
        # bf16 / fp16 whose products round once from float32: tolerances relative to each value
        # (the worst-case bound above would exceed every pre-activation: nothing would settle)
        self.relative = RelativeTolerance(self.W_DF, self.b_F) \
            if rounds_once_in_float32(self.W_DF.dtype, self.W_DF.device) else None
        c = self.cands
        # q_c > q_m + 2 tol proves P_c > P_m (each q within tol of its P): the M latents' biases carry
        # + 2 err_const, and 2 err_per_norm ||x|| is added per row
        self.b_fold_hi_M = (c.b_fold_F[ids_M].double() + 2.0 * c.err_const).to(self.W_DF.dtype)
        self._bound_of: Tensor | None = None  # the candidate columns _W_DP was built from
        self._W_DP = self._b_P = self.W_DM
        self._diff_of: Tensor | None = None  # the candidate columns _diff was built from
        self._diff: tuple = ()
        self._buffers: dict[tuple[int, str], Tensor] = {}
        self.keep_rows = 256  # reuse outputs of calls of at most this many rows (generation steps)
        self._pairs_of: tuple | None = None  # (mask, its key, its pairs, how many rows need a latent): see _pairs
        self.full_rows = 0  # rows encoded in full (tests, tuning)
        self.counted_pairs = 0  # needed pairs read by rows alone (tests)
        self.alone_rows = 0  # rows whose near tie the SAE's own encode of the row alone decided (tests)
        self.bound_hits = 0  # rows the candidate bound alone proved off
        # adaptive bound: in a forward pass the bound costs about a third of the full path (its
        # product is an eighth, its fixed op costs are alike), so it pays while it saves more
        # than about a third of a full path per try (0.35 measured best of 0.2 / 0.35 / 0.5 /
        # always / never on the steering matrix's TopK rows: `bench_steering.py hook-time`)
        self.bound_rate = 1.0  # share of recent tries that settled the call (with a need mask: of the rows; exponential average)
        self.rate_weight = 0.125  # weight of the latest try: about the last 8 count
        self.min_bound_rate = 0.35
        self.retry_every = 8
        self._since_try = 0
        self.bound_skips = 0  # calls that skipped the bound (tests, tuning)
        self.python_pairs = 64  # (row, latent) pairs a count finishes in Python (a generation step's)

    def bound_pays(self, n_rows: int) -> bool:
        c = self.cands
        return (not c.young and n_rows <= self.bound_rows and 2 * c.n_candidates <= self.F
                and n_rows * self.D * self.F >= self.min_bound_macs)

    def __call__(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor:
        """`need_NM` (optional, bool): the (row, latent) pairs the caller will use; the others may
        come back as 0 whatever their activation, and each row is read as if alone (the module
        docstring's second contract)."""
        a_NM = self.read(x_ND, need_NM)
        return x_ND.new_zeros(x_ND.shape[0], self.M) if a_NM is None else a_NM

    def read(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor | None:
        """As calling the reader, or None when every needed latent is off (the bound proved it, or
        the full path's count found none selected). With `need_NM` the read is by rows alone
        (`_read_rows_alone`), else `sae.encode(x)[:, ids]` bit for bit."""
        N = x_ND.shape[0]
        rows: list[int] | None = None
        if self.bound_pays(N) and self._bound_worth_trying():
            rows = self.open_rows(x_ND, need_NM)
            if need_NM is None:  # a try saves the full path only when it settles every row
                self.bound_rate += (float(not rows) - self.bound_rate) * self.rate_weight
            else:  # rows alone: the product shrinks with every row it settles (of the rows that need a latent)
                needing = self._rows_needing(need_NM)
                settled = (needing - len(rows)) / needing if needing else 1.0
                self.bound_rate += (settled - self.bound_rate) * self.rate_weight
            if not rows:
                self.bound_hits += N
                return None
        if need_NM is not None:
            return self._read_rows_alone(x_ND, need_NM, rows)
        return self._full(x_ND)

    def _bound_worth_trying(self) -> bool:
        """Whether to try the bound on this call: when it settled at least `min_bound_rate` of its
        recent tries (a busy latent leaves a row open at most steps, and a failed try is paid on
        top of the full path), else once every `retry_every` calls, to notice when it pays again."""
        if self.bound_rate >= self.min_bound_rate:
            return True
        self._since_try += 1
        if self._since_try >= self.retry_every:
            self._since_try = 0
            return True
        self.bound_skips += 1
        return False

    def all_off(self, x_ND: Tensor, need_NM: Tensor | None = None) -> bool:
        """Whether the candidate bound proves every needed latent of every row off."""
        return not self.open_rows(x_ND, need_NM)

    def open_rows(self, x_ND: Tensor, need_NM: Tensor | None = None) -> list[int]:
        """Rows the candidate bound leaves open (in order): a needed latent of theirs is not
        proven off, i.e. fewer than k candidates are above its pre-activation plus the tolerance."""
        if x_ND.shape[0] == 0:
            return []
        rel = self.relative
        if self.M == 1 and need_NM is None and rel is None:
            return self._one_latent_open(x_ND)
        W_DP, b_P = self._bound_weights()
        M, k = self.M, self.k
        if rel is not None:  # bf16 / fp16: the SAE's own expression, thresholds relative to each value
            v_ND = self._sae_input(x_ND)
            pre_NP = torch.addmm(b_P, v_ND, W_DP)
            c_N1 = rel.row_const(v_ND)
        else:
            pre_NP = torch.addmm(b_P, x_ND, W_DP)  # the M latents' columns carry + err_const
            norm_N1 = torch.linalg.vector_norm(x_ND, dim=-1, keepdim=True, dtype=norm_dtype(x_ND))
        if need_NM is not None and M > self.count_latents:  # the batched engine: each row needs a few of many
            rows_P, cols_P = self._pairs(need_NM)
            if rows_P.numel() == 0:
                return []
            pre_P1 = pre_NP[rows_P, cols_P].unsqueeze(1)
            hi_P1 = rel.above(pre_P1, c_N1[rows_P]) if rel is not None else \
                torch.add(pre_P1, norm_N1[rows_P].to(x_ND.dtype), alpha=2.0 * self.err_per_norm)
            above_P = _count_above(pre_NP[:, M:].index_select(0, rows_P), hi_P1)
            if int(above_P.min()) >= k:  # the usual case, without the lists below
                return []
            return list(dict.fromkeys(r for r, a in zip(rows_P.tolist(), above_P.flatten().tolist()) if a < k))
        hi_NM = rel.above(pre_NP[:, :M], c_N1) if rel is not None else \
            torch.add(pre_NP[:, :M], norm_N1.to(x_ND.dtype), alpha=2.0 * self.err_per_norm)
        off_NM = _count_above(pre_NP[:, M:], hi_NM) >= k
        if need_NM is not None:
            off_NM |= ~need_NM
        return [r for r, off in enumerate(off_NM.all(1).tolist()) if not off]

    def _one_latent_open(self, x_ND: Tensor) -> list[int]:
        """`open_rows` for one latent m (steer's usual read), in one product: the differences
        d_c = pre_c - pre_m of the candidates, from x @ (W_c - W_m) + (b_fold_c - b_fold_m).
        Each of d_c, pre_c and pre_m is within its tolerance tol(x) = e ||x|| + c (`fold_b_dec`)
        of the exact value (and the SAE's own pre_c, pre_m of theirs), so d_c > the sum of the
        three proves the SAE's pre_c > pre_m; k such candidates prove m off. ||x|| is the norm
        of all rows (at least each row's), its float sum inflated by (n + 2) eps."""
        W_DC, b_C, e, c = self._diff_weights()
        eps = torch.finfo(x_ND.dtype).eps
        norm = float(torch.linalg.vector_norm(x_ND, dtype=norm_dtype(x_ND))) * (1.0 + (x_ND.numel() + 2) * eps)
        margin = (e * norm + c) * (1.0 + 4.0 * eps)  # rounding of this sum and of its cast to x's dtype
        d_NC = torch.addmm(b_C, x_ND, W_DC)
        above_N = (d_NC > margin).sum(1)
        if int(above_N.min()) >= self.k:  # the usual case, without the list below
            return []
        return [r for r, above in enumerate(above_N.tolist()) if above < self.k]

    def _diff_weights(self) -> tuple[Tensor, Tensor, float, float]:
        """(W_c - W_m, b_fold_c - b_fold_m, e, c) over the candidates for the one latent m, with
        e ||x|| + c the sum of the three tolerances (rebuilt when the candidate set changes)."""
        cands = self.cands
        if self._diff_of is not cands.W_DC:
            assert cands.W_DC is not None and cands.C is not None
            # q_j = x @ W_j + b_fold_j (b_fold as stored) is within the candidates' tolerance of
            # the SAE's own pre_j; d computes q_c - q_m within fold_b_dec's tolerance for these
            # weights (whose factor 2 also covers rounding W_c - W_m to the weights' dtype)
            W_dC = (cands.W_DC.double() - self.W_DM.double()).to(self.W_DF.dtype)
            b_fold_F = cands.b_fold_F.double()
            b_dC, e_d, c_d = fold_b_dec(W_dC, b_fold_F[cands.C] - b_fold_F[self.ids_M], None)
            self._diff = (W_dC, b_dC, e_d + 2.0 * cands.err_per_norm, c_d + 2.0 * cands.err_const)
            self._diff_of = cands.W_DC
        return self._diff

    def _sae_input(self, x_ND: Tensor) -> Tensor:
        """The SAE's own input to its product, x less b_dec (bit for bit: an elementwise op)."""
        return x_ND - self.b_dec_D if self.b_dec_D is not None else x_ND

    def _bound_weights(self) -> tuple[Tensor, Tensor]:
        """Encoder columns and (folded) biases of the M latents followed by the candidates
        (rebuilt when the candidate set changes)."""
        W_DC = self.cands.W_DC
        if self._bound_of is not W_DC:
            assert W_DC is not None
            self._W_DP = torch.cat([self.W_DM, W_DC], 1)
            if self.relative is not None:  # the SAE's own biases (its input less b_dec is multiplied)
                self._b_P = torch.cat([self.b_F[self.ids_M], self.cands.b_F[self.cands.C]])
            else:
                self._b_P = torch.cat([self.b_fold_hi_M, self.cands.b_fold_F[self.cands.C]])
            self._bound_of = W_DC
        return self._W_DP, self._b_P

    def full(self, x_ND: Tensor) -> Tensor:
        """As `_full`, always a tensor."""
        a_NM = self._full(x_ND)
        return x_ND.new_zeros(x_ND.shape[0], self.M) if a_NM is None else a_NM

    def _full(self, x_ND: Tensor) -> Tensor | None:
        """The SAE's own encode of every row (its expression, its top k), latents `ids` read out.
        Once the candidate set is mature and few latents are read, a count decides instead of
        the top k: latent m is selected iff fewer than k pre-activations exceed its own, unless a
        tie straddles the k-th place (then the SAE's own top k decides). None when every
        activation read is 0 (the count found none selected)."""
        self.full_rows += x_ND.shape[0]
        u_ND = self._sae_input(x_ND)
        pre_NF = torch.mm(u_ND, self.W_DF, out=self._buffer(u_ND)).add_(self.b_F)  # the SAE's own expression
        if self.M <= self.count_latents and not self.cands.young:
            settled, a_NM = self._count_select(pre_NF)
            if settled:
                return a_NM
        vals_NK, idx_NK = pre_NF.topk(self.k, dim=-1, sorted=False)  # the SAE's own selection
        if self.cands.young:
            self.cands.learn(idx_NK, self.k)
        return (vals_NK.relu_()[:, :, None] * (idx_NK[:, :, None] == self.ids_M)).sum(1)

    def _count_select(self, pre_NF: Tensor) -> tuple[bool, Tensor | None]:
        """(settled, activations [N, M] or None when all are 0) of the M latents by a count: latent
        m is selected iff fewer than k pre-activations exceed its own; not settled when a tie
        straddles the k-th place (more than k at least as large, itself included) or a NaN makes
        the counts NaN. A generation step's few rows finish in Python: each tensor op costs
        several microseconds in a forward pass, whatever its size."""
        N, M, X, k = pre_NF.shape[0], self.M, pre_NF.shape[1], self.k
        if N * M > self.python_pairs:
            pre_NM = pre_NF.index_select(1, self.ids_M)
            above_NM, net_NM = _above_and_net(pre_NF, pre_NM)
            at_least_NM = (X - above_NM).add_(net_NM)
            selected_NM = above_NM < k
            if not bool((selected_NM | (above_NM >= k)).logical_and_(~selected_NM | (at_least_NM <= k)).all()):
                return False, None
            return True, pre_NM.relu_().mul_(selected_NM)
        # a view of one column is read here and not kept (pre_NF is a reused buffer)
        if M == 1:
            pre_NM = pre_NF.narrow(1, self.first_id, 1)
            above_NM, net_NM = _above_and_net(pre_NF, pre_NM, self._buffer(pre_NF, "signs"))
        else:
            pre_NM = pre_NF.index_select(1, self.ids_M)
            above_NM, net_NM = _above_and_net(pre_NF, pre_NM)
        out: list[float] = []
        for above, net, v in zip(above_NM.flatten().tolist(), net_NM.flatten().tolist(), pre_NM.flatten().tolist()):
            if above >= k:
                out.append(0.0)
            elif above < k and X - above + net <= k:  # selected, no tie across the k-th place
                out.append(v if v > 0 else 0.0)
            else:  # a straddling tie, or NaN counts: the SAE's own top k decides
                return False, None
        if not any(out):
            return True, None
        if pre_NF.dtype == torch.float32 and pre_NF.device.type == "cpu":  # (torch.tensor of a list costs more)
            return True, torch.frombuffer(array("f", out), dtype=torch.float32).view(N, M)
        return True, torch.tensor(out, dtype=pre_NF.dtype, device=pre_NF.device).view(N, M)

    def _read_rows_alone(self, x_ND: Tensor, need_NM: Tensor, rows: list[int] | None) -> Tensor | None:
        """[N, M] activations of the needed pairs (0 elsewhere) of `rows` (None: every row that
        needs one; the others were proven off), each row read as if alone: one product of those
        rows' pre-activations, folded (`fold_b_dec`: each within tol = e ||x|| + c of the SAE's
        own over the row alone). Latent m is selected iff fewer than k pre-activations exceed its
        own: k of them above it by more than 2 tol prove it off; at most k - 1 others within
        2 tol below it or higher, and its own further than 2 tol from 0, prove it on with that
        value (within rounding of the SAE's). Any other row (a pre-activation within 2 tol of
        the latent's around the k-th place, or of 0; a NaN) is encoded alone by the SAE itself.
        None when every activation read is 0."""
        N = x_ND.shape[0]
        idx_R = need_NM.any(1).nonzero().flatten() if rows is None else \
            torch.tensor(rows, dtype=torch.int64, device=x_ND.device)
        out_NM = x_ND.new_zeros(N, self.M)
        R = idx_R.numel()
        if R == 0:
            return None
        x_RD = x_ND if R == N else x_ND.index_select(0, idx_R)
        r_P, c_P = (need_NM if R == N else need_NM.index_select(0, idx_R)).nonzero().unbind(1)
        c, rel = self.cands, self.relative
        if rel is not None:  # bf16 / fp16: the SAE's own expression (see steering.lowprecision)
            v_RD = self._sae_input(x_RD)
            pre_RF = torch.addmm(self.b_F, v_RD, self.W_DF, out=self._buffer(x_RD, "rows"))
        else:
            pre_RF = torch.addmm(c.b_fold_F, x_RD, self.W_DF, out=self._buffer(x_RD, "rows"))
        self.full_rows += R
        if c.young:  # the folded top k teaches the candidate set (a poor lesson costs speed only)
            c.learn(pre_RF.topk(self.k, dim=-1, sorted=False).indices, self.k)
        one_per_row = r_P.numel() == R  # pairs are row-major and every row in idx_R has one: rows 0..R-1 in order
        pre_PF = pre_RF if one_per_row else pre_RF.index_select(0, r_P)
        v_P1 = pre_PF.gather(1, self.ids_M[c_P].unsqueeze(1))
        if rel is not None:
            c_P1 = rel.row_const(v_RD)[r_P]
            hi_P1, lo_P1 = rel.above(v_P1, c_P1), rel.maybe(v_P1, c_P1)
            pos_P, neg_P = rel.positive(v_P1, c_P1).squeeze(1), rel.negative(v_P1, c_P1).squeeze(1)
        else:  # 2 tol per row, with the rounding of the sums below and of the cast to x's dtype
            eps = torch.finfo(x_ND.dtype).eps
            norm_R = torch.linalg.vector_norm(x_RD, dim=-1, dtype=torch.float64)
            tol2_R = ((2.0 * self.err_per_norm) * norm_R + 2.0 * c.err_const).mul_(1.0 + 4.0 * eps).to(x_ND.dtype)
            tol2_P1 = tol2_R[r_P].unsqueeze(1)
            hi_P1, lo_P1 = v_P1 + tol2_P1, v_P1 - tol2_P1
            pos_P, neg_P = (v_P1 > tol2_P1).squeeze(1), (v_P1 < -tol2_P1).squeeze(1)
        above_P = (pre_PF > hi_P1).sum(1)  # above it in the SAE's own expression too
        maybe_P = (pre_PF >= lo_P1).sum(1)  # perhaps at least as large, itself included
        v_P = v_P1.squeeze(1)
        on_P = (maybe_P <= self.k) & pos_P
        decided_P = (above_P >= self.k) | on_P | ((maybe_P <= self.k) & neg_P)
        out_NM[idx_R[r_P], c_P] = v_P * on_P
        self.counted_pairs += r_P.numel()
        if not bool(decided_P.all()):
            for r in idx_R[r_P[~decided_P]].unique().tolist():  # the SAE's own encode of the row alone
                self.alone_rows += 1
                out_NM[r] = self.sae.encode(x_ND[r : r + 1])[0].index_select(0, self.ids_M) * need_NM[r]
        return out_NM if bool(out_NM.any()) else None

    def _pairs(self, need_NM: Tensor) -> tuple[Tensor, Tensor]:
        """(rows, latent columns) of the needed pairs, row-major; kept for a mask seen last
        (the engine passes the same mask every decode step) while it is not modified."""
        key = (need_NM.data_ptr(), need_NM.shape, need_NM._version)
        if self._pairs_of is None or self._pairs_of[0] is not need_NM or self._pairs_of[1] != key:
            rows_P, cols_P = need_NM.nonzero().unbind(1)
            self._pairs_of = (need_NM, key, (rows_P, cols_P), int(rows_P.unique_consecutive().numel()))
        return self._pairs_of[2]

    def _rows_needing(self, need_NM: Tensor) -> int:
        """How many rows need at least one latent (kept with the mask's pairs)."""
        self._pairs(need_NM)
        return self._pairs_of[3]  # type: ignore[index]

    def _buffer(self, u_ND: Tensor, use: str = "pre") -> Tensor:
        """A reused [N, F] output for calls of at most `keep_rows` rows (generation steps: a fresh
        one of this size costs page faults every step; a big one is not worth keeping); one per
        use ("pre": the pre-activations, "signs": the count's signs)."""
        N = u_ND.shape[0]
        buf = self._buffers.get((N, use))
        if buf is None or buf.dtype != u_ND.dtype:
            buf = u_ND.new_empty(N, self.F)
            if N <= self.keep_rows:
                if len(self._buffers) >= 8:  # prefills of other lengths: keep a few sizes
                    self._buffers.clear()
                self._buffers[(N, use)] = buf
        return buf

    def reference(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor:
        """The eager reference: the SAE's own encode, latents `ids` read out; with `need_NM`,
        of every row alone (the contract of a read with it: on/off equal, values within rounding)."""
        if need_NM is None:
            return self.sae.encode(x_ND).index_select(1, self.ids_M)
        alone = [self.sae.encode(x_ND[r : r + 1]) for r in range(x_ND.shape[0])]
        return torch.cat(alone).index_select(1, self.ids_M) if alone else x_ND.new_zeros(0, self.M)
