"""The points where data-parallel training must talk across processes, in one small class.

A single process uses `Collectives` as it is: every operation is the identity. Data-parallel
training (torchrun + DDP, issue 6) subclasses it with torch.distributed calls; the trainer calls
only these methods, so nothing else in it changes:

    average_gradients_(params)  gradients averaged over ranks before clipping and the optimiser
    sum_(t)                     all-reduce sum in place: latents' firing counts (dead-latent
                                counters), BatchTopK threshold statistics, init statistics
    min_(t)                     all-reduce min in place: the BatchTopK cutoff
    all_finite(flag)            every rank agrees to skip a non-finite step
    global_rows(n)              rows of the global batch (sum over ranks)
    broadcast_(t)               rank 0's value everywhere (initial weights, b_dec)
    is_writer                   only this rank writes checkpoints, SAE folders and logs
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


class Collectives:
    """Single-process collectives (the identity). Subclass for torch.distributed."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def average_gradients_(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average `.grad` of `params` over ranks, in place."""

    def sum_(self, t: Tensor) -> Tensor:
        return t

    def min_(self, t: Tensor) -> Tensor:
        return t

    def all_finite(self, flag: bool) -> bool:
        return flag

    def global_rows(self, n_local: int) -> int:
        return n_local

    def broadcast_(self, t: Tensor, src: int = 0) -> Tensor:
        return t

    def barrier(self) -> None:
        pass
