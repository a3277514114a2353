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
  pre = x @ W_enc[:, ids] + (b_enc - b_dec @ W_enc)[ids]; a = pre where pre > max(threshold, 0);
  a pre-activation within float rounding of its threshold is decided by the SAE's own expression
  over the row alone.
- ReLU ("standard"): the same with a threshold of 0.
- TopK: a bound from a learned candidate set usually proves the M latents off without the full
  encode; otherwise, without a need mask, `sae.encode(x)[:, ids]` bit for bit (the SAE's own
  expression and selection over the rows); with one (the batched engine), each row as if alone,
  as for threshold encoders: on/off exactly as `sae.encode` of the row alone, values within
  rounding of it (`steering.topk_read`).
- any other SAE: its own `encode_sparse`, then the M latents are read out of the sparse rows.

`reference_edit` is the eager reference (full encode, dense edit, decode both, add the difference);
tests compare the fast path against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from saes.base import SAE
from steering.lowprecision import sae_precision
from steering.topk_read import TopKReader, fold_b_dec, norm_dtype

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


class LatentReader:
    """Exact current activations [N, M] of latents `ids_M` of one SAE (see the module docstring).

    Threshold and ReLU encoders compute the M pre-activations alone, from x itself with b_dec
    folded into the bias (`fold_b_dec`: within a tolerance tol(x) of the SAE's own computed
    pre-activations). A pre-activation within tol of its threshold is decided by the SAE's own
    expression over the whole row (rare: such rows only). Which latents fire is then exactly what
    the SAE's encode says (values equal it up to rounding), and does not depend on which other
    latents are read alongside (the batched engine reads a different set for each batch). The
    test costs two reductions per call: the smallest |pre - threshold| of the call against the
    tolerance of its largest norm (the Frobenius norm of all its rows); only when that fails are
    rows tested one by one. Built for the SAE's weights at construction (some detached views,
    some copies): build a new one after changing them in place."""

    def __init__(self, sae: SAE, ids_M: Tensor) -> None:
        self.sae = sae
        self.kind = sae.encoding_rule  # "threshold", "relu", "topk" or "generic" (its own encode_sparse)
        self.dtype = sae.W_enc.dtype
        self.ids_M = ids_M
        self.M = int(ids_M.numel())
        self.near_rows = 0  # rows decided by the SAE's own expression (threshold/ReLU; tests)
        with torch.no_grad():
            self.b_dec_D = sae.b_dec.detach() if sae.cfg.apply_b_dec_to_input else None
            self.topk = TopKReader(sae, ids_M) if self.kind == "topk" else None
            if self.kind in ("threshold", "relu"):
                self.W_enc_DF = sae.W_enc.detach()
                self.b_enc_F = sae.b_enc.detach()
                self.W_enc_DM = self.W_enc_DF[:, ids_M].contiguous()
                self.b_fold_M, self.err_per_norm, self.err_const = fold_b_dec(
                    self.W_enc_DM, self.b_enc_F[ids_M], self.b_dec_D)
                if self.kind == "threshold":
                    self.fire_above_M = sae.threshold.detach()[ids_M].clamp_min(0).contiguous()
                else:
                    self.fire_above_M = torch.zeros(self.M, dtype=self.dtype, device=ids_M.device)
                # one threshold for all M (ReLU, or a single latent): a scalar op decides
                same = self.M > 0 and bool((self.fire_above_M == self.fire_above_M[0]).all())
                self.fire_above = float(self.fire_above_M[0]) if same else None
                self.zero = self.fire_above_M.new_zeros(())
                self.eps = torch.finfo(self.dtype).eps

    def __call__(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor:
        """`need_NM` (optional, bool): the (row, latent) pairs the caller will use; the others may
        come back as 0 whatever their activation (TopK then computes only the rows its bound
        leaves open, each read as if alone)."""
        a_NM = self.read(x_ND, need_NM)
        return x_ND.new_zeros(x_ND.shape[0], self.ids_M.numel(), dtype=self.dtype) if a_NM is None else a_NM

    def read(self, x_ND: Tensor, need_NM: Tensor | None = None) -> Tensor | None:
        """As calling the reader, or None when every needed activation is exactly 0 (TopK's bound
        proves that often; callers skip work on it)."""
        if x_ND.dtype is not self.dtype:
            x_ND = x_ND.to(self.dtype)
        if self.topk is not None:
            return self.topk.read(x_ND, need_NM)
        if self.kind in ("threshold", "relu"):
            return self._read_threshold(x_ND)
        return latents_from_sparse(self.sae.encode_sparse(x_ND), self.ids_M)

    def _read_threshold(self, x_ND: Tensor) -> Tensor:
        pre_NM = torch.addmm(self.b_fold_M, x_ND, self.W_enc_DM)
        if pre_NM.numel() == 0:
            return pre_NM
        t = self.fire_above
        d_NM = pre_NM if t == 0.0 else torch.sub(pre_NM, self.fire_above_M)
        # |d| is rounded once (relative eps / 2), the norm's sum of n squares by at most (n + 2) eps
        eps = self.eps
        closest = float(torch.linalg.vector_norm(d_NM, ord=-math.inf)) * (1.0 - eps)
        norm = float(torch.linalg.vector_norm(x_ND, dtype=norm_dtype(x_ND))) * (1.0 + (x_ND.numel() + 2) * eps)
        if not closest > self.err_per_norm * norm + self.err_const:  # a NaN row makes `closest` NaN: check rows one by one
            self._decide_near_rows(x_ND, pre_NM, d_NM)
        if t is not None and self.kind == "relu":
            return torch.threshold(pre_NM, t, 0.0)  # pre where pre > t, else 0 (NaN stays NaN, as in ReLU)
        return torch.where(pre_NM > self.fire_above_M, pre_NM, self.zero)

    def _decide_near_rows(self, x_ND: Tensor, pre_NM: Tensor, d_NM: Tensor) -> None:
        """Rows with a pre-activation within its own tolerance of the threshold: the SAE's own
        expression over the row decides (written into pre_NM)."""
        tol_N1 = torch.linalg.vector_norm(x_ND, dim=-1, keepdim=True, dtype=torch.float64) * self.err_per_norm
        near_N = (d_NM.double().abs() * (1.0 - self.eps) <= tol_N1 + self.err_const).any(1)
        sae_in = x_ND - self.b_dec_D if self.b_dec_D is not None else x_ND
        for r in near_N.nonzero().flatten().tolist():
            own_1F = sae_in[r : r + 1] @ self.W_enc_DF + self.b_enc_F
            pre_NM[r] = own_1F[0].index_select(0, self.ids_M)
            self.near_rows += 1


class LatentEditor:
    """Precomputed tensors for editing latents `ids` of one SAE with coefficients (c1, c0).

    `triggers` (optional, one per edited latent): None, or (trigger latent, raw threshold): the
    edit of that latent applies only on rows where the trigger's current activation is above the
    threshold. Built for the SAE's weights at construction (some detached views, some copies):
    build a new one after changing them in place; device/dtype are the SAE's.
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
        M = len(ids)
        # latents read: the edited ones whose change depends on their activation (c1 != 0; an add
        # does not), then trigger latents not read already
        read = [int(f) for f, c in zip(ids, c1) if c != 0]
        self.read_all_edited = len(read) == M  # then the first M read columns are the edited latents, in order
        self.edited_read_pos = [j for j, c in enumerate(c1) if c != 0]  # edited latents among the read ones
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
            self.c0_zero = not bool((self.c0_M != 0).any())  # scale / ablate only: no change where all are off
            self.needs_acts = bool((self.c1_M != 0).any()) or self.conditional
            # all-constant edits (add only, unconditional): one vector per row
            self.const_D = (self.c0_M @ self.W_dec_MD) if not self.needs_acts else None
            self.reader = LatentReader(sae, self.read_ids_R) if self.needs_acts else None
            if self.conditional:
                cols = torch.tensor(trig_col, dtype=torch.int64, device=dev)
                self.trig_col_M = cols.clamp_min(0)
                self.trig_thr_M = torch.tensor(trig_thr, dtype=dt, device=dev)
                self.trig_on_M = cols >= 0  # edits without a trigger always apply
                # per-call shortcuts: edit m's trigger is read column m; every edit has a trigger
                self.trig_in_place = trig_col == list(range(M)) and len(read) == M
                self.all_triggered = all(c >= 0 for c in trig_col)
            # scale / ablate only (c0 = 0), unconditional: x + a @ (c1 * W_dec), one product
            self.c1_W_MD = self.c1_M[:, None] * self.W_dec_MD if (
                self.c0_zero and self.read_all_edited and not self.conditional) else None
        self.M = M
        self._const_cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    @property
    def topk_reader(self) -> "TopKReader | None":
        return None if self.reader is None else self.reader.topk

    def coefficients_or_none(self, x_ND: Tensor) -> Tensor | None:
        """How much each edited latent changes on each row, [N, M] (0 where a trigger is off), or
        None when every coefficient is exactly 0 (nothing changes)."""
        assert self.reader is not None
        a_NR = self.reader.read(x_ND)
        M = self.M
        if a_NR is None:  # every read activation is 0: c0 + 0 * c1 is c0 exactly
            if not self.conditional:
                return None if self.c0_zero else self.c0_M.expand(x_ND.shape[0], M)
            a_NR = x_ND.new_zeros(x_ND.shape[0], self.read_ids_R.numel(), dtype=self.dtype)
        if self.conditional:
            fires_NM = (a_NR if self.trig_in_place else a_NR.index_select(1, self.trig_col_M)) > self.trig_thr_M
            on_NM = fires_NM if self.all_triggered else fires_NM | ~self.trig_on_M
        if self.read_all_edited:
            coef_NM = torch.addcmul(self.c0_M, a_NR if a_NR.shape[1] == M else a_NR[:, :M], self.c1_M)
        elif not self.edited_read_pos:  # adds only (conditional): the change does not depend on their activations
            return on_NM * self.c0_M
        else:
            a_NM = a_NR.new_zeros(x_ND.shape[0], M)  # c1 is 0 where an edited latent is not read
            a_NM[:, self.edited_read_pos] = a_NR[:, : len(self.edited_read_pos)]
            coef_NM = torch.addcmul(self.c0_M, a_NM, self.c1_M)
        return coef_NM * on_NM if self.conditional else coef_NM

    def fired(self, x_ND: Tensor) -> Tensor:
        """[N, M] bool: where each edit applies (its trigger fires, or it has none)."""
        if not self.conditional:
            return torch.ones(x_ND.shape[0], self.ids_M.numel(), dtype=torch.bool, device=x_ND.device)
        a_NR = self.reader(x_ND)  # type: ignore[misc]
        return (a_NR.index_select(1, self.trig_col_M) > self.trig_thr_M) | ~self.trig_on_M

    # -- the edit ------------------------------------------------------------------------
    def delta(self, x_ND: Tensor) -> Tensor:
        """Change [N, d_out] of the activation rows read at `x_ND` (in x's dtype). Rows are not modified."""
        d_ND = self.delta_or_none(x_ND)
        return x_ND.new_zeros(x_ND.shape[0], self.d_out) if d_ND is None else d_ND

    def delta_or_none(self, x_ND: Tensor) -> Tensor | None:
        """As `delta`, or None when nothing changes (every coefficient is exactly 0: no product)."""
        if self.const_D is not None:
            return self.constant(x_ND.dtype, x_ND.device).expand(x_ND.shape[0], -1)
        coef_NM = self.coefficients_or_none(x_ND.to(self.dtype))
        return None if coef_NM is None else (coef_NM @ self.W_dec_MD).to(x_ND.dtype)

    def constant(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The delta of add-only edits, one vector [D] (cached per dtype/device)."""
        assert self.const_D is not None
        key = (dtype, device)
        v = self._const_cache.get(key)
        if v is None:
            v = self._const_cache[key] = self.const_D.to(device=device, dtype=dtype)
        return v

    def apply(self, x_ND: Tensor) -> Tensor:
        """x + delta: a new tensor, or x_ND itself when nothing changes (do not write into it)."""
        if self.const_D is not None:
            return x_ND + self.constant(x_ND.dtype, x_ND.device)
        if self.c1_W_MD is not None and x_ND.dtype is self.dtype:
            assert self.reader is not None
            a_NM = self.reader.read(x_ND)
            return x_ND if a_NM is None else torch.addmm(x_ND, a_NM, self.c1_W_MD)
        coef_NM = self.coefficients_or_none(x_ND)
        if coef_NM is None:
            return x_ND
        if x_ND.dtype is self.dtype:
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
    ids_M = torch.tensor(list(ids), dtype=torch.int64, device=sae.W_enc.device)
    with sae_precision(x):
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
