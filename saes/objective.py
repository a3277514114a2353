"""The training objective of each architecture, written plainly with autograd.

This is the eager reference: any fast training step must give the same loss and gradients
(see tests/test_saes_fast_step.py). Shape key: B rows, D d_in, F d_sae, L levels.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from saes.base import SAE
from saes.losses import auxk_loss, matryoshka_level_losses, mse_loss
from saes.matryoshka import MatryoshkaSAE
from saes.sparse import DecodeMethod, SparseActs

DEFAULT_AUX_COEF = 1 / 32  # OpenAI TopK paper


class LossOutput(NamedTuple):
    total: Tensor  # what the optimizer minimises
    mse: Tensor  # full reconstruction
    aux: Tensor  # AuxK term, already multiplied by its coefficient
    level_mse: Tensor | None  # Matryoshka: [L] per prefix (last = full); else None
    recon_BD: Tensor
    acts: SparseActs
    pre_BF: Tensor


def default_k_aux(d_in: int) -> int:
    return max(1, d_in // 2)


def training_selection(sae: SAE, pre_BF: Tensor) -> SparseActs:
    """TopK selects per row; BatchTopK and Matryoshka select over the batch while training."""
    select = getattr(sae, "training_select", None)
    return select(pre_BF) if select is not None else sae.select(pre_BF)


def training_loss(
    sae: SAE,
    x_BD: Tensor,
    dead_mask_F: Tensor | None = None,
    aux_coef: float = DEFAULT_AUX_COEF,
    k_aux: int | None = None,
    decode_method: DecodeMethod = "embedding_bag",
) -> LossOutput:
    x_BD = sae._rows(x_BD)
    pre_BF = sae.pre_activations(x_BD)
    acts = training_selection(sae, pre_BF)
    level_mse = None
    if isinstance(sae, MatryoshkaSAE):
        recons = sae.prefix_reconstructions(acts, decode_method)
        recon_BD = recons[-1]
        level_mse = matryoshka_level_losses(recons, x_BD)
        mse, recon_total = level_mse[-1], level_mse.sum()
    else:
        recon_BD = sae.decode(acts, method=decode_method)
        mse = recon_total = mse_loss(recon_BD, x_BD)
    aux = aux_coef * auxk_loss(
        pre_BF, (x_BD - recon_BD).detach(), sae.W_dec, dead_mask_F, k_aux or default_k_aux(sae.d_in), decode_method
    )
    return LossOutput(recon_total + aux, mse, aux, level_mse, recon_BD, acts, pre_BF)
