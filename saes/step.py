"""One gradient computation for a training batch: the seam between trainer and fast paths.

`compute_grads` overwrites `.grad` of W_enc, b_enc, W_dec, b_dec with the gradient of the
training objective (`saes.objective.training_loss`) on one batch and returns the detached
figures the trainer needs (losses, the selected latents, pre-activations, reconstruction).

method="autograd" is the eager reference. Faster implementations register themselves in
STEP_METHODS under their own name and must match it (tests compare them).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from torch import Tensor

from saes.base import SAE
from saes.objective import DEFAULT_AUX_COEF, training_loss
from saes.sparse import SparseActs


class GradResult(NamedTuple):
    total: Tensor
    mse: Tensor
    aux: Tensor
    level_mse: Tensor | None
    acts: SparseActs
    pre_BF: Tensor  # fast methods: a workspace buffer, valid until the SAE's next fast step
    recon_BD: Tensor
    # BatchTopK / Matryoshka, when a method gets it for free: per latent, the rows with
    # pre > threshold (thresholds as they were during this call); for `update_threshold_`
    above_threshold_F: Tensor | None = None


def autograd_grads(
    sae: SAE, x_BD: Tensor, dead_mask_F: Tensor | None, aux_coef: float, k_aux: int | None
) -> GradResult:
    for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
        p.grad = None
    out = training_loss(sae, x_BD, dead_mask_F=dead_mask_F, aux_coef=aux_coef, k_aux=k_aux)
    out.total.backward()
    acts = out.acts._replace(values_N=out.acts.values_N.detach())
    lm = out.level_mse.detach() if out.level_mse is not None else None
    return GradResult(
        out.total.detach(), out.mse.detach(), out.aux.detach(), lm, acts, out.pre_BF.detach(), out.recon_BD.detach()
    )


STEP_METHODS: dict[str, Callable[..., GradResult]] = {"autograd": autograd_grads}


def compute_grads(
    sae: SAE,
    x_BD: Tensor,
    dead_mask_F: Tensor | None = None,
    *,
    aux_coef: float = DEFAULT_AUX_COEF,
    k_aux: int | None = None,
    method: str = "autograd",
) -> GradResult:
    try:
        impl = STEP_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown step method {method!r}; available: {', '.join(STEP_METHODS)}") from None
    return impl(sae, x_BD, dead_mask_F, aux_coef, k_aux)


# the fast methods register themselves in STEP_METHODS; importing them here makes every importer
# of this module see them (saes/__init__ loads its modules lazily)
import saes.fast_step  # noqa: E402,F401
