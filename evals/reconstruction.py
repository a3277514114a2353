"""Reconstruction, sparsity and model-loss metrics of one SAE on held-out activations.

The training metrics come from `training.evaluate` (the same functions `saesteer train` reports
with, so the figures of an SAE trained here equal the ones its training printed):
    explained_variance, mse, l0, eval_dead_fraction, dense_fraction, eval_rows, levels (Matryoshka)
    ce_loss_clean / spliced / zero, ce_loss_recovered, kl_div        (`splice_metrics_many`)
and this module adds, defined as SAELens's `run_evals` defines them:
    cossim                        mean over rows of cos(x, x_hat)
    l2_ratio                      mean over rows of ||x_hat|| / ||x|| (||x|| < 1e-4 counts as 1): shrinkage
    relative_reconstruction_bias  mean ||x_hat||^2 / mean <x, x_hat>  (eq. 10 of arXiv:2404.16014)
    l1                            mean over rows of sum |acts|

A transcoder (`sae.is_transcoder`) is scored against its target rows (the target hook's
activations at the same tokens: x above is then the target and x_hat the prediction), and spliced
in place of its target: the target hook's output replaced by the prediction from the input hook
of the same forward pass (CE loss recovered against the target-ablated model, e.g. MLP-ablated).

Shape key: B rows, D d_in, F d_sae, O d_out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saes.base import SAE
from saes.hookpoints import transcoder_target


@torch.no_grad()
def shrinkage_metrics(sae: SAE, x_RD: Tensor, chunk_rows: int = 4096, targets_RO: Tensor | None = None) -> dict[str, float]:
    dev = sae.device
    sums = torch.zeros(5, dtype=torch.float64)  # cos, l2 ratio, ||x_hat||^2, <x, x_hat>, l1
    n = 0
    goals = targets_RO.split(chunk_rows) if targets_RO is not None else x_RD.split(chunk_rows)
    for x, goal in zip(x_RD.split(chunk_rows), goals):
        x_in = x.to(dev, torch.float32)
        acts = sae.encode_sparse(x_in)
        x_hat = sae.predict(x_in, acts).to(torch.float32)
        x_BD = goal.to(dev, torch.float32)  # what x_hat is compared with: the input, or a transcoder's target
        norm_in, norm_out = x_BD.norm(dim=-1), x_hat.norm(dim=-1)
        dot = (x_BD * x_hat).sum(-1)
        cos = dot / (norm_in * norm_out)  # NaN for a zero vector, as in SAELens
        ratio = norm_out / torch.where(norm_in.abs() < 1e-4, torch.ones_like(norm_in), norm_in)
        l1 = acts.values_N.abs().double().sum()
        sums += torch.stack([cos.double().sum(), ratio.double().sum(), norm_out.double().pow(2).sum(),
                             dot.double().sum(), l1]).cpu()
        n += x_BD.shape[0]
    n = max(n, 1)
    return {"cossim": float(sums[0]) / n, "l2_ratio": float(sums[1]) / n,
            "relative_reconstruction_bias": float(sums[2] / sums[3]) if float(sums[3]) != 0 else float("nan"),
            "l1": float(sums[4]) / n}


def activation_metrics(sae: SAE, x_RD: Tensor, dense_threshold: float, targets_RO: Tensor | None = None) -> dict[str, Any]:
    """Everything measured on activations alone (no model); `targets_RO`: a transcoder's target rows."""
    from training.evaluate import evaluate_activations

    out = evaluate_activations(sae, x_RD, dense_threshold=dense_threshold, targets=targets_RO)
    out.update(shrinkage_metrics(sae, x_RD, targets_RO=targets_RO))
    return out


def model_metrics_many(model: Any, saes: dict[str, tuple[SAE, str]], tokens_NL: Tensor, keep_token_ids: tuple[int, ...],
                       batch_size: int, progress: bool = False) -> dict[str, dict[str, float]]:
    """CE loss recovered and KL of each SAE (name -> (SAE, the hook it reads)) spliced in at its hook
    over the same contexts (`training.evaluate.splice_metrics_many`: the clean pass of a batch run
    once for all of them); a transcoder replaces its target hook (`metadata.hook_name_out`) instead.
    `progress`: a bar (stderr) over the contexts."""
    from training.evaluate import Splice, sae_reconstructor, splice_metrics_many

    # sae_reconstructor reads a head hook's [.., heads, d_head] flattened, as the SAE was trained
    splices = [Splice(sae_reconstructor(sae), transcoder_target(sae), hook) if sae.is_transcoder
               else Splice(sae_reconstructor(sae), hook) for sae, hook in saes.values()]
    got = splice_metrics_many(model, splices, tokens_NL, keep_token_ids=keep_token_ids, batch_size=batch_size,
                              progress=progress)
    return {name: m.to_dict() for name, m in zip(saes, got)}
