"""One optimiser update of one SAE (`train_step`), and the step method it uses.

Shape key: B batch rows, D d_in, F d_sae.

Per step: gradients from `saes.compute_grads` (the step method: autograd reference, or the fast /
fast_bf16 / fast_native kernels, `resolve_step_method`), averaged over ranks, the component of
each decoder row's gradient parallel to the row removed, a non-finite check (skip the step),
optional clipping, Adam (each param group at its peak LR times the schedule's factor), decoder
rows back to unit norm, the dead-latent counters, and (BatchTopK / Matryoshka) one
frequency-matching step of the inference thresholds. The SAE and its optimiser state are a
`training.trainer.Member`; the loop around the step is `training.trainer.Trainer`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from saes import SAE
from saes.sparse import SparseActs
from saes.step import STEP_METHODS, compute_grads
from training.collectives import Collectives

if TYPE_CHECKING:
    from training.trainer import Member


class StepSettings(NamedTuple):
    method: str
    aux_coef: float
    k_aux: int | None
    dead_window: int  # TrainConfig.dead_window_tokens
    grad_clip: float
    threshold_lr: float


class StepStats(NamedTuple):
    skipped: bool
    loss: Tensor
    mse: Tensor
    aux: Tensor
    level_mse: Tensor | None
    grad_norm: Tensor
    fired_F: Tensor | None  # firing counts over the global batch (None when skipped)


def resolve_step_method(name: str, device: torch.device | None = None, saes: Iterable[SAE] = ()) -> str:
    """'auto' -> 'fast_native' on CPU when the compiled kernels build here (1.1-1.5x faster than
    'fast', same results up to summation order: benchmarks/RESULTS.md), else 'fast', else
    'autograd' (also when one of `saes` has no fast step: its `training_rule` is not one the fast
    step implements); other names must be registered."""
    from saes.fast_step import FAST_RULES

    if name == "auto":
        if any(sae.training_rule not in FAST_RULES for sae in saes):
            return "autograd"
        if device is not None and device.type == "cpu" and "fast_native" in STEP_METHODS and _native_kernels_load():
            return "fast_native"
        return "fast" if "fast" in STEP_METHODS else "autograd"
    if name not in STEP_METHODS:
        raise ValueError(f"TrainConfig.step_method {name!r} is not available; choose auto or one of {', '.join(STEP_METHODS)}")
    return name


def _native_kernels_load() -> bool:
    from saes import native

    if not native.available():
        return False
    try:
        native.load()
    except (RuntimeError, OSError) as err:  # a compiler that cannot build them: the pure-torch step
        warnings.warn(f"compiled SAE kernels unavailable ({err}); training with step method 'fast'", stacklevel=3)
        return False
    return True



# ---------------------------------------------------------------- small pieces of one step
def fired_counts(acts: SparseActs) -> Tensor:
    """How many rows each latent fired on (nonzero activation), [F] int64."""
    return torch.bincount(acts.indices_N[acts.values_N != 0], minlength=acts.d_sae)


def update_dead_counters_(since_fired_F: Tensor, fired_F: Tensor, n_tokens: int) -> None:
    since_fired_F.add_(n_tokens).masked_fill_(fired_F > 0, 0)


@torch.no_grad()
def remove_parallel_decoder_grad_(sae: SAE) -> None:
    """Project each decoder row's gradient onto the row's orthogonal complement (rows are unit)."""
    W_FD, g_FD = sae.W_dec, sae.W_dec.grad
    if g_FD is None:
        return
    along_F = torch.linalg.vecdot(g_FD, W_FD, dim=1)  # 2x faster than einsum's batched matmul on CPU
    g_FD.addcmul_(along_F[:, None], W_FD, value=-1.0)


def grad_norm(params: list[torch.nn.Parameter]) -> Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros(())


def set_lr(m: Member, factor: float) -> None:
    """Each param group at its peak LR times the schedule's factor."""
    for group, peak in zip(m.optimizer.param_groups, m.group_lrs, strict=True):
        group["lr"] = peak * factor


def train_step(
    m: Member, x_BD: Tensor, lr_factor: float, s: StepSettings, coll: Collectives, n_global: int | None = None,
    target_BO: Tensor | None = None, step: int = 0,
) -> StepStats:
    """One optimiser step of one SAE on one batch (skipped, with grads dropped, if non-finite);
    `lr_factor`: the LR schedule's factor at this step (each param group's peak LR times it).

    Data parallel (`coll.distributed`): `x_BD` is this rank's part of a global batch of
    `n_global` rows; selections over the batch (BatchTopK) see the global batch, and the
    gradients are averaged with weights local rows / global rows (the gradient of the global
    batch's mean loss). `target_BO`: a transcoder's target rows. `step`: the optimiser step
    (0-based; JumpReLU's penalty warms up by it)."""
    n_local = x_BD.shape[0]
    n_global = coll.global_rows(n_local) if n_global is None else n_global
    res = compute_grads(m.sae, x_BD, m.dead_mask(s.dead_window), aux_coef=s.aux_coef, k_aux=s.k_aux, method=s.method,
                        group=coll.batch_group(), workspace=m.workspace, target_BO=target_BO, step=step)
    coll.average_gradients_(m.params, n_local / n_global if n_global else None)
    remove_parallel_decoder_grad_(m.sae)
    norm = grad_norm(m.params)
    if not coll.all_finite(bool(torch.isfinite(res.total) & torch.isfinite(norm))):
        for p in m.params:
            p.grad = None
        return StepStats(True, res.total, res.mse, res.aux, res.level_mse, norm, None)
    if s.grad_clip > 0:
        torch.nn.utils.clip_grads_with_norm_(m.params, s.grad_clip, norm, foreach=True)
    set_lr(m, lr_factor)
    m.optimizer.step()
    m.sae.normalize_decoder_()
    fired_F = coll.sum_(fired_counts(res.acts))
    update_dead_counters_(m.since_fired_F, fired_F, n_global)
    m.sae.update_inference_form_(res.pre_BF, res.acts, lr=s.threshold_lr, above_threshold_F=res.above_threshold_F,
                                 reduce=coll if coll.distributed else None)
    return StepStats(False, res.total, res.mse, res.aux, res.level_mse, norm, fired_F)


