"""BatchTopK SAE: while training, the k*B largest pre-activations of a B-row batch fire.

Shape key: B rows, F d_sae, M candidates kept per row, N nonzeros.

For inference the batch selection is replaced by a per-latent threshold (JumpReLU form), so a
token's latents never depend on the rest of its batch. The threshold is learned during
training by frequency matching: each step, latent f's threshold moves so that the number of
rows where `pre_f > threshold_f` approaches the number of rows where the batch selection
picked f. At the fixed point every latent fires at inference as often as it did in training
(a single global threshold only matches the total L0, not each latent's rate).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from saes.base import Reducer
from saes.config import BatchTopKConfig
from saes.sparse import SparseActs
from saes.threshold import ThresholdSAE, count_above
from saes.topk import k_from_saelens
from saes.topk_select import BatchGroup, batch_top_entries


class BatchTopKSAE(ThresholdSAE):
    architecture = "batchtopk"
    config_class = BatchTopKConfig
    cfg: BatchTopKConfig
    trainable = True
    training_rule = "batch_topk"
    train_settings = frozenset({"aux_coef", "k_aux", "threshold_lr"})  # AuxK; thresholds stepped at threshold_lr

    def training_select(self, pre_BF: Tensor, group: BatchGroup | None = None) -> SparseActs:
        """The training-time selection: top k*B entries of the whole batch (of the global batch
        of `group`'s ranks in data-parallel training)."""
        return batch_topk_select(pre_BF, self.cfg.k, group)

    @torch.no_grad()
    def update_inference_form_(
        self, pre_BF: Tensor, acts: SparseActs, *, lr: float = 0.01, above_threshold_F: Tensor | None = None,
        reduce: Reducer | None = None,
    ) -> None:
        """One frequency-matching step of the inference thresholds (called by the trainer).

        `pre_BF` may be in a lower precision than the SAE (a bf16 encoder); the statistics are
        computed in the threshold's dtype. `above_threshold_F` (e.g. `GradResult.above_threshold_F`)
        are the per-latent counts of rows with pre > threshold, if already known; they are used
        only when every threshold is set (> 0), else recounted here. `reduce` (data parallel):
        the firing counts are summed over ranks and the batch cutoff is their minimum, so every
        rank takes the step one process would take on the global batch."""
        thr_F = self.threshold
        local_cut = acts.values_N.min().to(thr_F.dtype) if acts.values_N.numel() else None
        if reduce is None:
            cutoff = local_cut if local_cut is not None else thr_F.new_tensor(0.0)
        else:
            cut_1 = (local_cut if local_cut is not None else thr_F.new_tensor(math.inf)).reshape(1).clone()
            cutoff = reduce.min_(cut_1)[0]
            cutoff = torch.where(torch.isfinite(cutoff), cutoff, torch.zeros_like(cutoff))
        unset_F = thr_F <= 0
        if unset_F.any():  # first step: start every latent at the batch cutoff
            thr_F[unset_F] = cutoff.clamp_min(1e-6)
            above_threshold_F = None
        if above_threshold_F is None:
            above_threshold_F = count_above(pre_BF, thr_F)  # thresholds are > 0 from here on
        selected_F = torch.bincount(acts.indices_N, minlength=self.d_sae)
        if reduce is not None:
            counts_2F = reduce.sum_(torch.stack([selected_F, above_threshold_F.to(selected_F.dtype)]))
            selected_F, above_threshold_F = counts_2F[0], counts_2F[1]
        selected_F, fired_F = selected_F.to(thr_F.dtype), above_threshold_F.to(thr_F.dtype)
        step_F = lr * cutoff * (fired_F - selected_F) / (fired_F + selected_F + 1)
        thr_F.add_(step_F).clamp_(min=1e-6)

    def training_details(self) -> dict[str, Any]:
        return {"k": self.cfg.k, "threshold_method": "frequency_matching"}

    @classmethod
    def config_fields_from_saelens(cls, cfg: dict[str, Any], details: dict[str, Any], source: str) -> dict[str, Any]:
        return {"k": k_from_saelens(cfg, details, cls.architecture)}


def batch_topk_select(pre_BF: Tensor, k: int, group: BatchGroup | None = None) -> SparseActs:
    """Exact BatchTopK: the k*B largest positive entries of `pre_BF`, in row-major CSR order
    (latents ascending within a row).

    Two stages instead of one topk over B*F entries (~15x faster here): each row's top 2k
    candidates (themselves found through group maxima, `saes.topk_select`), then one k-th value
    over the B*2k candidates; rows whose candidates all made the cut join with their whole row
    in one final round. See `saes.topk_select.batch_top_entries`.
    """
    B, Fdim = pre_BF.shape
    vals_N, rows_N, cols_N = batch_top_entries(pre_BF, k, group)
    return SparseActs.from_coo(vals_N, rows_N, cols_N, B, Fdim)


def batch_topk_select_reference(pre_BF: Tensor, k: int) -> SparseActs:
    """Eager reference: one topk over all B*F entries (SAELens's formulation)."""
    B, Fdim = pre_BF.shape
    flat = pre_BF.relu().reshape(-1)
    vals, pos = flat.topk(min(k * B, flat.numel()), sorted=False)
    dense = torch.zeros_like(flat).scatter_(0, pos, vals).reshape(B, Fdim)
    return SparseActs.from_dense(dense)
