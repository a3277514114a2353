"""The arithmetic of latent edits: current activations of a few latents, and the activation delta.

Shape key: N rows (token positions), D d_in, F d_sae, M edited latents, K active per row (TopK).

Every latent edit is `new_m = a_m * c1_m + c0_m` on the current activation `a_m` of latent m:

    add v    -> c1 = 0,  c0 = v     (delta = v)
    clamp v  -> c1 = -1, c0 = v     (delta = v - a)
    scale s  -> c1 = s-1, c0 = 0    (delta = (s - 1) a)
    ablate   -> c1 = -1, c0 = 0     (delta = -a)

and the activation moves by the decoded change only, keeping the SAE's reconstruction error:
x' = x + delta_NM @ W_dec[ids]. A delta of exactly zero (add 0, scale 1, clamp to the value the
latent has) adds exact zeros, so x' is bit-identical to x.

Current activations, exactly as the SAE's own encoder would give them:
- threshold encoders (JumpReLU, and the inference form of BatchTopK / Matryoshka): a latent's
  activation depends on its own pre-activation only, so only the M encoder columns are computed:
  pre = (x - b_dec) @ W_enc[:, ids] + b_enc[ids]; a = pre where pre > max(threshold, 0).
- TopK: whether a latent is among the k largest depends on all pre-activations, so the full
  pre-activation row is computed; latent m is active iff fewer than k pre-activations exceed
  its own (one compare-and-sum pass, cheaper than a top-k selection); a tie straddling the k-th
  place is decided by the SAE's own `topk`.
- any other SAE: its own `encode_sparse`, then the M latents are read out of the sparse rows.

`reference_edit` is the eager reference (full encode, dense edit, decode both, add the difference);
tests compare the fast path against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

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
    """Which exact current-activation path applies: the SAE's `encoding_rule` ('threshold',
    'topk'; 'relu' and 'generic' read through the SAE's own `encode_sparse` here)."""
    return sae.encoding_rule


class LatentEditor:
    """Precomputed tensors for editing latents `ids` of one SAE with coefficients (c1, c0).

    Snapshot of the SAE's weights at construction (detached); device/dtype are the SAE's.
    """

    def __init__(self, sae: SAE, ids: Sequence[int], c1: Sequence[float], c0: Sequence[float]) -> None:
        if not (len(ids) == len(c1) == len(c0)) or not ids:
            raise ValueError("ids, c1 and c0 must be non-empty and of equal length")
        dev, dt = sae.W_dec.device, sae.W_dec.dtype
        self.sae = sae
        self.d_in = sae.d_in
        self.dtype = dt
        self.kind = encoder_kind(sae)
        with torch.no_grad():
            self.ids_M = torch.tensor(list(ids), dtype=torch.int64, device=dev)
            self.c1_M = torch.tensor(list(c1), dtype=dt, device=dev)
            self.c0_M = torch.tensor(list(c0), dtype=dt, device=dev)
            self.W_dec_MD = sae.W_dec.detach()[self.ids_M].contiguous()
            self.needs_acts = bool((self.c1_M != 0).any())
            # all-constant edits (add only): one vector per row
            self.const_D = (self.c0_M @ self.W_dec_MD) if not self.needs_acts else None
            self.b_dec_D = sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else None
            self.topk_reader = TopKReader(sae, self.ids_M) if self.kind == "topk" else None
            if self.kind == "threshold":
                self.W_enc_DM = sae.W_enc.detach()[:, self.ids_M].contiguous()
                self.b_enc_M = sae.b_enc.detach()[self.ids_M].contiguous()
                self.fire_above_M = sae.threshold.detach()[self.ids_M].clamp_min(0).contiguous()
        self._const_cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    # -- current activations ---------------------------------------------------------------
    def current_acts(self, x_ND: Tensor) -> Tensor:
        """Activations [N, M] of the edited latents, as the SAE's encoder gives them."""
        x_ND = x_ND.to(self.dtype)
        if self.kind == "threshold":
            sae_in = x_ND - self.b_dec_D if self.b_dec_D is not None else x_ND
            pre_NM = torch.addmm(self.b_enc_M, sae_in, self.W_enc_DM)
            return torch.where(pre_NM > self.fire_above_M, pre_NM, pre_NM.new_zeros(()))
        if self.topk_reader is not None:
            return self.topk_reader(x_ND)
        return latents_from_sparse(self.sae.encode_sparse(x_ND), self.ids_M)

    # -- the edit ------------------------------------------------------------------------
    def delta(self, x_ND: Tensor) -> Tensor:
        """Change [N, D] of the activation rows (in x's dtype). Rows are not modified."""
        if self.const_D is not None:
            return self.constant(x_ND.dtype, x_ND.device).expand(x_ND.shape[0], -1)
        a_NM = self.current_acts(x_ND)
        coef_NM = torch.addcmul(self.c0_M, a_NM, self.c1_M)
        return (coef_NM @ self.W_dec_MD).to(x_ND.dtype)

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
        a_NM = self.current_acts(x_ND)
        coef_NM = torch.addcmul(self.c0_M, a_NM, self.c1_M)
        if x_ND.dtype == self.dtype:
            return torch.addmm(x_ND, coef_NM, self.W_dec_MD)
        return x_ND + (coef_NM @ self.W_dec_MD).to(x_ND.dtype)


