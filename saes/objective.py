"""The training objective, written plainly with autograd, from the pieces each architecture
gives (`saes/base.py`): `training_select`, `level_reconstructions`, `auxiliary_loss`.

    total = sum over levels of MSE(level reconstruction) + aux_coef * auxiliary term
            + sparsity penalty (JumpReLU; its coefficient inside, warmed up by optimiser step)

(one level unless the SAE has `levels`). A transcoder (`sae.is_transcoder`) is scored against
its target rows `target_BO` (another hook's activations) instead of its input, each level's
prediction including the skip term when it has one. This is the eager reference: any fast training step
must give the same loss and gradients (see tests/test_saes_fast_step.py).
Shape key: B rows, D d_in, F d_sae, L levels, O d_out (= D for an SAE).
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
    target_BO: Tensor | None = None,
    step: int = 0,
) -> LossOutput:
    """`group`: the ranks of a data-parallel global batch (for selections over the batch).
    `target_BO`: what a transcoder predicts (required for one, refused for an SAE).
    `step`: the optimiser step (0-based), for penalties warmed up over steps."""
    x_BD = sae._rows(x_BD)
    y_BO = training_target(sae, x_BD, target_BO)
    pre_BF = sae.pre_activations(x_BD)
    acts = sae.training_select(pre_BF, group)
    recons = sae.level_reconstructions(acts, decode_method)
    skip_BO = sae.skip_term(x_BD)
    if skip_BO is not None:
        recons = [r + skip_BO for r in recons]
    recon_BO = recons[-1]
    level_mse = None
    if sae.levels is not None:
        level_mse = matryoshka_level_losses(recons, y_BO)
        mse, recon_total = level_mse[-1], level_mse.sum()
    else:
        mse = recon_total = mse_loss(recon_BO, y_BO)
    aux = aux_coef * sae.auxiliary_loss(
        pre_BF, (y_BO - recon_BO).detach(), dead_mask_F, k_aux or default_k_aux(sae.d_in), decode_method
    )
    penalty = sae.sparsity_penalty(pre_BF, acts, dead_mask_F, step)
    if penalty is not None:
        aux = aux + penalty
    return LossOutput(recon_total + aux, mse, aux, level_mse, recon_BO, acts, pre_BF)


def training_target(sae: SAE, x_BD: Tensor, target_BO: Tensor | None) -> Tensor:
    """What the objective scores against, [B, O]: a transcoder's target rows, an SAE's input."""
    if not sae.is_transcoder:
        if target_BO is not None:
            raise ValueError("a target was given to an SAE that reconstructs its input; a transcoder has d_out set")
        return x_BD
    if target_BO is None:
        raise ValueError("a transcoder trains on (input, target) pairs: pass the target hook's rows")
    y_BO = sae._target_rows(target_BO)
    if y_BO.shape[0] != x_BD.shape[0]:
        raise ValueError(f"{x_BD.shape[0]} input rows but {y_BO.shape[0]} target rows: the pairs are misaligned")
    return y_BO


class DecoderGoal(NamedTuple):
    x_BD: Tensor  # the input as [B, D] rows in the SAE's dtype
    goal_BO: Tensor  # what the decoder output alone must match
    skip_BO: Tensor | None  # a skip transcoder's linear term (None without one)


def decoder_goal(sae: SAE, x_BD: Tensor, target_BO: Tensor | None) -> DecoderGoal:
    """For the hand-written steps: the training target less a skip transcoder's linear term."""
    x_BD = sae._rows(x_BD).contiguous()
    goal_BO = training_target(sae, x_BD, target_BO)
    skip_BO = sae.skip_term(x_BD)
    return DecoderGoal(x_BD, goal_BO if skip_BO is None else goal_BO - skip_BO, skip_BO)
