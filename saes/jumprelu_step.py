"""Hand-written forward and backward of the JumpReLU objective (training rule "jumprelu").

Shape key: B rows, D d_in, F d_sae, C candidate entries, N kept entries, E dead latents, O d_out
(a transcoder's target width; D for an SAE).

`saes.fast_step.fast_grads` sends a "jumprelu" SAE here. Same entries, losses and gradients as
the eager reference (`saes.jumprelu.JumpReLUSAE` through `saes.objective.training_loss` and
autograd) up to summation order; tests/test_saes_jumprelu.py compares them over several steps.

Where the work is: one dense pass over [B, F] finds the candidates (pre > t - bw, a superset of
the firing entries and of the kernel's band), the exact masks are computed on those only; then
as in the TopK step: decode with `embedding_bag`, the activation gradients as N dot products,
weight gradients by latent with two `embedding_bag`s; the pre-activation loss works on the E
dead columns only. The native kernels (top-k selections) do not apply: "fast_native" runs
this same code for a JumpReLU SAE. A JumpReLU transcoder decodes against its target less the
skip term, as `saes.fast_step` does for the others.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saes.jumprelu import fires, in_band
from saes.objective import decoder_goal
from saes.sparse import SparseActs
from saes.step import GradResult


def jumprelu_grads(sae, x_BD: Tensor, dead_mask_F: Tensor | None, step: int, encoder_dtype: torch.dtype | None,
                   ws, target_BO: Tensor | None = None) -> GradResult:
    """Gradients of the JumpReLU objective into `.grad` of W_enc, b_enc, W_dec, b_dec, threshold
    (and W_skip) (call inside `torch.no_grad()`; `ws`: a `saes.fast_step.StepWorkspace`;
    `target_BO`: a transcoder's target rows)."""
    from saes.fast_step import _bag_sum, _encode, _entry_dots, _offsets, latent_weight_grads  # it imports this module

    cfg = sae.cfg
    x_BD, goal_BO, skip_BO = decoder_goal(sae, x_BD, target_BO)
    B, D = x_BD.shape
    Fdim, dtype, dev = sae.d_sae, sae.dtype, x_BD.device
    W_enc, W_dec, b_dec = sae.W_enc.detach(), sae.W_dec.detach().contiguous(), sae.b_dec.detach()
    t_F, bw = sae.threshold.detach(), cfg.jumprelu_bandwidth
    sae_in_BD = x_BD - b_dec if cfg.apply_b_dec_to_input else x_BD
    pre_BF = _encode(ws, sae_in_BD, sae, encoder_dtype or dtype)

    # entries: candidates from one pass over [B, F], exact masks on the candidates
    near_BF = ws.buffer("near_BF", (B, Fdim), torch.bool, dev)
    torch.gt(pre_BF, t_F - bw, out=near_BF)
    rows_C, idx_C = near_BF.nonzero(as_tuple=True)
    pre_C, t_C = pre_BF[rows_C, idx_C].to(dtype), t_F[idx_C]
    fire_C, band_C = fires(pre_C, t_C), in_band(pre_C, t_C, bw)
    keep_N = (fire_C | band_C).nonzero().squeeze(1)  # the mask turned into indices once, for all six gathers
    rows_N, idx_N, pre_N, t_N = rows_C[keep_N], idx_C[keep_N], pre_C[keep_N], t_C[keep_N]
    fire_N, band_N = fire_C[keep_N], band_C[keep_N]
    vals_N = pre_N * fire_N
    offsets_B1 = _offsets(torch.bincount(rows_N, minlength=B))

    # reconstruction (a transcoder: its prediction) and its gradient g = d mse / d recon
    recon_BO = _bag_sum(idx_N, W_dec, offsets_B1, vals_N) + b_dec
    g_BO = recon_BO - goal_BO
    mse = (g_BO * g_BO).sum() / B
    g_BO.mul_(2.0 / B)
    dacts_N = _entry_dots(g_BO, W_dec, idx_N, offsets_B1, rows_N)  # d loss / d act of each entry

    # the sparsity penalty (its coefficient warmed up by step)
    coef = cfg.sparsity_coefficient(step)
    # decoder row norms, constants of the objective (saes/jumprelu.py): only tanh and the pre-act loss use them
    uses_norms = cfg.jumprelu_sparsity_loss_mode != "step" or cfg.pre_act_loss_coefficient > 0
    norms_F = W_dec.norm(dim=1) if uses_norms else None
    dt_F = torch.zeros(Fdim, dtype=dtype, device=dev)
    dpre_N = torch.zeros_like(vals_N)
    to_input = cfg.jumprelu_ste_to_input  # the straight-through estimates reach pre too (Anthropic)
    if cfg.jumprelu_sparsity_loss_mode == "step":
        penalty = coef * fire_N.sum().to(dtype) / B
        ste_N = band_N.to(dtype) * (coef / (bw * B))
        dt_F.index_add_(0, idx_N, -ste_N)
        if to_input:
            dpre_N += ste_N
    else:  # "tanh": coef * sum tanh(s * act * norm) / B
        s, n_N = cfg.jumprelu_tanh_scale, norms_F[idx_N]
        tanh_N = torch.tanh(s * vals_N * n_N)
        penalty = coef * tanh_N.sum() / B
        dtanh_N = (coef / B) * (1 - tanh_N * tanh_N)  # d penalty / d (s * act * norm)
        dacts_N += dtanh_N * s * n_N

    # the gate: to pre where the entry fires, straight through the kernel to t
    ste_N = (t_N / bw) * band_N * dacts_N
    dpre_N += dacts_N * fire_N
    dt_F.index_add_(0, idx_N, -ste_N)
    if to_input:
        dpre_N += ste_N

    # weight gradients, entries grouped by latent (as the TopK step's; one bag per row: no levels)
    dW_dec_FO, dW_enc_DF, db_enc_F = latent_weight_grads(sae, idx_N, rows_N, rows_N, vals_N, dpre_N, g_BO, sae_in_BD)

    # Anthropic's pre-activation loss on the dead columns: c * sum relu(t - pre) * norm / B
    pre_act = torch.zeros((), dtype=dtype, device=dev)
    c = cfg.pre_act_loss_coefficient
    dead_E = None if c <= 0 or dead_mask_F is None else dead_mask_F.to(dev, torch.bool).nonzero().squeeze(1)
    if dead_E is not None and dead_E.numel():
        gap_BE = t_F[dead_E] - pre_BF.index_select(1, dead_E).to(dtype)
        below_BE = (gap_BE > 0).to(dtype)
        n_E = norms_F[dead_E]
        gap_BE.relu_()
        pre_act = (c / B) * (gap_BE * n_E).sum()
        dpre_BE = below_BE * (-(c / B) * n_E)
        dt_F.index_add_(0, dead_E, below_BE.sum(0) * (c / B) * n_E)
        dW_enc_DF.index_add_(1, dead_E, sae_in_BD.t() @ dpre_BE)
        db_enc_F.index_add_(0, dead_E, dpre_BE.sum(0))

    db_dec_O = g_BO.sum(0)
    if cfg.apply_b_dec_to_input:  # sae_in = x - b_dec
        db_dec_O -= W_enc @ db_enc_F
    sae.W_enc.grad, sae.b_enc.grad, sae.W_dec.grad, sae.b_dec.grad = dW_enc_DF, db_enc_F, dW_dec_FO, db_dec_O
    sae.threshold.grad = dt_F
    if skip_BO is not None:
        sae.W_skip.grad = g_BO.t() @ x_BD
        recon_BO = recon_BO + skip_BO

    aux = penalty + pre_act
    acts = SparseActs(vals_N, idx_N, offsets_B1, Fdim)
    return GradResult(mse + aux, mse, aux, None, acts, pre_BF, recon_BO, None)

