"""The arithmetic of latent edits: current activations of a few latents, and the activation delta.

Shape key: N rows (token positions), D d_in, F d_sae, M edited latents, K active per row (TopK).

Every latent edit is `new_m = a_m * c1_m + c0_m` on the current activation `a_m` of latent m:

    add v    -> c1 = 0,  c0 = v     (delta = v)
    clamp v  -> c1 = -1, c0 = v     (delta = v - a)
    scale s  -> c1 = s-1, c0 = 0    (delta = (s - 1) a)
    ablate   -> c1 = -1, c0 = 0     (delta = -a)

and the activation moves by the decoded change only, keeping the SAE's reconstruction error:
x' = x + delta_NM @ W_dec[ids]. A transcoder reads its latents at its input hook and writes the
decoded change ([N, d_out]) to its target hook (`steering.session` captures the input there). A conditional edit multiplies its delta by whether its trigger
latent's current activation is above the threshold (read from the same x). A delta of exactly zero (add 0, scale 1, clamp to the value the
latent has) adds exact zeros, so x' is bit-identical to x.

Current activations, exactly as the SAE's own encoder would give them:
- threshold encoders (JumpReLU, and the inference form of BatchTopK / Matryoshka): a latent's
  activation depends on its own pre-activation only, so only the M encoder columns are computed:
  pre = (x - b_dec) @ W_enc[:, ids] + b_enc[ids]; a = pre where pre > max(threshold, 0).
- ReLU ("standard"): the same with a threshold of 0.
- TopK: whether a latent is among the k largest depends on all pre-activations; a bound from a
  learned candidate set usually proves the M latents off without them (`TopKReader`); the rows
  left undecided compute the full pre-activation row, and latent m is active iff fewer than k
  pre-activations exceed its own; a tie straddling the k-th place is decided by the SAE's own
  `topk`.
- any other SAE: its own `encode_sparse`, then the M latents are read out of the sparse rows.

`reference_edit` is the eager reference (full encode, dense edit, decode both, add the difference);
tests compare the fast path against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import weakref

from saes.base import SAE

def op_coefficients(op: str, value: float) -> tuple[float, float]:
    """(c1, c0) of one op: the latent changes by delta = a * c1 + c0."""
    if op == "add":
        return 0.0, float(value)
    if op == "clamp":
        return -1.0, float(value)
    if op == "scale":
        return float(value) - 1.0, 0.0
    if op == "ablate":
        return -1.0, 0.0
    raise ValueError(f"unknown op {op!r}")


def encoder_kind(sae: SAE) -> str:
    """Which exact current-activation path applies: the SAE's `encoding_rule` ("threshold":
    pre > max(threshold, 0) from its `threshold` buffer; "relu": pre > 0; "topk"; "generic": the
    SAE's own `encode_sparse`)."""
    return sae.encoding_rule


