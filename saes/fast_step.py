"""Hand-written forward and backward of the training objective: the fast `compute_grads`.

Shape key: B rows, D d_in, F d_sae, K k per row, L Matryoshka levels, N selected entries,
E dead latents, A AuxK latents per row, O d_out (the target's width; D for an SAE).

Transcoders (`target_BO` given): the decoder's goal is the target less the skip term
(`goal = y - x @ W_skip.T`, a constant within the step), so decode, losses and the sparse
backward run unchanged against `goal`; W_skip's gradient is G^T x with G the loss's gradient
with respect to the prediction (summed over Matryoshka levels, as b_dec's).

Registered in `saes.step.STEP_METHODS` (when `saes` is imported):

- "fast": exact, in the SAE's dtype, pure torch (any device). Same selection, losses and
  gradients as the eager reference "autograd" (`saes.objective.training_loss` + backward) up to
  summation order (~2e-7 relative; tests/test_saes_fast_step.py).
- "fast_bf16": the encoder matmul runs on bf16 copies of the input and of W_enc (fp32 master
  weights; everything after the matmul is fp32). Pre-activations are bf16, so near-ties pick
  different latents in ~1% of slots. Worth it where bf16 matmuls are fast (CUDA, CPUs with AMX
  or AVX512-BF16: `bf16_matmul_is_fast`); on other CPUs bf16 matmuls are emulated and several
  times *slower* than fp32.
- "fast_native", "fast_native_bf16": the same two with the compiled CPU kernels of
  `saes.native` (exact top-k, exact two-pass BatchTopK that also counts the rows above the
  inference thresholds, a row-wise fused decode / loss / activation-gradient kernel, a tiled
  transpose); float32 SAEs on CPU, needs a C++ compiler (built on first use).

What makes it fast (forward and backward by hand, no autograd graph):
- the encoder matmul writes into a reused buffer (allocating a fresh [B, F] output costs more
  than the matmul on CPU); it is the only dense [B, F] work;
- exact top-k through group maxima (`saes.topk_select`), BatchTopK through a lower bound of the
  cut from group maxima and a few candidates;
- decode with `embedding_bag` over the N active decoder rows; Matryoshka prefixes decode as
  (row, level) bags and a cumulative sum over levels;
- the activation gradients are N dot products (`_embedding_bag_per_sample_weights_backward`);
- sparse weight gradients: W_dec and W_enc rows receive sums over the entries of their latent
  only (entries sorted by latent once, two `embedding_bag`s), never a dense [B, F] matrix;
- AuxK works on the E dead columns only (dense matmuls over E, not F).

Which step applies is the SAE's `training_rule` (`saes/base.py`): "topk" (each row's k largest)
or "batch_topk" (the batch's k*B largest: BatchTopK, Matryoshka); levels come from `sae.levels`;
"jumprelu" (learned thresholds, a sparsity penalty) has its own step in `saes/jumprelu_step.py`.
An SAE with another rule trains with "autograd" only.

Buffers are reused through a `StepWorkspace` the caller owns (the trainer keeps one per SAE;
without one, each call allocates afresh). `GradResult.pre_BF` is a buffer of that workspace:
valid until the next fast step with the same workspace (the trainer uses it within the step).
Copy it to keep it.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from saes.base import SAE
from saes.objective import DEFAULT_AUX_COEF, default_k_aux, decoder_goal
from saes.sparse import SparseActs
from saes.step import STEP_METHODS, GradResult
from saes.topk_select import BatchGroup, batch_top_entries, row_topk, sort_order, take_top

FAST_RULES = ("topk", "batch_topk", "jumprelu")  # the training rules this step implements
Kernels = Literal["torch", "native"]
TopkFn = Callable[[Tensor, int], "tuple[Tensor, Tensor]"]
KERNELS: tuple[str, ...] = ("torch", "native")


# ------------------------------------------------------------------------------ workspace
class StepWorkspace:
    """Reusable buffers of one SAE's fast step, keyed by name, shape, dtype and device.

    Owned by the caller of the step (the trainer keeps one per SAE), never by the SAE or module
    state; copies and pickles are empty. At most `per_name` shapes are kept per buffer name (e.g.
    the training batch and a smaller last batch)."""

    def __init__(self, per_name: int = 2) -> None:
        self.per_name = per_name
        self._buffers: dict[str, list[Tensor]] = {}

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of this shape; the same storage on every call with these keys."""
        shape = tuple(shape)
        kept = self._buffers.setdefault(name, [])
        for i, buf in enumerate(kept):
            if buf.shape == shape and buf.dtype == dtype and buf.device == device:
                if i:
                    kept.insert(0, kept.pop(i))
                return buf
        buf = torch.empty(shape, dtype=dtype, device=device)
        kept.insert(0, buf)
        del kept[self.per_name :]
        return buf

    def clear(self) -> None:
        self._buffers.clear()

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for kept in self._buffers.values() for b in kept)

    def __deepcopy__(self, memo: dict) -> StepWorkspace:
        return StepWorkspace(self.per_name)

    def __getstate__(self) -> dict:
        return {"per_name": self.per_name, "_buffers": {}}

    def __repr__(self) -> str:
        return f"StepWorkspace({sum(map(len, self._buffers.values()))} buffers, {self.nbytes() / 2**20:.1f} MiB)"


