"""JumpReLU SAE: latent f fires where pre_f > t_f, with a learned per-latent threshold t.

Shape key: B rows, D d_in, F d_sae, N entries.

Trained as SAELens 6 trains it (JumpReLUTrainingSAE; DeepMind's JumpReLU / Gemma Scope recipe,
and Anthropic's 2025 variant of the penalty):

- act = pre * H(pre - t). H's derivative is zero almost everywhere, so t gets a straight-through
  estimate through a rectangle kernel K(u) = 1[-1/2 < u < 1/2] of width `jumprelu_bandwidth` bw:
  d act / d t = -(t / bw) K((pre - t) / bw); d act / d pre = H (the estimate reaches t only;
  with `jumprelu_ste_to_input`, Anthropic's choice, pre gets + (t / bw) K too, and the L0's
  estimate below reaches pre as + (1/bw) K).
- the sparsity penalty, its coefficient rising linearly over `l0_warm_up_steps`
  (`JumpReLUConfig.sparsity_coefficient`), averaged over rows:
  "step": coef * L0, L0 = sum_f H(pre_f - t_f), d/dt = -(1/bw) K((pre - t) / bw);
  "tanh": coef * sum_f tanh(s * act_f * ||W_dec_f||) (Anthropic), through the act's estimate.
- Anthropic's pre-activation loss (`pre_act_loss_coefficient`, 0 = off): for dead latents,
  c * sum_f relu(t_f - pre_f) * ||W_dec_f||, pulling their pre-activations up to the threshold.
  It replaces AuxK, which JumpReLU does not use.
- the decoder norms in both terms are constants of the objective: the trainer keeps decoder
  rows at unit norm and removes the part of each row's gradient along the row, which is all a
  norm's gradient would be (SAELens, not constraining the decoder, differentiates them); computed,
  it would leave only rounding noise, which Adam turns into lr-sized steps of dead latents' rows.
- t is the parameter itself, not log t (SAELens 6 changed this: Adam moves a parameter by about
  lr per step, so log t barely moves a small initial threshold); a projection after each
  optimiser step keeps t >= 0 (`update_inference_form_`). The trainer steps t at a learning rate
  of its own (`TrainConfig.jumprelu_threshold_lr`, a param group of its own); Adam on log t at
  that rate measured the same on SAELens's synthetic worlds and slower for a wide SAE, whose
  thresholds start small (benchmarks/RESULTS.md, "JumpReLU threshold step size").

The training selection is the firing entries plus, with value 0, the entries within bw/2 of
their threshold that did not fire: through those the reconstruction and tanh terms reach t.
A trained JumpReLU is its own inference form (saved as SAELens's "jumprelu").
The hand-written step: `saes/jumprelu_step.py`; this file is its eager reference.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from saes.base import Reducer
from saes.config import JumpReLUConfig
from saes.sparse import SparseActs
from saes.threshold import ThresholdSAE
from saes.topk_select import BatchGroup


def in_band(pre: Tensor, t: Tensor, bandwidth: float) -> Tensor:
    """K((pre - t) / bw) as a mask: pre within bw/2 of t (the one expression both steps use)."""
    u = (pre - t) / bandwidth
    return (u > -0.5) & (u < 0.5)


def fires(pre: Tensor, t: Tensor) -> Tensor:
    """H(pre - t) as a mask, as `threshold_select` decides it (pre > t and pre > 0)."""
    return (pre > t) & (pre > 0)


class _GatedValues(torch.autograd.Function):
    """act = pre * H(pre - t) per entry; straight-through gradient to t through the kernel."""

    @staticmethod
    def forward(ctx: Any, pre_N: Tensor, t_N: Tensor, bandwidth: float, to_input: bool) -> Tensor:
        fire_N = fires(pre_N, t_N)
        ctx.save_for_backward(pre_N, t_N, fire_N)
        ctx.bandwidth, ctx.to_input = bandwidth, to_input
        return pre_N * fire_N

    @staticmethod
    def backward(ctx: Any, g_N: Tensor) -> tuple[Tensor, Tensor, None, None]:
        pre_N, t_N, fire_N = ctx.saved_tensors
        bw = ctx.bandwidth
        ste_N = (t_N / bw) * in_band(pre_N, t_N, bw) * g_N
        dpre_N = g_N * fire_N + ste_N if ctx.to_input else g_N * fire_N
        return dpre_N, -ste_N, None, None


class _StepCount(torch.autograd.Function):
    """H(pre - t) over [B, F]; straight-through gradient to t only (the L0 penalty)."""

    @staticmethod
    def forward(ctx: Any, pre_BF: Tensor, t_F: Tensor, bandwidth: float, to_input: bool) -> Tensor:
        ctx.save_for_backward(pre_BF, t_F)
        ctx.bandwidth, ctx.to_input = bandwidth, to_input
        return fires(pre_BF, t_F).to(pre_BF.dtype)

    @staticmethod
    def backward(ctx: Any, g_BF: Tensor) -> tuple[Tensor | None, Tensor, None, None]:
        pre_BF, t_F = ctx.saved_tensors
        bw = ctx.bandwidth
        ste_BF = (1.0 / bw) * in_band(pre_BF, t_F, bw) * g_BF
        return (ste_BF if ctx.to_input else None), -ste_BF.sum(0), None, None


class JumpReLUSAE(ThresholdSAE):
    architecture = "jumprelu"
    config_class = JumpReLUConfig
    cfg: JumpReLUConfig
    trainable = True
    training_rule = "jumprelu"
    own_lr_parameters = ("threshold",)  # stepped at TrainConfig.jumprelu_threshold_lr (see the module docstring)
    train_settings = frozenset()  # no AuxK (aux_coef, k_aux); its thresholds are not stepped at threshold_lr

    def _make_threshold(self, initial_F: Tensor) -> None:
        self.threshold = nn.Parameter(initial_F.fill_(self.cfg.jumprelu_init_threshold))

    @torch.no_grad()
    def fit_initial_thresholds_(self, sample_BD: Tensor, chunk_latents: int = 1024) -> None:
        """With `jumprelu_init_firing_rate` r > 0: each latent's threshold is the value its
        pre-activation exceeds on a fraction r of the sample (at least 0). One number for all would
        leave the latents whose pre-activations are small (an anisotropic residual stream) below
        it: never firing, they get no gradient and stay dead from the first step."""
        rate = self.cfg.jumprelu_init_firing_rate
        if rate <= 0:
            return
        B = sample_BD.shape[0]
        kth = min(B, max(1, math.ceil((1.0 - rate) * B)))  # the kth smallest: about r * B rows lie above it
        sae_in_BD = sample_BD - self.b_dec if self.cfg.apply_b_dec_to_input else sample_BD
        for lo in range(0, self.d_sae, chunk_latents):  # chunks: [B, F] of a wide SAE is large
            cols = slice(lo, lo + chunk_latents)
            pre_BC = sae_in_BD @ self.W_enc[:, cols] + self.b_enc[cols]
            self.threshold[cols] = pre_BC.kthvalue(kth, dim=0).values.clamp_min(0.0)

    def training_select(self, pre_BF: Tensor, group: BatchGroup | None = None) -> SparseActs:
        """The firing entries and the non-firing ones in the kernel's band (value 0), row-major;
        values carry the straight-through threshold gradient. Rows never look at each other."""
        t_F, bw = self.threshold, self.cfg.jumprelu_bandwidth
        with torch.no_grad():
            keep_BF = fires(pre_BF, t_F) | in_band(pre_BF, t_F, bw)
        rows_N, cols_N = keep_BF.nonzero(as_tuple=True)
        vals_N = _GatedValues.apply(pre_BF[rows_N, cols_N], t_F[cols_N], bw, self.cfg.jumprelu_ste_to_input)
        return SparseActs.from_coo(vals_N, rows_N, cols_N, pre_BF.shape[0], pre_BF.shape[1])

    def auxiliary_loss(self, pre_BF: Tensor, residual_BD: Tensor, dead_mask_F: Tensor | None, k_aux: int,
                       method: str = "embedding_bag") -> Tensor:
        """No AuxK: dead latents get the pre-activation loss of `sparsity_penalty` instead."""
        return pre_BF.new_zeros(())

    def sparsity_penalty(self, pre_BF: Tensor, acts: SparseActs, dead_mask_F: Tensor | None, step: int) -> Tensor:
        """The warmed-up sparsity penalty plus the pre-activation loss of dead latents."""
        cfg, t_F = self.cfg, self.threshold
        B = pre_BF.shape[0]
        coef = cfg.sparsity_coefficient(step)
        norms_F = self.W_dec.norm(dim=1).detach()  # constants: see the module docstring
        if cfg.jumprelu_sparsity_loss_mode == "step":
            penalty = coef * _StepCount.apply(pre_BF, t_F, cfg.jumprelu_bandwidth, cfg.jumprelu_ste_to_input).sum() / B
        else:  # "tanh"
            scaled_N = cfg.jumprelu_tanh_scale * acts.values_N * norms_F[acts.indices_N]
            penalty = coef * torch.tanh(scaled_N).sum() / B
        if cfg.pre_act_loss_coefficient > 0 and dead_mask_F is not None and bool(dead_mask_F.any()):
            dead_F = dead_mask_F.to(pre_BF.dtype)
            gap_BF = (t_F - pre_BF).relu() * dead_F * norms_F
            penalty = penalty + cfg.pre_act_loss_coefficient * gap_BF.sum() / B
        return penalty

    @torch.no_grad()
    def update_inference_form_(
        self, pre_BF: Tensor, acts: SparseActs, *, lr: float = 0.0, above_threshold_F: Tensor | None = None,
        reduce: Reducer | None = None,
    ) -> None:
        """Keep thresholds >= 0 after each optimiser step (below 0 the gate would pass negative
        pre-activations; a projection, not a clamp in the graph, so t = 0 still gets gradients)."""
        self.threshold.clamp_(min=0.0)
