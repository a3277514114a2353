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
  pre-activation row is computed and the same `topk` the SAE uses decides membership.
- any other SAE: its own `encode_sparse`, then the M latents are read out of the sparse rows.

`reference_edit` is the eager reference (full encode, dense edit, decode both, add the difference);
tests compare the fast path against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from saes.base import SAE
from saes.threshold import JumpReLUSAE
from saes.topk import TopKSAE

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
    """'threshold', 'topk' or 'generic': which exact current-activation path applies."""
    select = type(sae).select
    if isinstance(sae, JumpReLUSAE) and select is JumpReLUSAE.select:
        return "threshold"
    if isinstance(sae, TopKSAE) and select is TopKSAE.select:
        return "topk"
    return "generic"


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
        if self.kind == "topk":
            pre_NF = self.sae.pre_activations(x_ND)
            vals_NK, idx_NK = pre_NF.topk(self.sae.cfg.k, dim=-1, sorted=False)  # the SAE's own selection
            hit_NKM = idx_NK.unsqueeze(-1) == self.ids_M
            return (vals_NK.relu().unsqueeze(-1) * hit_NKM).sum(1)
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