def bf16_matmul_is_fast(device: torch.device | str = "cpu") -> bool:
    """True where bf16 matmuls run on dedicated hardware (CUDA; CPU with AMX or AVX512-BF16),
    i.e. where "fast_bf16" beats "fast". A hint for choosing a step method, never applied
    implicitly."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


# ----------------------------------------------------------------------------- selection
class _Entries(NamedTuple):
    """The selected latents of a batch in row-major CSR order."""

    vals_N: Tensor  # activation values in the SAE's dtype (>= 0)
    idx_N: Tensor  # latent ids, int64
    rows_N: Tensor  # row of each entry, int64
    offsets_B1: Tensor  # CSR row pointers, int64
    sorted_in_row: bool  # latent ids ascend within each row
    above_threshold_F: Tensor | None  # BatchTopK: rows with pre > threshold, when counted


def _select(
    sae: SAE, pre_BF: Tensor, dtype: torch.dtype, topk: TopkFn, native_kernels: bool, bias_F: Tensor | None = None,
    group: BatchGroup | None = None,
) -> _Entries:
    """The training selection (exact either way). With the native kernels, BatchTopK also counts
    the rows above the SAE's thresholds in its pass over the batch (for `update_inference_form_`).
    `bias_F` (native kernels only): pre_BF still lacks b_enc; the kernels add it in place in
    their first pass over each row (one pass over the [B, F] matrix instead of two). `group`
    (data parallel, "batch_topk"): select over the global batch of its ranks."""
    if bias_F is not None and not native_kernels:
        raise ValueError("a fused encoder bias needs the native kernels")
    B, Fdim = pre_BF.shape
    dev = pre_BF.device
    if sae.training_rule == "batch_topk":
        k = sae.cfg.k
        total = k * group.global_rows(B) if group is not None else min(k * B, B * Fdim)
        found = None
        if native_kernels:
            from saes import native

            thr_F = sae.threshold if bool((sae.threshold > 0).all()) else None
            found = native.batch_top_entries(pre_BF, k, thr_F, total=min(k * B, B * Fdim),
                                             reduce_floor=group.reduce_floor if group is not None else None,
                                             bias_F=bias_F)
        if found is not None:
            vals_N, rows_N, idx_N, counts_F = found
            keep_N = group.take_top(vals_N, total) if group is not None else take_top(vals_N, total)
            vals_N, rows_N, idx_N = vals_N[keep_N], rows_N[keep_N], idx_N[keep_N]
        else:
            vals_N, rows_N, idx_N = batch_top_entries(pre_BF, k, group)
            counts_F = None
        offsets_B1 = torch.zeros(B + 1, dtype=torch.int64, device=dev)
        torch.cumsum(torch.bincount(rows_N, minlength=B), 0, out=offsets_B1[1:])
        return _Entries(vals_N.to(dtype), idx_N, rows_N, offsets_B1, True, counts_F)
    k = sae.cfg.k  # "topk"
    if bias_F is not None:
        from saes import native

        vals_BK, idx_BK = native.row_topk(pre_BF, k, bias_F)
    else:
        vals_BK, idx_BK = topk(pre_BF, k)
    vals_N = vals_BK.reshape(-1).to(dtype).relu_()
    rows_N = torch.arange(B, device=dev).repeat_interleave(k)
    offsets_B1 = torch.arange(0, B * k + 1, k, device=dev)
    return _Entries(vals_N, idx_BK.reshape(-1), rows_N, offsets_B1, False, None)


# ------------------------------------------------------------------------------- helpers
def _offsets(counts: Tensor) -> Tensor:
    out = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=out[1:])
    return out


def _bag_sum(ids_N: Tensor, table_RD: Tensor, offsets_Q1: Tensor, weights_N: Tensor) -> Tensor:
    """out[q] = sum over entries n of bag q of weights[n] * table[ids[n]], [Q, D]."""
    return F.embedding_bag(
        ids_N, table_RD, offsets_Q1, mode="sum", per_sample_weights=weights_N, include_last_offset=True
    )


def _entry_dots(grad_QD: Tensor, table_RD: Tensor, ids_N: Tensor, offsets_Q1: Tensor, bag_N: Tensor) -> Tensor:
    """dots[n] = <grad[bag[n]], table[ids[n]]>: the gradient of `_bag_sum` w.r.t. its weights."""
    op = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)
    if op is not None:
        return op(grad_QD, table_RD, ids_N, offsets_Q1, bag_N, 0)
    out = grad_QD.new_empty(ids_N.numel())  # pragma: no cover - older torch
    for s in range(0, ids_N.numel(), 16384):
        e = slice(s, s + 16384)
        out[e] = (grad_QD[bag_N[e]] * table_RD[ids_N[e]]).sum(1)
    return out


def _set_grad(p: Tensor, value: Tensor) -> None:
    p.grad = value


def _encode(ws: StepWorkspace, sae_in_BD: Tensor, sae: SAE, enc_dtype: torch.dtype, add_bias: bool = True) -> Tensor:
    """pre = sae_in @ W_enc + b_enc into the workspace buffer (in `enc_dtype`). add_bias=False
    (same dtype only) leaves b_enc out, for a selection kernel that adds it on the fly."""
    B, D = sae_in_BD.shape
    W_enc, b_enc = sae.W_enc.detach(), sae.b_enc.detach()
    pre_BF = ws.buffer("pre_BF", (B, sae.d_sae), enc_dtype, sae_in_BD.device)
    if enc_dtype == W_enc.dtype:
        torch.mm(sae_in_BD, W_enc, out=pre_BF)  # same ops as the reference: bitwise equal
        if add_bias:
            pre_BF.add_(b_enc)
        return pre_BF
    W_lp = ws.buffer("W_enc_lp", tuple(W_enc.shape), enc_dtype, W_enc.device)
    W_lp.copy_(W_enc)
    x_lp = ws.buffer("sae_in_lp", (B, D), enc_dtype, sae_in_BD.device)
    x_lp.copy_(sae_in_BD)
    torch.addmm(b_enc.to(enc_dtype), x_lp, W_lp, out=pre_BF)
    return pre_BF


# --------------------------------------------------------------------------- the step
def fast_grads(
    sae: SAE,
    x_BD: Tensor,
    dead_mask_F: Tensor | None = None,
    aux_coef: float = DEFAULT_AUX_COEF,
    k_aux: int | None = None,
    *,
    encoder_dtype: torch.dtype | None = None,
    kernels: Kernels = "torch",
    workspace: StepWorkspace | None = None,
    group: BatchGroup | None = None,
    target_BO: Tensor | None = None,
    step: int = 0,
) -> GradResult:
    """Gradients of `training_loss` written into `.grad` of W_enc, b_enc, W_dec, b_dec (and
    W_skip; and a JumpReLU's threshold); `target_BO`: a transcoder's target rows.

    encoder_dtype: dtype of the encoder matmul (None = the SAE's dtype: exact); e.g.
    torch.bfloat16 for "fast_bf16". kernels: "torch" (pure torch, any device and dtype) or
    "native" (the compiled CPU kernels of `saes.native`: top-k and the sparse backward; float32
    SAEs on CPU; a JumpReLU SAE has no native kernels and runs the torch code). workspace:
    buffers to reuse (default: fresh ones). group: the ranks of a data-parallel global batch (see
    `saes.step`). step: the optimiser step, for the JumpReLU penalty's warm-up."""
    if sae.training_rule not in FAST_RULES:
        raise ValueError(
            f"the fast step implements the training rules {', '.join(FAST_RULES)}; a {sae.architecture!r} SAE "
            f"trains by the rule {sae.training_rule!r}: use method='autograd' (TrainConfig.step_method)"
        )
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}; choose one of {', '.join(KERNELS)}")
    if sae.training_rule == "jumprelu":
        if sae.levels is not None:
            raise ValueError(f"the JumpReLU fast step has no levels; train this {sae.architecture!r} SAE with "
                             f"method='autograd' (TrainConfig.step_method)")
        from saes.jumprelu_step import jumprelu_grads

        with torch.no_grad():
            return jumprelu_grads(sae, x_BD, dead_mask_F, step, encoder_dtype, workspace or StepWorkspace(), target_BO)
    if sae.levels is not None and sae.training_rule != "batch_topk":
        raise ValueError(f"the fast step decodes levels only after a batch_topk selection (rows in latent order); "
                         f"train this {sae.architecture!r} SAE with method='autograd' (TrainConfig.step_method)")
    if kernels == "native" and (sae.device.type != "cpu" or sae.dtype != torch.float32):
        raise ValueError(
            f"kernels='native' runs float32 SAEs on CPU; this one is {sae.dtype} on {sae.device}: use kernels='torch'"
        )
    with torch.no_grad():
        return _fast_grads(
            sae, x_BD, dead_mask_F, aux_coef, k_aux, encoder_dtype, kernels == "native", workspace or StepWorkspace(),
            group, target_BO,
        )


def _fast_grads(
    sae: SAE,
    x_BD: Tensor,
    dead_mask_F: Tensor | None,
    aux_coef: float,
    k_aux: int | None,
    encoder_dtype: torch.dtype | None,
    native_kernels: bool,
    ws: StepWorkspace,
    group: BatchGroup | None,
    target_BO: Tensor | None = None,
) -> GradResult:
    x_BD, goal_BO, skip_BO = decoder_goal(sae, x_BD, target_BO)
    B, D = x_BD.shape
    goal_BO = goal_BO.contiguous()
    O = goal_BO.shape[1]
    Fdim, dtype, dev = sae.d_sae, sae.dtype, x_BD.device
    W_enc, W_dec, b_dec = sae.W_enc.detach(), sae.W_dec.detach().contiguous(), sae.b_dec.detach()
    sae_in_BD = x_BD - b_dec if sae.cfg.apply_b_dec_to_input else x_BD
    topk: TopkFn = row_topk
    if native_kernels:
        from saes import native

        topk = native.row_topk

    # forward: encoder, selection (the native kernels add b_enc in their pass over pre_BF)
    enc_dtype = encoder_dtype or dtype
    fuse_bias = native_kernels and enc_dtype == torch.float32
    pre_BF = _encode(ws, sae_in_BD, sae, enc_dtype, add_bias=not fuse_bias)
    ent = _select(sae, pre_BF, dtype, topk, native_kernels, sae.b_enc.detach() if fuse_bias else None, group)
    vals_N, idx_N, rows_N = ent.vals_N, ent.idx_N, ent.rows_N
    relu = sae.training_rule == "topk"  # TopK values are relu(pre): no gradient where 0
    widths = sae.levels

    # decode into (row, level) bags; level sums accumulate into prefix reconstructions
    if widths is not None:
        L = len(widths)
        assert ent.sorted_in_row  # (row, level) bags are then contiguous
        level_N = torch.bucketize(idx_N, torch.tensor(widths, device=dev), right=True)
        bag_N = rows_N * L + level_N
    else:
        L, bag_N, level_N = 1, rows_N, None
    if native_kernels:  # decode, losses, g and dvals row by row
        recon_BD, g_QD, sq_BL, dvals_N = native.decode_grad(
            ent.offsets_B1, idx_N, level_N if L > 1 else None, vals_N, W_dec, b_dec.contiguous(), goal_BO, L, relu
        )
        level_mse_L = (sq_BL.sum(0) / B).to(dtype)
        g0_BO = g_QD.view(B, L, O)[:, 0]  # d loss / d prediction, over every level
        db_dec_D = g0_BO.sum(0)
    else:
        bag_off = _offsets(torch.bincount(bag_N, minlength=B * L)) if L > 1 else ent.offsets_B1
        parts_QD = _bag_sum(idx_N, W_dec, bag_off, vals_N)  # [B*L, O]
        recon_BLD = parts_QD.view(B, L, O)
        for j in range(1, L):  # prefix sums over levels, in order: a float cumsum has no deterministic CUDA kernel
            recon_BLD[:, j] += recon_BLD[:, j - 1]
        recon_BLD += b_dec
        recon_BD = recon_BLD[:, -1].clone()
        # reconstruction losses; err becomes the gradient wrt each prefix, then its suffix sums
        err_BLD = recon_BLD.sub_(goal_BO.unsqueeze(1))
        level_mse_L = (err_BLD * err_BLD).sum(dim=(0, 2)) / B
        err_BLD.mul_(2.0 / B)
        for j in range(L - 2, -1, -1):  # G_l = sum over levels j >= l of d loss / d recon_j
            err_BLD[:, j] += err_BLD[:, j + 1]
        g_QD = err_BLD.view(B * L, O)
        g0_BO = err_BLD[:, 0]
        db_dec_D = g0_BO.sum(0)
        dvals_N = _entry_dots(g_QD, W_dec, idx_N, bag_off, bag_N)  # d loss / d value of each entry
        if relu:
            dvals_N.mul_(vals_N > 0)
    mse = level_mse_L[-1]

    dW_dec_FD, dW_enc_DF, db_enc_F = latent_weight_grads(sae, idx_N, rows_N, bag_N, vals_N, dvals_N, g_QD, sae_in_BD,
                                                         native_kernels)

    # AuxK: the top-A dead latents reconstruct the residual of the live ones
    aux = torch.zeros((), dtype=dtype, device=dev)
    if dead_mask_F is not None:
        auxk = _auxk(pre_BF, goal_BO - recon_BD, sae_in_BD, W_dec, dead_mask_F, k_aux or default_k_aux(D), aux_coef, topk)
        if auxk is not None:
            aux = auxk.loss
            dW_dec_FD.index_add_(0, auxk.dead_E, auxk.dW_dec_ED)
            dW_enc_DF.index_add_(1, auxk.dead_E, auxk.dW_enc_DE)
            db_enc_F.index_add_(0, auxk.dead_E, auxk.db_enc_E)

    if sae.cfg.apply_b_dec_to_input:  # sae_in = x - b_dec
        db_dec_D -= W_enc @ db_enc_F
    if skip_BO is not None:
        _set_grad(sae.W_skip, g0_BO.t() @ x_BD)
        recon_BD = recon_BD + skip_BO
    _set_grad(sae.W_enc, dW_enc_DF)
    _set_grad(sae.b_enc, db_enc_F)
    _set_grad(sae.W_dec, dW_dec_FD)
    _set_grad(sae.b_dec, db_dec_D)

    total = level_mse_L.sum() + aux
    acts = SparseActs(vals_N, idx_N, ent.offsets_B1, Fdim)
    level_mse = level_mse_L if widths is not None else None
    return GradResult(total, mse, aux, level_mse, acts, pre_BF, recon_BD, ent.above_threshold_F)


def latent_weight_grads(
    sae: SAE, idx_N: Tensor, rows_N: Tensor, bag_N: Tensor, vals_N: Tensor, dvals_N: Tensor, g_QO: Tensor,
    sae_in_BD: Tensor, native_kernels: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dW_dec [F, O], dW_enc [D, F], db_enc [F]) from the selected entries (latent, row, value,
    d loss / d pre-activation), entries grouped by latent: one `embedding_bag` per weight, never a
    dense [B, F] matrix. W_dec's rows sum value x g[bag] (`bag_N`: the entry's row, or its (row,
    level) bag for Matryoshka, with `g_QO` per bag); W_enc's columns dvalue x sae_in[row]. Written
    into W_enc's own .grad when it can hold it (no [D, F] allocation per step). Also the JumpReLU
    step's (`saes.jumprelu_step`)."""
    Fdim, W_enc = sae.d_sae, sae.W_enc.detach()
    perm_N = sort_order(idx_N, Fdim)
    lat_off = _offsets(torch.bincount(idx_N, minlength=Fdim))
    dW_enc_DF = sae.W_enc.grad
    if dW_enc_DF is None or dW_enc_DF.shape != W_enc.shape or dW_enc_DF.dtype != W_enc.dtype or not dW_enc_DF.is_contiguous():
        dW_enc_DF = torch.empty_like(W_enc)
    row_S = rows_N[perm_N]
    bag_S = row_S if bag_N is rows_N else bag_N[perm_N]
    dW_dec_FO = _bag_sum(bag_S, g_QO, lat_off, vals_N[perm_N])  # fbgemm's kernels beat a hand-written one
    dW_encT_FD = _bag_sum(row_S, sae_in_BD, lat_off, dvals_N[perm_N])
    if native_kernels:
        from saes import native

        native.transpose_into(dW_encT_FD, dW_enc_DF)
    else:
        dW_enc_DF.copy_(dW_encT_FD.t())
    db_enc_F = torch.zeros(Fdim, dtype=W_enc.dtype, device=W_enc.device).index_add_(0, idx_N, dvals_N)
    return dW_dec_FO, dW_enc_DF, db_enc_F