class LatentReader:
    """Exact current activations [N, M] of latents `ids_M` of one SAE (see the module docstring).

    Threshold and ReLU encoders compute the M pre-activations alone; a product over M columns may
    round differently from the SAE's product over all F, so a pre-activation within the rounding
    bound of its threshold is decided by the SAE's own expression over the whole row (rare: such
    rows only). Which latents fire is then exactly what the SAE's encode says, and does not
    depend on which other latents are read alongside (the batched engine reads a different set
    for each batch). Snapshot of the SAE's weights at construction (detached)."""

    def __init__(self, sae: SAE, ids_M: Tensor) -> None:
        self.sae = sae
        self.kind = encoder_kind(sae)
        self.dtype = sae.W_enc.dtype
        self.ids_M = ids_M
        self.near_rows = 0  # rows decided by the SAE's own expression (threshold/ReLU; tests)
        with torch.no_grad():
            self.b_dec_D = sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else None
            self.topk = TopKReader(sae, ids_M) if self.kind == "topk" else None
            if self.kind in ("threshold", "relu"):
                self.W_enc_DF = sae.W_enc.detach()
                self.b_enc_F = sae.b_enc.detach()
                self.W_enc_DM = self.W_enc_DF[:, ids_M].contiguous()
                self.b_enc_M = self.b_enc_F[ids_M].contiguous()
                if self.kind == "threshold":
                    self.fire_above_M = sae.threshold.detach()[ids_M].clamp_min(0).contiguous()
                else:
                    self.fire_above_M = torch.zeros_like(self.b_enc_M)
                # |computed - exact| <= (D + 2) eps ||u|| ||w|| + 2 eps |b| for each pre-activation; two
                # computations of one value differ by at most twice that
                eps = torch.finfo(self.dtype).eps
                D = self.W_enc_DM.shape[0]
                self.err_per_norm = 2.0 * (D + 2) * eps * float(self.W_enc_DM.norm(dim=0).max()) if ids_M.numel() else 0.0
                self.err_bias = 4.0 * eps * float(self.b_enc_M.abs().max()) if ids_M.numel() else 0.0

    def __call__(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor:
        """`need_NM` (optional, bool): the (row, latent) pairs the caller will use; the others may
        come back as 0 whatever their activation (TopK skips the full encode of rows that need
        none of their undecided latents)."""
        x_ND = x_ND.to(self.dtype)
        if self.topk is not None:
            return self.topk(x_ND, need_NM)
        if self.kind in ("threshold", "relu"):
            sae_in = x_ND - self.b_dec_D if self.b_dec_D is not None else x_ND
            pre_NM = torch.addmm(self.b_enc_M, sae_in, self.W_enc_DM)
            tol_N1 = sae_in.norm(dim=-1, keepdim=True) * self.err_per_norm + self.err_bias
            near_N = ((pre_NM - self.fire_above_M).abs() <= tol_N1).any(1)
            if bool(near_N.any()):  # too close to call: the SAE's own expression decides, one row at a time
                pre_NM = pre_NM.clone()
                for r in near_N.nonzero().flatten().tolist():
                    own_1F = sae_in[r : r + 1] @ self.W_enc_DF + self.b_enc_F
                    pre_NM[r] = own_1F[0].index_select(0, self.ids_M)
                    self.near_rows += 1
            return torch.where(pre_NM > self.fire_above_M, pre_NM, pre_NM.new_zeros(()))
        return latents_from_sparse(self.sae.encode_sparse(x_ND), self.ids_M)


class LatentEditor:
    """Precomputed tensors for editing latents `ids` of one SAE with coefficients (c1, c0).

    `triggers` (optional, one per edited latent): None, or (trigger latent, raw threshold): the
    edit of that latent applies only on rows where the trigger's current activation is above the
    threshold. Snapshot of the SAE's weights at construction (detached); device/dtype are the SAE's.
    """

    def __init__(self, sae: SAE, ids: Sequence[int], c1: Sequence[float], c0: Sequence[float],
                 triggers: Sequence[tuple[int, float] | None] | None = None) -> None:
        if not (len(ids) == len(c1) == len(c0)) or not ids:
            raise ValueError("ids, c1 and c0 must be non-empty and of equal length")
        if triggers is not None and len(triggers) != len(ids):
            raise ValueError("give one trigger (or None) per edited latent")
        dev, dt = sae.W_dec.device, sae.W_dec.dtype
        self.sae = sae
        self.d_in = sae.d_in  # width of the rows the latents are read from
        self.d_out = sae.d_out  # width of the delta (a transcoder's target; d_in for an SAE)
        self.dtype = dt
        self.kind = encoder_kind(sae)
        M = len(ids)
        # latents read: the edited ones, then trigger latents that are not edited themselves
        read = list(ids)
        trig_col: list[int] = []
        trig_thr: list[float] = []
        for t in triggers or [None] * M:
            if t is None:
                trig_col.append(-1)
                trig_thr.append(0.0)
                continue
            f, thr = int(t[0]), float(t[1])
            if f not in read:
                read.append(f)
            trig_col.append(read.index(f))
            trig_thr.append(thr)
        with torch.no_grad():
            self.ids_M = torch.tensor(list(ids), dtype=torch.int64, device=dev)
            self.read_ids_R = torch.tensor(read, dtype=torch.int64, device=dev)
            self.c1_M = torch.tensor(list(c1), dtype=dt, device=dev)
            self.c0_M = torch.tensor(list(c0), dtype=dt, device=dev)
            self.W_dec_MD = sae.W_dec.detach()[self.ids_M].contiguous()
            self.conditional = any(c >= 0 for c in trig_col)
            self.needs_acts = bool((self.c1_M != 0).any()) or self.conditional
            # all-constant edits (add only, unconditional): one vector per row
            self.const_D = (self.c0_M @ self.W_dec_MD) if not self.needs_acts else None
            self.reader = LatentReader(sae, self.read_ids_R) if self.needs_acts else None
            if self.conditional:
                cols = torch.tensor(trig_col, dtype=torch.int64, device=dev)
                self.trig_col_M = cols.clamp_min(0)
                self.trig_thr_M = torch.tensor(trig_thr, dtype=dt, device=dev)
                self.trig_on_M = cols >= 0  # edits without a trigger always apply
        self._const_cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    @property
    def topk_reader(self) -> "TopKReader | None":
        return None if self.reader is None else self.reader.topk

    # -- current activations ---------------------------------------------------------------
    def current_acts(self, x_ND: Tensor) -> Tensor:
        """Activations [N, M] of the edited latents, as the SAE's encoder gives them."""
        reader = self.reader or LatentReader(self.sae, self.read_ids_R)
        return reader(x_ND)[:, : self.ids_M.numel()]

    def coefficients(self, x_ND: Tensor) -> Tensor:
        """How much each edited latent changes on each row, [N, M] (0 where a trigger is off)."""
        assert self.reader is not None
        a_NR = self.reader(x_ND)
        M = self.ids_M.numel()
        coef_NM = torch.addcmul(self.c0_M, a_NR[:, :M], self.c1_M)
        if self.conditional:
            fires_NM = a_NR.index_select(1, self.trig_col_M) > self.trig_thr_M
            coef_NM = coef_NM * (fires_NM | ~self.trig_on_M)
        return coef_NM

    def fired(self, x_ND: Tensor) -> Tensor:
        """[N, M] bool: where each edit applies (its trigger fires, or it has none)."""
        if not self.conditional:
            return torch.ones(x_ND.shape[0], self.ids_M.numel(), dtype=torch.bool, device=x_ND.device)
        a_NR = self.reader(x_ND)  # type: ignore[misc]
        return (a_NR.index_select(1, self.trig_col_M) > self.trig_thr_M) | ~self.trig_on_M

    # -- the edit ------------------------------------------------------------------------
    def delta(self, x_ND: Tensor) -> Tensor:
        """Change [N, D] of the activation rows (in x's dtype). Rows are not modified."""
        if self.const_D is not None:
            return self.constant(x_ND.dtype, x_ND.device).expand(x_ND.shape[0], -1)
        return (self.coefficients(x_ND.to(self.dtype)) @ self.W_dec_MD).to(x_ND.dtype)

    def constant(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The delta of add-only edits, one vector [D] (cached per dtype/device)."""
        assert self.const_D is not None
        key = (dtype, device)
        v = self._const_cache.get(key)
        if v is None:
            v = self._const_cache[key] = self.const_D.to(device=device, dtype=dtype)
        return v

    def apply(self, x_ND: Tensor) -> Tensor:
        """x + delta, as a new tensor."""
        if self.const_D is not None:
            return x_ND + self.constant(x_ND.dtype, x_ND.device)
        coef_NM = self.coefficients(x_ND)
        if x_ND.dtype == self.dtype:
            return torch.addmm(x_ND, coef_NM, self.W_dec_MD)
        return x_ND + (coef_NM @ self.W_dec_MD).to(x_ND.dtype)


class TopKCandidates:
    """Latents a TopK SAE selects most often, learned from the rows its readers fully encoded.

    Shared by every reader of one SAE (`TopKCandidates.of(sae)`), so a reader built for a new
    batch starts with what earlier ones learned. Stale candidates only cost speed, never
    exactness: the bound they give is checked against the rows at hand."""

    _by_sae: "weakref.WeakKeyDictionary[SAE, TopKCandidates]" = weakref.WeakKeyDictionary()

    def __init__(self, W_DF: Tensor, b_F: Tensor, n_candidates: int) -> None:
        F_ = W_DF.shape[1]
        self.W_DF, self.b_F = W_DF, b_F
        self.n_candidates = min(F_, n_candidates)
        self.seen_F = torch.zeros(F_, dtype=torch.int64, device=W_DF.device)
        self.in_C_F = torch.zeros(F_, dtype=torch.bool, device=W_DF.device)
        self.W_DC: Tensor | None = None
        self.b_C: Tensor | None = None
        self.rows_since_rebuild = 0
        self.rebuild_rows = 256  # selected rows counted between rebuilds of the set (a rebuild copies columns)
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

    def learn(self, idx_NK: Tensor, k: int) -> None:
        """Grow the candidate set from the latents the full path selected (most frequent first)."""
        flat = idx_NK.reshape(-1)
        self.seen_F.index_add_(0, flat, torch.ones_like(flat))
        self.rows_since_rebuild += idx_NK.shape[0]
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
    """Exact activations [N, M] of latents `ids` of a TopK SAE, cheaply when they are off.

    The full path computes every pre-activation with the SAE's own expression (so values are
    bit-identical to its encode). Which latents are selected: for many rows, or before any
    candidates are known, the SAE's own `topk` (and the selection teaches the candidate set);
    for a few rows and one or two latents, a count: latent m is selected iff fewer than k
    pre-activations exceed its own, and a tie straddling the k-th place goes to the SAE's own `topk`.

    The bound path, for small batches (generation steps), first computes the M latents and the
    shared candidate set C (`TopKCandidates`): if at least k candidates exceed latent m's
    pre-activation by more than the rounding error bound, m is certainly not in the top k (the
    k-th largest of all is at least the k-th largest of C), so its activation is exactly 0 (a
    cheaper bound comes first: C in k groups, the smallest group maximum); if
    its pre-activation is below zero by that margin, the ReLU gives 0 whether it is selected or
    not. Only rows with a latent left undecided go through the full path.
    """

    def __init__(self, sae: SAE, ids_M: Tensor, *, n_candidates: int | None = None, bound_rows: int = 64,
                 count_rows: int = 16, count_latents: int = 2) -> None:
        self.k = int(sae.cfg.k)
        self.ids_M = ids_M
        self.W_DF = sae.W_enc.detach()
        self.b_F = sae.b_enc.detach()
        self.b_dec_D = sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else None
        self.cands = TopKCandidates.of(sae, n_candidates) if n_candidates is None else \
            TopKCandidates(self.W_DF, self.b_F, n_candidates)
        self.bound_rows = bound_rows
        self.count_rows = count_rows
        self.count_latents = count_latents  # counting costs one pass over F per latent; top-k one per row
        self.W_DM = self.W_DF[:, ids_M].contiguous()
        self.b_M = self.b_F[ids_M].contiguous()
        self.err_per_norm, self.err_bias = self.cands.err_per_norm, self.cands.err_bias
        self.full_rows = 0  # rows that needed the full path (for tests and tuning)
        self.bound_hits = 0  # rows decided by the bound alone
        self.count_rows_used = 0  # full-path rows decided by counting (no top-k selection)

    @property
    def W_DC(self) -> Tensor | None:
        return self.cands.W_DC

    def __call__(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor:
        u_ND = x_ND - self.b_dec_D if self.b_dec_D is not None else x_ND
        W_DC, b_C = self.cands.W_DC, self.cands.b_C
        if W_DC is None or u_ND.shape[0] > self.bound_rows:
            return self.full(u_ND)
        pre_NM = torch.addmm(self.b_M, u_ND, self.W_DM)
        tol_N1 = torch.linalg.vector_norm(u_ND, dim=-1, keepdim=True) * self.err_per_norm + self.err_bias
        settled_NM = pre_NM < -tol_N1 if need_NM is None else (pre_NM < -tol_N1) | ~need_NM
        if bool(settled_NM.all()):  # below zero by more than the rounding: off whether selected or not
            self.bound_hits += u_ND.shape[0]
            return pre_NM.new_zeros(pre_NM.shape)
        pre_NC = torch.addmm(b_C, u_ND, W_DC)
        # first a cheap lower bound on the k-th largest: the candidates in k groups, the smallest of the
        # groups' maxima (k distinct latents are at least that large); then, for rows it leaves open,
        # the k-th largest candidate itself
        k, C = self.k, pre_NC.shape[1]
        g = C // k
        for bound in ("groups", "kth"):
            open_N = ~settled_NM.all(1)
            if not bool(open_N.any()):
                self.bound_hits += u_ND.shape[0]
                return pre_NM.new_zeros(pre_NM.shape)
            if bound == "groups":
                if g < 2:
                    continue
                low_N1 = pre_NC[:, : k * g].reshape(-1, k, g).amax(-1).amin(-1, keepdim=True)
                settled_NM = settled_NM | (pre_NM < low_N1 - tol_N1)
            else:
                rows = open_N.nonzero().squeeze(1)
                low_R1 = pre_NC.index_select(0, rows).topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
                settled_NM[rows] |= pre_NM.index_select(0, rows) < low_R1 - tol_N1.index_select(0, rows)
        open_N = ~settled_NM.all(1)
        acts_NM = pre_NM.new_zeros(pre_NM.shape)
        if not bool(open_N.any()):
            self.bound_hits += u_ND.shape[0]
            return acts_NM
        rows = open_N.nonzero().squeeze(1)
        self.bound_hits += u_ND.shape[0] - rows.numel()
        acts_NM[rows] = self.full(u_ND.index_select(0, rows))
        return acts_NM

    def full(self, u_ND: Tensor) -> Tensor:
        pre_NF = u_ND @ self.W_DF + self.b_F  # the SAE's own expression
        self.full_rows += u_ND.shape[0]
        if self.cands.W_DC is not None and u_ND.shape[0] <= self.count_rows and self.ids_M.numel() <= self.count_latents:
            pre_NM = pre_NF.index_select(1, self.ids_M)
            above_NM = (pre_NF.unsqueeze(1) > pre_NM.unsqueeze(2)).sum(-1)  # [N, M] latents strictly above
            tied_NM = (pre_NF.unsqueeze(1) == pre_NM.unsqueeze(2)).sum(-1)  # itself included
            if bool(((above_NM < self.k) & (above_NM + tied_NM > self.k)).any()):
                return self._select(pre_NF)  # a tie straddles the k-th place: the SAE's own topk decides
            self.count_rows_used += u_ND.shape[0]
            return torch.where(above_NM < self.k, pre_NM.relu(), pre_NM.new_zeros(()))
        return self._select(pre_NF, learn=True)

    def _select(self, pre_NF: Tensor, learn: bool = False) -> Tensor:
        vals_NK, idx_NK = pre_NF.topk(self.k, dim=-1, sorted=False)  # the SAE's own selection
        if learn:
            self.cands.learn(idx_NK, self.k)
        hit_NKM = idx_NK.unsqueeze(-1) == self.ids_M
        return (vals_NK.relu().unsqueeze(-1) * hit_NKM).sum(1)


def latents_from_sparse(acts, ids_M: Tensor) -> Tensor:
    """Dense [N, M] values of latents `ids_M` read out of CSR `SparseActs` (0 where inactive)."""
    out_NM = acts.values_N.new_zeros(acts.n_rows, ids_M.numel())
    if acts.values_N.numel() == 0:
        return out_NM
    hit_nM = acts.indices_N.unsqueeze(1) == ids_M.unsqueeze(0)
    entry_n, col_n = hit_nM.nonzero(as_tuple=True)
    out_NM[acts.row_ids()[entry_n], col_n] = acts.values_N[entry_n]
    return out_NM


@torch.no_grad()
def current_activations(sae: SAE, x: Tensor, ids: Sequence[int]) -> Tensor:
    """Activations [..., M] of latents `ids` for inputs `x` [..., D] (the steering hook's own path)."""
    ids_M = torch.tensor(list(ids), dtype=torch.int64, device=sae.W_enc.device)
    return LatentReader(sae, ids_M)(x.reshape(-1, sae.d_in)).reshape(*x.shape[:-1], len(ids))


def reference_edit(sae: SAE, x: Tensor, ops: Sequence[tuple[int, str, float]]) -> Tensor:
    """Eager reference: x + decode(edited) - decode(acts) with a full dense encode.

    `ops` are (feature, op, raw value) triples; returns x' with x's shape and dtype."""
    x_ND = x.reshape(-1, sae.d_in).to(sae.dtype)
    acts_NF = sae.encode(x_ND)
    edited_NF = acts_NF.clone()
    for latent, op, value in ops:
        col = acts_NF[:, latent]
        if op == "add":
            edited_NF[:, latent] = col + value
        elif op == "clamp":
            edited_NF[:, latent] = value
        elif op == "scale":
            edited_NF[:, latent] = col * value
        elif op == "ablate":
            edited_NF[:, latent] = 0.0
        else:
            raise ValueError(f"unknown op {op!r}")
    out_ND = x_ND + (sae.decode(edited_NF) - sae.decode(acts_NF))
    return out_ND.to(x.dtype).reshape(x.shape)
