"""Exact top-k selections that are faster than `torch.topk` over wide rows.

Shape key: B rows, F columns (d_sae), K kept per row, G groups per row, g columns per group,
M candidates per row, N selected entries.

`row_topk` (per-row top k) splits each row into G groups of g strided columns
(group j = columns j, j+G, j+2G, ...), takes every group's maximum (one vectorised pass over
the matrix), keeps the k groups with the largest maxima, and runs the final top-k over their
k*g members only. This is exact: every member of the true top k lies in one of those groups,
because k groups each hold an element >= the k-th largest group maximum, so an element outside
them cannot beat k others. Ties may be broken differently from `torch.topk` (which breaks them
arbitrarily too); the selected values are always the same multiset.

`batch_top_entries` (BatchTopK) is exact as well: each row's top M candidates, one k-th value
over all candidates, and rows whose M candidates all made the cut offer 4x more candidates in
another round, until no row is in doubt.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


def group_size(n_cols: int, k: int) -> int:
    """Columns per group for `row_topk`, or 0 when plain `torch.topk` is the better choice.

    The work is ~ F (group maxima) + G (top-k of the maxima) + k*g (final top-k), smallest
    at g = sqrt(F / k); g must divide F and leave at least 4k groups."""
    if k <= 0 or n_cols < 8 * k:
        return 0
    g = 2 ** round(math.log2(math.sqrt(n_cols / k)))
    while g >= 4 and (n_cols % g or n_cols // g < 4 * k):
        g //= 2
    return g if g >= 4 else 0


def row_topk(x_BF: Tensor, k: int, group: int | None = None) -> tuple[Tensor, Tensor]:
    """The k largest entries of every row: (values [B, k], column indices [B, k] int64), unsorted.

    `group` forces a group size (0 = plain `torch.topk`); None picks one by `group_size`."""
    B, Fdim = x_BF.shape
    if k > Fdim:
        raise ValueError(f"cannot take the top {k} of {Fdim} columns")
    g = group_size(Fdim, k) if group is None else group
    if g == 0 or B == 0:
        return x_BF.topk(k, dim=1, sorted=False)
    if Fdim % g or Fdim // g < k:
        raise ValueError(f"group size {g} must divide the width {Fdim} and leave at least k={k} groups")
    G = Fdim // g
    if not x_BF.is_contiguous():
        x_BF = x_BF.contiguous()
    gmax_BG = x_BF.view(B, g, G).amax(dim=1)  # group j holds columns j + G*i, i < g
    gid_BK = gmax_BG.topk(k, dim=1, sorted=False).indices
    cols_BM = (gid_BK.unsqueeze(2) + torch.arange(0, Fdim, G, device=x_BF.device)).view(B, k * g)
    vals_BK, pos_BK = x_BF.gather(1, cols_BM).topk(k, dim=1, sorted=False)
    return vals_BK, cols_BM.gather(1, pos_BK)


def _kth_largest(vals_N: Tensor, n: int) -> Tensor:
    """The n-th largest value of a 1-D tensor (1 <= n <= numel), as a 0-d tensor."""
    return vals_N.kthvalue(vals_N.numel() - n + 1).values


def take_top(vals_N: Tensor, total: int) -> Tensor:
    """Mask of the `total` largest positive entries of a 1-D tensor (ties broken towards
    earlier entries); all positive entries when there are fewer."""
    if vals_N.numel() <= total:
        return vals_N > 0
    return _take_exactly(vals_N, _kth_largest(vals_N, total), total)


def _take_exactly(vals_N: Tensor, cutoff: Tensor, total: int) -> Tensor:
    """Mask of the entries > cutoff plus the first entries == cutoff, `total` in all (or fewer
    when there are fewer entries), then restricted to positive values."""
    take_N = vals_N > cutoff
    missing = total - int(take_N.sum())
    if missing > 0:
        eq_N = vals_N == cutoff
        first_eq = eq_N.cumsum(0) <= missing
        take_N |= eq_N & first_eq
    return take_N & (vals_N > 0)


def batch_top_entries(
    pre_BF: Tensor, k: int, topk: Callable[[Tensor, int], tuple[Tensor, Tensor]] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact BatchTopK: the k*B largest positive entries of `pre_BF`.

    Returns (values [N], rows [N] int64, cols [N] int64) in row-major order with columns
    ascending within each row; N <= k*B (non-positive entries of the top k*B are dropped).
    Ties at the cut are broken deterministically (by candidate order). `topk` finds the per-row
    candidates (default `row_topk`; values may come back in another float dtype).

    Each row offers its top 2k entries as candidates and the cut is the (k*B)-th largest
    candidate. A row whose every candidate beat the cut may hide more winners: those rows offer
    4x more candidates and the cut is taken again (it only rises, so the other rows stay exact),
    until no row is left in doubt."""
    topk = topk or row_topk
    B, Fdim = pre_BF.shape
    dev = pre_BF.device
    if B == 0:
        idx = torch.empty(0, dtype=torch.int64, device=dev)
        return pre_BF.new_empty(0), idx, idx
    total = min(k * B, B * Fdim)
    rows_all = torch.arange(B, device=dev)
    blocks: list[tuple[Tensor, Tensor, Tensor]] = []  # (rows [R], values [R, m], cols [R, m])
    rows, m = rows_all, min(Fdim, 2 * k)
    while True:
        sub = pre_BF if rows.numel() == B else pre_BF.index_select(0, rows)
        vals_RM, cols_RM = topk(sub, m)
        blocks.append((rows, vals_RM.to(pre_BF.dtype), cols_RM))
        flat = torch.cat([v.reshape(-1) for _, v, _ in blocks]) if len(blocks) > 1 else blocks[0][1].reshape(-1)
        cutoff = _kth_largest(flat, min(total, flat.numel()))
        if m == Fdim:
            break
        doubt_R = blocks[-1][1].amin(dim=1) > cutoff.clamp_min(0)
        if not bool(doubt_R.any()):
            break
        # the doubtful rows leave their block and come back with 4x the candidates
        r, v, c = blocks[-1]
        keep_R = ~doubt_R
        blocks[-1] = (r[keep_R], v[keep_R], c[keep_R])
        rows, m = r[doubt_R], min(Fdim, 4 * m)
    vals_N = torch.cat([v.reshape(-1) for _, v, _ in blocks])
    rows_N = torch.cat([r.repeat_interleave(v.shape[1]) for r, v, _ in blocks])
    cols_N = torch.cat([c.reshape(-1) for _, _, c in blocks])
    pos_N = _take_exactly(vals_N, cutoff, total).nonzero().squeeze(1)
    vals_N, rows_N, cols_N = vals_N[pos_N], rows_N[pos_N], cols_N[pos_N]
    order_N = sort_order(rows_N * Fdim + cols_N, B * Fdim)
    return vals_N[order_N], rows_N[order_N], cols_N[order_N]


def sort_order(keys_N: Tensor, bound: int) -> Tensor:
    """Permutation sorting non-negative int keys < bound (int32 sorts when they fit: ~5x faster
    on CPU than int64)."""
    if bound <= 2**31 - 1 and keys_N.device.type == "cpu":
        keys_N = keys_N.to(torch.int32)
    return torch.sort(keys_N).indices
