"""Pure loss and metric functions (no module state).

Shape key: B rows, D d_in, F d_sae.

Reconstruction losses follow SAELens (squared error summed over D, averaged over rows), so
loss values are comparable between the two tools on the same batch and weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saes.sparse import SparseActs, sparse_decode


def mse_loss(recon_BD: Tensor, x_BD: Tensor) -> Tensor:
    """Squared error summed over features, mean over rows."""
    return (recon_BD - x_BD).pow(2).sum(-1).mean()


def fvu(recon_BD: Tensor, x_BD: Tensor) -> Tensor:
    """Fraction of variance unexplained: residual energy over the energy around the batch mean."""
    resid = (x_BD - recon_BD).pow(2).sum()
    total = (x_BD - x_BD.mean(0, keepdim=True)).pow(2).sum()
    return resid / total.clamp_min(torch.finfo(total.dtype).tiny)


def explained_variance(recon_BD: Tensor, x_BD: Tensor) -> Tensor:
    return 1.0 - fvu(recon_BD, x_BD)


def auxk_acts(pre_BF: Tensor, dead_mask_F: Tensor, k_aux: int) -> SparseActs:
    """The k_aux largest positive pre-activations among dead latents, per row."""
    masked_BF = torch.where(dead_mask_F[None, :], pre_BF, torch.full_like(pre_BF, -torch.inf))
    vals_BK, idx_BK = masked_BF.topk(k_aux, dim=-1, sorted=False)
    return SparseActs.from_topk(vals_BK.relu(), idx_BK, pre_BF.shape[1])


def auxk_loss(
    pre_BF: Tensor,
    residual_BD: Tensor,
    W_dec_FD: Tensor,
    dead_mask_F: Tensor | None,
    k_aux: int,
    method: str = "embedding_bag",
) -> Tensor:
    """AuxK loss (OpenAI TopK paper, appendix A.2): the top-k_aux dead latents reconstruct the
    residual `x - recon` of the live ones (no bias). Scaled by min(n_dead / k_aux, 1) so a few
    dead latents give a small push. Zero when nothing is dead. `residual_BD` must be detached."""
    if dead_mask_F is None:
        return pre_BF.new_zeros(())
    n_dead = int(dead_mask_F.sum())
    if n_dead == 0:
        return pre_BF.new_zeros(())
    k = min(k_aux, n_dead)
    scale = min(n_dead / k_aux, 1.0)
    recon_BD = sparse_decode(auxk_acts(pre_BF, dead_mask_F, k), W_dec_FD, None, method)  # type: ignore[arg-type]
    return scale * mse_loss(recon_BD, residual_BD)


def matryoshka_level_losses(prefix_recons: list[Tensor], x_BD: Tensor) -> Tensor:
    """MSE of each prefix reconstruction, [L]."""
    return torch.stack([mse_loss(r, x_BD) for r in prefix_recons])