class _AuxK(NamedTuple):
    loss: Tensor  # already times its coefficient and scale
    dead_E: Tensor  # the dead latents
    dW_dec_ED: Tensor  # gradient rows of W_dec[dead]
    dW_enc_DE: Tensor  # gradient columns of W_enc[:, dead]
    db_enc_E: Tensor


def _auxk(
    pre_BF: Tensor,
    resid_BD: Tensor,
    sae_in_BD: Tensor,
    W_dec: Tensor,
    dead_mask_F: Tensor,
    k_aux: int,
    aux_coef: float,
    topk: TopkFn,
) -> _AuxK | None:
    """AuxK loss and its gradients, on the E dead columns only: dense [B, E] activations and
    four [B, E] x [E, D] matmuls (E is small next to F when it matters)."""
    B, D = resid_BD.shape
    dtype = resid_BD.dtype
    dead_E = dead_mask_F.to(device=pre_BF.device, dtype=torch.bool).nonzero().squeeze(1)
    E = dead_E.numel()
    if E == 0:
        return None
    A = min(k_aux, E)
    scale = min(E / k_aux, 1.0)
    pre_BE = pre_BF if E == pre_BF.shape[1] else pre_BF.index_select(1, dead_E)
    vals_BA, pos_BA = topk(pre_BE, A)
    vals_BA = vals_BA.to(dtype).relu_()
    acts_BE = torch.zeros(B, E, dtype=dtype, device=pre_BF.device).scatter_(1, pos_BA, vals_BA)
    Wd_ED = W_dec.index_select(0, dead_E)
    diff_BD = acts_BE @ Wd_ED
    diff_BD -= resid_BD
    loss = aux_coef * scale * (diff_BD * diff_BD).sum() / B
    diff_BD.mul_(2.0 * aux_coef * scale / B)  # d aux / d aux-reconstruction
    dacts_BA = (diff_BD @ Wd_ED.t()).gather(1, pos_BA).mul_(vals_BA > 0)
    dpre_BE = torch.zeros_like(acts_BE).scatter_(1, pos_BA, dacts_BA)
    return _AuxK(loss, dead_E, acts_BE.t() @ diff_BD, sae_in_BD.t() @ dpre_BE, dpre_BE.sum(0))


