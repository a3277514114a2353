"""Synthetic activations with known sparse structure, for tests, benchmarks and smoke runs.

Each row is a sparse non-negative combination of `n_features` fixed random unit directions
(feature i is picked with probability proportional to (i + 1) ** -zipf, `active` picks per row,
exponential magnitudes) plus small Gaussian noise. Batch i depends only on (seed, i), so the
stream is deterministic and resumable from one integer, with the reader's interface:

    src = SyntheticActivations(d_in=64, batch_size=1024, seed=0, n_batches=100)
    for x_BD in src: ...
    state = src.state_dict(); src.load_state_dict(state)

Shape key: B rows, D d_in, G features, A picks per row.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor


class SyntheticActivations:
    def __init__(
        self,
        d_in: int,
        batch_size: int,
        *,
        n_features: int | None = None,
        active: int = 8,
        zipf: float = 0.5,
        noise: float = 0.02,
        offset: float = 1.0,
        seed: int = 0,
        n_batches: int | None = None,
    ) -> None:
        self.d_in, self.batch_size = d_in, batch_size
        self.n_features = n_features or 4 * d_in
        self.active, self.noise, self.seed, self.n_batches = active, noise, seed, n_batches
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn(self.n_features, d_in, generator=g)
        self.features_GD = feats / feats.norm(dim=1, keepdim=True)
        self.offset_D = offset * torch.randn(d_in, generator=g) / d_in**0.5
        p = (torch.arange(self.n_features, dtype=torch.float64) + 1.0) ** -zipf
        self.cdf_G = (p.cumsum(0) / p.sum()).float()
        self._next = 0

    def batch(self, i: int) -> Tensor:
        """Batch number i of the stream, [B, D] float32."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * i + 1)
        B, A = self.batch_size, self.active
        u = torch.rand(B * A, generator=g)
        idx = torch.searchsorted(self.cdf_G, u).clamp_max(self.n_features - 1)
        mags = torch.empty(B * A).exponential_(1.0, generator=g)
        offsets = torch.arange(0, B * A + 1, A)
        x = F.embedding_bag(idx, self.features_GD, offsets, mode="sum", per_sample_weights=mags, include_last_offset=True)
        return x + self.offset_D + self.noise * torch.randn(B, self.d_in, generator=g)

    def __iter__(self) -> Iterator[Tensor]:
        while self.n_batches is None or self._next < self.n_batches:
            i = self._next
            self._next += 1  # before yielding: state_dict() describes what comes next
            yield self.batch(i)

    def state_dict(self) -> dict[str, Any]:
        return {"next": self._next, "seed": self.seed, "d_in": self.d_in, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {"seed": self.seed, "d_in": self.d_in, "batch_size": self.batch_size}
        diff = [f"{k}: saved {state.get(k)!r}, here {v!r}" for k, v in mine.items() if state.get(k) != v]
        if diff:
            raise ValueError("the saved state belongs to another synthetic stream: " + "; ".join(diff))
        self._next = int(state["next"])
