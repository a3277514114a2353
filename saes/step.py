"""One gradient computation for a training batch: the seam between trainer and fast paths.

`compute_grads` overwrites `.grad` of W_enc, b_enc, W_dec, b_dec with the gradient of the
training objective (`saes.objective.training_loss`) on one batch and returns the detached
figures the trainer needs (losses, the selected latents, pre-activations, reconstruction).

method="autograd" is the eager reference. Faster implementations register themselves in
STEP_METHODS under their own name and must match it (tests compare them). Every method is
called as `impl(sae, x_BD, dead_mask_F, aux_coef, k_aux, group=, workspace=, target_BO=, step=)`:
- `group`: the ranks of a data-parallel global batch (`saes.topk_select.BatchGroup`), for
  architectures whose training selection looks at the whole batch; None in one process.
- `workspace`: reusable buffers owned by the caller (the trainer keeps one per SAE), for
  methods that use them; None: fresh buffers on each call.
- `target_BO`: a transcoder's target rows (another hook's activations); None for an SAE.
  Transcoders get `.grad` of `W_skip` too when they have one.
- `step`: the optimiser step (0-based), for objectives whose coefficients warm up (JumpReLU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from torch import Tensor

from saes.base import SAE
from saes.objective import DEFAULT_AUX_COEF, training_loss
from saes.sparse import SparseActs
from saes.topk_select import BatchGroup

if TYPE_CHECKING:
    from saes.fast_step import StepWorkspace


class GradResult(NamedTuple):
    total: Tensor
    mse: Tensor
    aux: Tensor
    level_mse: Tensor | None
    acts: SparseActs
    pre_BF: Tensor  # fast methods: a workspace buffer, valid until the next step with that workspace
    recon_BD: Tensor
    # BatchTopK / Matryoshka, when a method gets it for free: per latent, the rows with
    # pre > threshold (thresholds as they were during this call); for `update_inference_form_`
    above_threshold_F: Tensor | None = None


def autograd_grads(
    sae: SAE, x_BD: Tensor, dead_mask_F: Tensor | None, aux_coef: float, k_aux: int | None, *,
    group: BatchGroup | None = None, workspace: Any = None, target_BO: Tensor | None = None, step: int = 0,
) -> GradResult:
    for p in sae.parameters():
        p.grad = None
    out = training_loss(sae, x_BD, dead_mask_F=dead_mask_F, aux_coef=aux_coef, k_aux=k_aux, group=group,
                        target_BO=target_BO, step=step)
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
    group: BatchGroup | None = None,
    workspace: StepWorkspace | None = None,
    target_BO: Tensor | None = None,
    step: int = 0,
) -> GradResult:
    try:
        impl = STEP_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown step method {method!r}; available: {', '.join(STEP_METHODS)}") from None
    return impl(sae, x_BD, dead_mask_F, aux_coef, k_aux, group=group, workspace=workspace, target_BO=target_BO,
                step=step)


# the fast methods register themselves in STEP_METHODS; importing them here makes every importer
# of this module see them (saes/__init__ loads its modules lazily)
import saes.fast_step  # noqa: E402,F401
