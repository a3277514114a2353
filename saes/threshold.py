"""Threshold (JumpReLU-style) encoder: latent f fires when pre_f > threshold_f.

This is the inference form of BatchTopK and Matryoshka SAEs, and SAELens's "jumprelu"
architecture. `threshold` is a buffer: it is not trained by gradients here (BatchTopK learns
it by frequency matching in the trainer; pretrained JumpReLU SAEs bring their own).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saes.base import SAE
from saes.config import JumpReLUConfig
from saes.sparse import SparseActs


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    config_class = JumpReLUConfig
    threshold: Tensor

    def __init__(self, cfg, **kwargs) -> None:
        super().__init__(cfg, **kwargs)
        self.register_buffer("threshold", torch.zeros(cfg.d_sae, device=self.device, dtype=self.dtype))

    def select(self, pre_BF: Tensor) -> SparseActs:
        return threshold_select(pre_BF, self.threshold)

    def _scale_thresholds_(self, factor_F: Tensor) -> None:
        self.threshold.mul_(factor_F)


def threshold_select(pre_BF: Tensor, threshold_F: Tensor) -> SparseActs:
    """Entries with pre > threshold and pre > 0 (the JumpReLU of SAELens: relu(pre) * (pre > t))."""
    mask_BF = (pre_BF > threshold_F) & (pre_BF > 0)
    rows_N, cols_N = mask_BF.nonzero(as_tuple=True)
    return SparseActs.from_coo(pre_BF[rows_N, cols_N], rows_N, cols_N, pre_BF.shape[0], pre_BF.shape[1])


def count_above(pre_BF: Tensor, threshold_F: Tensor, chunk_rows: int = 256) -> Tensor:
    """How many rows have `pre > threshold` in each column, [F] int64 (mixed dtypes compare
    exactly, by promotion).

    Row chunks keep the boolean mask in cache (a single `(pre > t).sum(0)` over a large batch
    is several times slower on CPU)."""
    B, Fdim = pre_BF.shape
    out_F = torch.zeros(Fdim, dtype=torch.int64, device=pre_BF.device)
    for chunk in pre_BF.split(chunk_rows):
        out_F += (chunk > threshold_F).sum(0)
    return out_F
