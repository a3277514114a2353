"""The training objective, written plainly with autograd, from the pieces each architecture
gives (`saes/base.py`): `training_select`, `level_reconstructions`, `auxiliary_loss`.

    total = sum over levels of MSE(level reconstruction) + aux_coef * auxiliary term
            + sparsity penalty (JumpReLU; its coefficient inside, warmed up by optimiser step)

(one level unless the SAE has `levels`). This is the eager reference: any fast training step
must give the same loss and gradients (see tests/test_saes_fast_step.py).
Shape key: B rows, D d_in, F d_sae, L levels.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from saes.base import SAE
from saes.losses import matryoshka_level_losses, mse_loss
from saes.sparse import DecodeMethod, SparseActs
from saes.topk_select import BatchGroup

DEFAULT_AUX_COEF = 1 / 32  # OpenAI TopK paper


class LossOutput(NamedTuple):
    total: Tensor  # what the optimizer minimises
    mse: Tensor  # full reconstruction
    aux: Tensor  # AuxK term times its coefficient, plus the sparsity penalty where the SAE has one
    level_mse: Tensor | None  # SAEs with `levels`: [L] per level (last = full); else None
    recon_BD: Tensor
    acts: SparseActs
    pre_BF: Tensor


def default_k_aux(d_in: int) -> int:
    return max(1, d_in // 2)


def training_loss(
    sae: SAE,
    x_BD: Tensor,
    dead_mask_F: Tensor | None = None,
    aux_coef: float = DEFAULT_AUX_COEF,
    k_aux: int | None = None,
    decode_method: DecodeMethod = "embedding_bag",
    group: BatchGroup | None = None,
    step: int = 0,
) -> LossOutput:
    """`group`: the ranks of a data-parallel global batch (for selections over the batch);
    `step`: the optimiser step (0-based), for penalties warmed up over steps."""
    x_BD = sae._rows(x_BD)
    pre_BF = sae.pre_activations(x_BD)
    acts = sae.training_select(pre_BF, group)
    recons = sae.level_reconstructions(acts, decode_method)
    recon_BD = recons[-1]
    level_mse = None
    if sae.levels is not None:
        level_mse = matryoshka_level_losses(recons, x_BD)
        mse, recon_total = level_mse[-1], level_mse.sum()
    else:
        mse = recon_total = mse_loss(recon_BD, x_BD)
    aux = aux_coef * sae.auxiliary_loss(
        pre_BF, (x_BD - recon_BD).detach(), dead_mask_F, k_aux or default_k_aux(sae.d_in), decode_method
    )
    penalty = sae.sparsity_penalty(pre_BF, acts, dead_mask_F, step)
    if penalty is not None:
        aux = aux + penalty
    return LossOutput(recon_total + aux, mse, aux, level_mse, recon_BD, acts, pre_BF)
