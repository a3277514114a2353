"""Shared pieces of the training-step benchmarks (bench_step.py, bf16_curve.py).

Shape key: B rows, D d_in, F d_sae, T ground-truth features, K active features per row.

- `SparseFeatureData`: activations with real sparse structure: each row is a sparse,
  non-negative combination of ground-truth unit directions (power-law frequencies) plus
  Gaussian noise, scaled so that E||x||^2 = D.
- `OurStep`: one training step of ours as the trainer runs it: `compute_grads`, decoder-gradient
  projection, fused Adam, decoder rows back to unit norm, BatchTopK threshold update.
"""

from __future__ import annotations

import math
import os
import time

import torch
from torch import Tensor

import saes
from saes.fast_step import StepWorkspace
from saes.registry import config_fields
from saes.step import compute_grads
from training.update import remove_parallel_decoder_grad_

ARCHS = ("topk", "batchtopk", "matryoshka_batchtopk")


def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


class SparseFeatureData:
    """x = sum over K active features of magnitude * direction, + noise; E||x||^2 = D."""

    def __init__(self, d_in: int, n_features: int, mean_active: float, noise: float = 0.05, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        dirs_TD = torch.randn(n_features, d_in, generator=g)
        self.dirs_TD = dirs_TD / dirs_TD.norm(dim=1, keepdim=True)
        freq_T = 1.0 / (torch.arange(n_features, dtype=torch.float64) + 20.0) ** 0.7
        self.prob_T = (freq_T / freq_T.sum()).float()
        self.mean_active = mean_active
        self.noise = noise
        self.d_in = d_in
        self.scale = 1.0
        probe = self.sample(4096, torch.Generator().manual_seed(seed + 1))
        self.scale = math.sqrt(d_in / float(probe.pow(2).sum(1).mean()))

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        K = max(1, round(self.mean_active))
        idx_NK = torch.multinomial(self.prob_T, n * K, replacement=True, generator=generator).view(n, K)
        on_NK = torch.rand(n, K, generator=generator) < 0.8  # ~0.8K active per row on average
        mag_NK = torch.rand(n, K, generator=generator).mul_(1.5).add_(0.25) * on_NK
        x_ND = torch.nn.functional.embedding_bag(
            idx_NK.reshape(-1), self.dirs_TD, torch.arange(0, n * K, K), mode="sum",
            per_sample_weights=mag_NK.reshape(-1),
        )
        x_ND += self.noise * torch.randn(n, self.d_in, generator=generator)
        return x_ND.mul_(self.scale)


def make_ours(arch: str, d_in: int, d_sae: int, k: int, widths: list[int] | None, seed: int) -> saes.SAE:
    kw: dict = {"k": k}
    if "matryoshka_widths" in config_fields(arch):
        kw["matryoshka_widths"] = list(widths or [])
    return saes.create_sae(arch, d_in, d_sae, generator=torch.Generator().manual_seed(seed), **kw)


class OurStep:
    """One optimiser step of ours, as the trainer takes it."""

    def __init__(self, sae: saes.SAE, lr: float, method: str, aux_coef: float, k_aux: int | None = None) -> None:
        self.sae, self.method, self.aux_coef, self.k_aux = sae, method, aux_coef, k_aux
        self.opt = torch.optim.Adam(list(sae.parameters()), lr=lr, fused=True)
        self.workspace = StepWorkspace()  # the step's reused buffers (the trainer keeps one per SAE)

    def __call__(self, x_BD: Tensor, dead_mask_F: Tensor | None = None) -> saes.GradResult:
        sae = self.sae
        res = compute_grads(sae, x_BD, dead_mask_F, aux_coef=self.aux_coef, k_aux=self.k_aux, method=self.method,
                            workspace=self.workspace)
        with torch.no_grad():  # keep unit decoder rows: drop the gradient along each row (as the trainer)
            remove_parallel_decoder_grad_(sae)
        self.opt.step()
        sae.normalize_decoder_()
        sae.update_inference_form_(res.pre_BF, res.acts, lr=0.01, above_threshold_F=res.above_threshold_F)
        return res


def timed(fn, *args, clock: str = "wall") -> float:
    """Seconds one call takes: elapsed time ("wall"), or CPU time of this process ("cpu": all its
    threads; with one torch thread, the work done, whatever share of the machine we get)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    t0 = now()
    fn(*args)
    return now() - t0
