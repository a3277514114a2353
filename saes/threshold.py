"""Threshold encoders: latent f fires when pre_f > threshold_f (and pre_f > 0).

`ThresholdSAE` is the inference form of BatchTopK and Matryoshka SAEs and the common part of
JumpReLU SAEs (`saes/jumprelu.py`), saved as SAELens's "jumprelu". Its `threshold` is a buffer,
not trained by gradients (BatchTopK learns it by frequency matching in the trainer); JumpReLU
makes it a parameter trained through a straight-through estimator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saes.base import SAE
from saes.sparse import SparseActs


class ThresholdSAE(SAE):
    """Not registered itself: the architectures built on it are (jumprelu, batchtopk, ...)."""

    encoding_rule = "threshold"  # a latent fires when its own pre-activation exceeds max(threshold, 0)
    saelens_architecture = "jumprelu"
    threshold: Tensor

    def __init__(self, cfg, **kwargs) -> None:
        super().__init__(cfg, **kwargs)
        self._make_threshold(torch.zeros(cfg.d_sae, device=self.device, dtype=self.dtype))

    def _make_threshold(self, initial_F: Tensor) -> None:
        """Register `threshold` (a buffer here; JumpReLU makes it a parameter)."""
        self.register_buffer("threshold", initial_F)

    def select(self, pre_BF: Tensor) -> SparseActs:
        return threshold_select(pre_BF, self.threshold)

    def _scale_thresholds_(self, factor_F: Tensor) -> None:
        self.threshold.mul_(factor_F)

    @torch.no_grad()
    def load_saelens_tensors_(self, weights: dict[str, Tensor], source: str) -> None:
        if "threshold" in weights:
            thr = weights["threshold"]
            if tuple(thr.shape) != (self.d_sae,):
                raise ValueError(f"threshold has shape {tuple(thr.shape)}, expected ({self.d_sae},)")
            self.threshold.copy_(thr)
        elif "log_threshold" in weights:  # older SAELens JumpReLU training checkpoints
            log_thr = weights["log_threshold"]
            if tuple(log_thr.shape) != (self.d_sae,):
                raise ValueError(f"log_threshold has shape {tuple(log_thr.shape)}, expected ({self.d_sae},)")
            self.threshold.copy_(log_thr.exp())
        elif "topk_threshold" in weights:  # SAELens BatchTopK training checkpoint: one global value
            self.threshold.fill_(float(weights["topk_threshold"]))
        else:
            raise ValueError(f"a {self.architecture} SAE needs a threshold tensor in its weights")


def threshold_select(pre_BF: Tensor, threshold_F: Tensor) -> SparseActs:
    """Entries with pre > threshold and pre > 0 (the JumpReLU of SAELens: relu(pre) * (pre > t))."""
    mask_BF = (pre_BF > threshold_F) & (pre_BF > 0)
    rows_N, cols_N = mask_BF.nonzero(as_tuple=True)
    return SparseActs.from_coo(pre_BF[rows_N, cols_N], rows_N, cols_N, pre_BF.shape[0], pre_BF.shape[1])


def count_above(pre_BF: Tensor, threshold_F: Tensor, chunk_rows: int = 128) -> Tensor:
    """How many rows have `pre > threshold` in each column, [F] int64 (mixed dtypes compare
    exactly, by promotion).

    Compares a chunk of rows at a time into a small float buffer and sums it: ~6x faster on CPU
    than `(pre > t).sum(0)`, whose boolean column reduction is slow."""
    B, Fdim = pre_BF.shape
    acc_F = torch.zeros(Fdim, dtype=torch.float64, device=pre_BF.device)
    buf = torch.empty(min(chunk_rows, max(B, 1)), Fdim, dtype=torch.float32, device=pre_BF.device)
    for chunk in pre_BF.split(chunk_rows):
        hits = buf[: chunk.shape[0]]
        torch.gt(chunk, threshold_F, out=hits)
        acc_F += hits.sum(0)  # exact: at most chunk_rows per column
    return acc_F.to(torch.int64)
