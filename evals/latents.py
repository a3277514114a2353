"""An SAE's latents over many rows, kept sparse (a real SAE has 16k-1M latents: a dense
[rows, d_sae] matrix would not fit), grouped into items (words, tokens or texts).

An item's latent vector is the mean over its rows (one row per item: the row itself), as
SAEBench mean-pools texts. Probes read only a few columns (`columns`), rankings need only sums
(`ranking`), and a single item's full vector is cheap (`item_vector`).

Shape key: R rows, D d_in, F d_sae, N stored (non-zero) entries, I items, K chosen latents.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saes.base import SAE


class LatentTable(NamedTuple):
    values_N: Tensor  # float32, already divided by the rows of its item (so sums are item means)
    latents_N: Tensor  # int64
    items_N: Tensor  # int64
    n_items: int
    d_sae: int


@torch.no_grad()
def latent_table(sae: SAE, x_RD: Tensor, item_R: Tensor | None = None, n_items: int | None = None,
                 chunk_rows: int = 4096) -> LatentTable:
    vals, lats, rows = [], [], []
    start = 0
    for x in x_RD.split(chunk_rows):
        acts = sae.encode_sparse(x.to(sae.device, sae.dtype))
        keep = acts.values_N != 0
        vals.append(acts.values_N[keep].float().cpu())
        lats.append(acts.indices_N[keep].cpu())
        rows.append(acts.row_ids()[keep].cpu() + start)
        start += x.shape[0]
    values_N, latents_N, rows_N = torch.cat(vals), torch.cat(lats), torch.cat(rows)
    if item_R is None:
        return LatentTable(values_N, latents_N, rows_N, start, sae.d_sae)
    n = int(n_items if n_items is not None else int(item_R.max()) + 1)
    per_item = torch.bincount(item_R, minlength=n).clamp_min(1).float()
    items_N = item_R[rows_N]
    return LatentTable(values_N / per_item[items_N], latents_N, items_N, n, sae.d_sae)


def _item_means(table: LatentTable, items: Tensor) -> Tensor:
    mask = torch.zeros(table.n_items, dtype=torch.bool)
    mask[items] = True
    sel = mask[table.items_N]
    sums = torch.zeros(table.d_sae, dtype=torch.float64).index_add_(0, table.latents_N[sel], table.values_N[sel].double())
    return sums / max(len(items), 1)


def ranking(table: LatentTable, pos_items: Tensor, neg_items: Tensor) -> Tensor:
    """Latents by (mean on positive items - mean on negative items), largest first, ties by lower id
    (SAEBench's sparse-probing selection)."""
    return torch.argsort(-(_item_means(table, pos_items) - _item_means(table, neg_items)), stable=True)


def columns(table: LatentTable, latents: Tensor | list[int], items: Tensor) -> Tensor:
    """[len(items), K] item values of the chosen latents."""
    latents = torch.as_tensor(latents, dtype=torch.long)
    col_of = torch.full((table.d_sae,), -1, dtype=torch.long)
    col_of[latents] = torch.arange(len(latents))
    row_of = torch.full((table.n_items,), -1, dtype=torch.long)
    row_of[items] = torch.arange(len(items))
    c, r = col_of[table.latents_N], row_of[table.items_N]
    sel = (c >= 0) & (r >= 0)
    out = torch.zeros(len(items), len(latents))
    return out.index_put_((r[sel], c[sel]), table.values_N[sel], accumulate=True)


def item_vector(table: LatentTable, item: int) -> Tensor:
    """[F] the full latent vector of one item."""
    sel = table.items_N == item
    return torch.zeros(table.d_sae).index_put_((table.latents_N[sel],), table.values_N[sel], accumulate=True)
