"""Matryoshka BatchTopK SAE: nested prefixes of the latents must each reconstruct the input.

Shape key: B rows, D d_in, F d_sae, L levels, N nonzeros.

`cfg.matryoshka_widths` are cumulative prefix sizes ending at d_sae: level j is made of
latents [0, widths[j]). Training sums the reconstruction loss of every prefix, which pushes
general, frequent features into the early levels. Inference is the threshold encoder of
BatchTopK.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saes.batchtopk import BatchTopKSAE
from saes.config import MatryoshkaConfig
from saes.sparse import DecodeMethod, SparseActs, sparse_decode


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka_batchtopk"
    aliases = ("matryoshka",)
    config_class = MatryoshkaConfig
    cfg: MatryoshkaConfig
    training_rule = "batch_topk"  # the fast step decodes levels as (row, level) bags

    @property
    def levels(self) -> list[int]:
        return list(self.cfg.matryoshka_widths)

    def level_of(self, latent_ids: Tensor) -> Tensor:
        """Matryoshka level (0 = innermost) of each latent id."""
        bounds = torch.tensor(self.levels, device=latent_ids.device)
        return torch.bucketize(latent_ids, bounds, right=True)

    def level_reconstructions(self, acts: SparseActs, method: DecodeMethod = "embedding_bag") -> list[Tensor]:
        """Reconstruction [B, D] from each prefix, innermost first; the last is the full one."""
        level_N = self.level_of(acts.indices_N)
        out: list[Tensor] = []
        running_BD = self.b_dec.expand(acts.n_rows, self.d_out)
        for j in range(len(self.levels)):
            part = acts._replace(values_N=acts.values_N * (level_N == j).to(acts.values_N.dtype))
            running_BD = running_BD + sparse_decode(part, self.W_dec, None, method)
            out.append(running_BD)
        return out

    def training_details(self) -> dict[str, Any]:
        return {**super().training_details(), "matryoshka_widths": self.levels}

    @classmethod
    def config_fields_from_saelens(cls, cfg: dict[str, Any], details: dict[str, Any], source: str) -> dict[str, Any]:
        widths = list(cfg.get("matryoshka_widths") or details.get("matryoshka_widths") or [])
        return {**super().config_fields_from_saelens(cfg, details, source), "matryoshka_widths": widths}