class TopKReader:
    """Exact activations [N, M] of latents `ids` of a TopK SAE, cheaply when they are off.

    The full path computes every pre-activation and runs the SAE's own `topk` (so ties are
    broken exactly as the SAE breaks them). The bound path, for small batches (generation steps),
    first computes the M latents and a candidate set C of latents (the ones the full path has
    seen selected most often): if at least k candidates exceed latent m's pre-activation by more
    than the rounding error bound, m is certainly not in the top k (the k-th largest of all is at
    least the k-th largest of C), so its activation is exactly 0; if its pre-activation is below
    zero by that margin, the ReLU gives 0 whether it is selected or not. Only rows with a latent
    left undecided go through the full path.
    """

    def __init__(self, sae: SAE, ids_M: Tensor, *, n_candidates: int | None = None, bound_rows: int = 64) -> None:
        self.k = int(sae.cfg.k)
        self.ids_M = ids_M
        self.W_DF = sae.W_enc.detach()
        self.b_F = sae.b_enc.detach()
        self.b_dec_D = sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else None
        F_, D = self.W_DF.shape[1], self.W_DF.shape[0]
        self.n_candidates = min(F_, n_candidates or max(8 * self.k, 256))
        self.bound_rows = bound_rows
        self.W_DM = self.W_DF[:, ids_M].contiguous()
        self.b_M = self.b_F[ids_M].contiguous()
        self.seen_F = torch.zeros(F_, dtype=torch.int64, device=self.W_DF.device)
        self.in_C_F = torch.zeros(F_, dtype=torch.bool, device=self.W_DF.device)
        self.W_DC: Tensor | None = None
        self.b_C: Tensor | None = None
        # |computed - exact| <= D * eps * ||u|| * ||w|| + eps * |b| for each pre-activation; two
        # computations of the same value differ by at most twice that
        eps = torch.finfo(self.W_DF.dtype).eps
        self.err_per_norm = 2.0 * (D + 2) * eps * float(self.W_DF.norm(dim=0).max())
        self.err_bias = 4.0 * eps * float(self.b_F.abs().max()) + torch.finfo(self.W_DF.dtype).tiny
        self.full_rows = 0  # rows that needed the full path (for tests and tuning)
        self.bound_hits = 0  # rows decided by the bound alone

    def __call__(self, x_ND: Tensor) -> Tensor:
        u_ND = x_ND - self.b_dec_D if self.b_dec_D is not None else x_ND
        if self.W_DC is None or u_ND.shape[0] > self.bound_rows:
            return self.full(u_ND)
        pre_NM = torch.addmm(self.b_M, u_ND, self.W_DM)
        pre_NC = torch.addmm(self.b_C, u_ND, self.W_DC)
        kth_N1 = pre_NC.topk(self.k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
        tol_N1 = u_ND.norm(dim=-1, keepdim=True) * self.err_per_norm + self.err_bias
        zero_NM = (pre_NM < kth_N1 - tol_N1) | (pre_NM < -tol_N1)
        open_N = ~zero_NM.all(1)
        acts_NM = pre_NM.new_zeros(pre_NM.shape)
        if not bool(open_N.any()):
            self.bound_hits += u_ND.shape[0]
            return acts_NM
        rows = open_N.nonzero().squeeze(1)
        self.bound_hits += u_ND.shape[0] - rows.numel()
        acts_NM[rows] = self.full(u_ND.index_select(0, rows))
        return acts_NM

    def full(self, u_ND: Tensor) -> Tensor:
        pre_NF = u_ND @ self.W_DF + self.b_F  # the SAE's own expression and selection
        vals_NK, idx_NK = pre_NF.topk(self.k, dim=-1, sorted=False)
        hit_NKM = idx_NK.unsqueeze(-1) == self.ids_M
        self.full_rows += u_ND.shape[0]
        self._learn(idx_NK)
        return (vals_NK.relu().unsqueeze(-1) * hit_NKM).sum(1)

    def _learn(self, idx_NK: Tensor) -> None:
        """Grow the candidate set from the latents the full path selected (most frequent first)."""
        flat = idx_NK.reshape(-1)
        self.seen_F.index_add_(0, flat, torch.ones_like(flat))
        if self.W_DC is not None and bool(self.in_C_F[flat].all()):
            return
        seen = int((self.seen_F > 0).sum())
        if seen < self.k:
            return
        C = self.seen_F.topk(min(self.n_candidates, seen)).indices
        self.in_C_F.zero_()
        self.in_C_F[C] = True
        self.W_DC = self.W_DF[:, C].contiguous()
        self.b_C = self.b_F[C].contiguous()


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
    editor = LatentEditor(sae, ids, [0.0] * len(ids), [0.0] * len(ids))
    editor.needs_acts = True
    return editor.current_acts(x.reshape(-1, sae.d_in)).reshape(*x.shape[:-1], len(ids))


def reference_edit(sae: SAE, x: Tensor, ops: Sequence[tuple[int, str, float]]) -> Tensor:
    """Eager reference: x + decode(edited) - decode(acts) with a full dense encode.

    `ops` are (feature, op, raw value) triples; returns x' with x's shape and dtype."""
    x_ND = x.reshape(-1, sae.d_in).to(sae.dtype)
    acts_NF = sae.encode(x_ND)
    edited_NF = acts_NF.clone()
    for feature, op, value in ops:
        col = acts_NF[:, feature]
        if op == "add":
            edited_NF[:, feature] = col + value
        elif op == "clamp":
            edited_NF[:, feature] = value
        elif op == "scale":
            edited_NF[:, feature] = col * value
        elif op == "ablate":
            edited_NF[:, feature] = 0.0
        else:
            raise ValueError(f"unknown op {op!r}")
    out_ND = x_ND + (sae.decode(edited_NF) - sae.decode(acts_NF))
    return out_ND.to(x.dtype).reshape(x.shape)