def fast_fp32_grads(sae: SAE, x_BD: Tensor, dead_mask_F: Tensor | None, aux_coef: float, k_aux: int | None,
                    **kw) -> GradResult:
    """STEP_METHODS["fast"]: exact, in the SAE's dtype."""
    return fast_grads(sae, x_BD, dead_mask_F, aux_coef, k_aux, **kw)


def fast_bf16_grads(sae: SAE, x_BD: Tensor, dead_mask_F: Tensor | None, aux_coef: float, k_aux: int | None,
                    **kw) -> GradResult:
    """STEP_METHODS["fast_bf16"]: bf16 encoder matmul, fp32 everything else."""
    return fast_grads(sae, x_BD, dead_mask_F, aux_coef, k_aux, encoder_dtype=torch.bfloat16, **kw)


def fast_native_grads(sae: SAE, x_BD: Tensor, dead_mask_F: Tensor | None, aux_coef: float, k_aux: int | None,
                      **kw) -> GradResult:
    """STEP_METHODS["fast_native"]: as "fast" (exact fp32) with the compiled CPU kernels."""
    return fast_grads(sae, x_BD, dead_mask_F, aux_coef, k_aux, kernels="native", **kw)


def fast_native_bf16_grads(
    sae: SAE, x_BD: Tensor, dead_mask_F: Tensor | None, aux_coef: float, k_aux: int | None, **kw
) -> GradResult:
    """STEP_METHODS["fast_native_bf16"]: as "fast_bf16" with the compiled CPU kernels."""
    return fast_grads(sae, x_BD, dead_mask_F, aux_coef, k_aux, encoder_dtype=torch.bfloat16, kernels="native", **kw)


STEP_METHODS.setdefault("fast", fast_fp32_grads)
STEP_METHODS.setdefault("fast_bf16", fast_bf16_grads)
STEP_METHODS.setdefault("fast_native", fast_native_grads)
STEP_METHODS.setdefault("fast_native_bf16", fast_native_bf16_grads)
