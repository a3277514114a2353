"""Sparse latent activations and the decoders that read them.

Shape key: B rows (tokens), D d_in, F d_sae, K active per row (TopK), N nonzeros in the batch.

`SparseActs` stores a batch of latent activations in CSR form: row b owns entries
`offsets[b]:offsets[b+1]` of `values`/`indices`. TopK gives exactly K per row; BatchTopK and
threshold encoders give ragged rows; one decoder serves them all.

Decoders (chosen by argument, never by environment):
- "embedding_bag": `F.embedding_bag` sums the active decoder rows, weighted; forward and
  backward touch only the N active rows. The fast path on CPU (and fine on GPU).
- "dense": scatter into a dense [B, F] matrix and matmul. The eager reference.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

DecodeMethod = Literal["embedding_bag", "dense"]
DECODE_METHODS: tuple[str, ...] = ("embedding_bag", "dense")


class SparseActs(NamedTuple):
    """Latent activations of B rows in CSR form."""

    values_N: Tensor  # activation values, dtype of the SAE
    indices_N: Tensor  # latent ids, int64
    offsets_B1: Tensor  # row pointers, int64, length B + 1
    d_sae: int

    @property
    def n_rows(self) -> int:
        return self.offsets_B1.numel() - 1

    def row_ids(self) -> Tensor:
        """The row of every stored entry, [N] int64."""
        counts_B = self.offsets_B1.diff()
        return torch.repeat_interleave(torch.arange(self.n_rows, device=counts_B.device), counts_B)

    def counts(self) -> Tensor:
        """Active latents per row (L0 of each row), [B]."""
        return self.offsets_B1.diff()

    def to_dense(self) -> Tensor:
        acts_BF = self.values_N.new_zeros(self.n_rows, self.d_sae)
        acts_BF[self.row_ids(), self.indices_N] = self.values_N
        return acts_BF

    @classmethod
    def from_topk(cls, values_BK: Tensor, indices_BK: Tensor, d_sae: int) -> SparseActs:
        B, K = values_BK.shape
        offsets = torch.arange(0, B * K + 1, K, device=values_BK.device, dtype=torch.int64)
        return cls(values_BK.reshape(-1), indices_BK.reshape(-1).to(torch.int64), offsets, d_sae)

    @classmethod
    def from_dense(cls, acts_BF: Tensor) -> SparseActs:
        """Keep the nonzero entries of a dense [B, F] matrix (row-major order)."""
        B, Fdim = acts_BF.shape
        rows_N, cols_N = acts_BF.nonzero(as_tuple=True)
        return cls.from_coo(acts_BF[rows_N, cols_N], rows_N, cols_N, B, Fdim)

    @classmethod
    def from_coo(cls, values_N: Tensor, rows_N: Tensor, cols_N: Tensor, n_rows: int, d_sae: int) -> SparseActs:
        """Build from (row, col, value) triples that are already sorted by row."""
        counts_B = torch.bincount(rows_N, minlength=n_rows)
        offsets = torch.zeros(n_rows + 1, dtype=torch.int64, device=values_N.device)
        torch.cumsum(counts_B, 0, out=offsets[1:])
        return cls(values_N, cols_N.to(torch.int64), offsets, d_sae)


def sparse_decode(
    acts: SparseActs, W_dec_FD: Tensor, b_dec_D: Tensor | None = None, method: DecodeMethod = "embedding_bag"
) -> Tensor:
    """Reconstruction [B, D] = sum over active latents of value * W_dec row (+ b_dec)."""
    if method == "embedding_bag":
        out_BD = F.embedding_bag(
            acts.indices_N,
            W_dec_FD,
            acts.offsets_B1,
            mode="sum",
            per_sample_weights=acts.values_N.to(W_dec_FD.dtype),
            include_last_offset=True,
        )
    elif method == "dense":
        out_BD = acts.to_dense().to(W_dec_FD.dtype) @ W_dec_FD
    else:
        raise ValueError(f"unknown decode method {method!r}; choose one of {', '.join(DECODE_METHODS)}")
    return out_BD if b_dec_D is None else out_BD + b_dec_D
