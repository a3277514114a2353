"""Reconstruction, sparsity and model-loss metrics of one SAE on held-out activations.

The training metrics come from `training.evaluate` (the same functions `saesteer train` reports
with, so the figures of an SAE trained here equal the ones its training printed):
    explained_variance, mse, l0, eval_dead_fraction, dense_fraction, eval_rows, levels (Matryoshka)
    ce_loss_clean / spliced / zero, ce_loss_recovered, kl_div        (`splice_metrics`)
and this module adds, defined as SAELens's `run_evals` defines them:
    cossim                        mean over rows of cos(x, x_hat)
    l2_ratio                      mean over rows of ||x_hat|| / ||x|| (||x|| < 1e-4 counts as 1): shrinkage
    relative_reconstruction_bias  mean ||x_hat||^2 / mean <x, x_hat>  (eq. 10 of arXiv:2404.16014)
    l1                            mean over rows of sum |acts|

Shape key: B rows, D d_in, F d_sae.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from saes.base import SAE


@torch.no_grad()
def shrinkage_metrics(sae: SAE, x_RD: Tensor, chunk_rows: int = 4096) -> dict[str, float]:
    dev = sae.device
    sums = torch.zeros(5, dtype=torch.float64)  # cos, l2 ratio, ||x_hat||^2, <x, x_hat>, l1
    n = 0
    for x in x_RD.split(chunk_rows):
        x_BD = x.to(dev, torch.float32)
        acts = sae.encode_sparse(x_BD)
        x_hat = sae.decode(acts).to(torch.float32)
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


def activation_metrics(sae: SAE, x_RD: Tensor, dense_threshold: float) -> dict[str, Any]:
    """Everything measured on activations alone (no model)."""
    from training.evaluate import evaluate_activations

    out = evaluate_activations(sae, x_RD, dense_threshold=dense_threshold)
    out.update(shrinkage_metrics(sae, x_RD))
    return out


def reconstructor(sae: SAE) -> Callable[[Tensor], Tensor]:
    """What replaces a hook's output when the SAE is spliced in: the SAE's reconstruction, for
    hooks whose per-token vector has trailing dimensions (attn.hook_z [.., heads, d_head]) too."""
    from training.evaluate import sae_reconstructor

    inner = sae_reconstructor(sae)

    def reconstruct(act: Tensor) -> Tensor:
        if act.shape[-1] == sae.d_in or act.ndim < 4:
            return inner(act)
        return inner(act.flatten(-2)).reshape(act.shape)

    return reconstruct


def model_metrics(model: Any, sae: SAE, hook: str, tokens_NL: Tensor, keep_token_ids: tuple[int, ...],
                  batch_size: int) -> dict[str, float]:
    """CE loss recovered and KL with the SAE spliced in at `hook` (`training.evaluate.splice_metrics`)."""
    from training.evaluate import splice_metrics

    return splice_metrics(model, reconstructor(sae), hook, tokens_NL, keep_token_ids=keep_token_ids,
                          batch_size=batch_size).to_dict()
