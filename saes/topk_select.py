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

`batch_top_entries` (BatchTopK) is exact as well: group maxima give a value L that at least
k*B entries reach, so the winners are among the few entries >= L, in the groups whose maximum
is >= L; the cut is taken among those.
"""

from __future__ import annotations

import math

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


class BatchGroup:
    """The processes whose batches BatchTopK selects over as one global batch (data parallel).

    This base class is one process. A data-parallel trainer passes a subclass whose methods
    talk to the other ranks (training/collectives.py): the selection then keeps, on each rank,
    the local entries that are among the k * (global rows) largest of the global batch, which
    is exactly what one process would select on the concatenated batch."""

    def global_rows(self, n_local: int) -> int:
        """Rows of the global batch (sum over ranks)."""
        return n_local

    def reduce_floor(self, floor: float) -> float:
        """The smallest of the ranks' floors. A rank's floor is a value that at least its share
        (k * local rows) of its entries reach; the global cut is at least the smallest, so each
        rank's candidates are its entries >= that (about its share, not k * global rows)."""
        return floor

    def take_top(self, vals_N: Tensor, total: int) -> Tensor:
        """Mask of the local entries among the `total` largest positive entries of all ranks'
        `vals_N` taken together (ties broken towards lower ranks, then earlier entries)."""
        return take_top(vals_N, total)


def batch_top_entries(pre_BF: Tensor, k: int, group: BatchGroup | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Exact BatchTopK: the k*B largest positive entries of `pre_BF`.

    With a `group` (data parallel), B is the global batch and the result is this rank's part of
    the global selection: every local winner is among the local top k*B, so the same candidate
    search runs with the global total and `group.take_top` makes the cut over all ranks.

    Returns (values [N], rows [N] int64, cols [N] int64) in row-major order with columns
    ascending within each row; N <= k*B (non-positive entries of the top k*B are dropped).
    Ties at the cut are broken deterministically.

    Two passes instead of one top-k over B*F entries: the maxima of column groups, then a value
    L with at least k*B group maxima >= L (`group_floor`), which bounds the cut from below
    (k*B entries are >= L). Every winner is an entry >= L in a group whose maximum is >= L;
    those few candidates are gathered and the cut is taken among them (`take_top`)."""
    B, Fdim = pre_BF.shape
    dev = pre_BF.device
    if B == 0 or Fdim == 0:
        idx = torch.empty(0, dtype=torch.int64, device=dev)
        return pre_BF.new_empty(0), idx, idx
    if group is not None:
        total_global = k * group.global_rows(B)
        total = min(total_global, B * Fdim)
    else:
        total_global = total = min(k * B, B * Fdim)
    if B * Fdim <= 2**18:  # small: one top-k over everything costs fewer ops
        if group is not None:
            group.reduce_floor(float("-inf"))  # every rank makes the same collective calls, whatever its path
        vals_N, pos_N = pre_BF.reshape(-1).topk(total, sorted=False)
        pos_N = pos_N[vals_N > 0].sort().values
        vals_N = pre_BF.reshape(-1)[pos_N]
        if group is not None:
            take_N = group.take_top(vals_N, total_global)
            vals_N, pos_N = vals_N[take_N], pos_N[take_N]
        return vals_N, pos_N // Fdim, pos_N % Fdim
    g = next(c for c in (16, 8, 4, 2, 1) if Fdim % c == 0)
    G = Fdim // g
    gmax_BG = pre_BF.reshape(B, g, G).amax(dim=1) if g > 1 else pre_BF  # group j: columns j + G*i
    if group is not None:  # candidates: entries >= the smallest of the ranks' floors for their shares
        floor = group.reduce_floor(group_floor(gmax_BG.reshape(-1), min(k * B, B * Fdim))[0])
    else:
        floor, _ = group_floor(gmax_BG.reshape(-1), total)
    grp_n2 = (gmax_BG >= floor).nonzero()
    rows_NG = grp_n2[:, :1].expand(-1, g)
    cols_NG = grp_n2[:, 1:] + torch.arange(0, Fdim, G, device=dev)
    vals_NG = pre_BF[rows_NG, cols_NG]
    keep = (vals_NG >= floor) & (vals_NG > 0)
    vals_N, rows_N, cols_N = vals_NG[keep], rows_NG[keep], cols_NG[keep]
    order_N = sort_order(rows_N * Fdim + cols_N, B * Fdim)
    vals_N, rows_N, cols_N = vals_N[order_N], rows_N[order_N], cols_N[order_N]
    take_N = group.take_top(vals_N, total_global) if group is not None else take_top(vals_N, total)
    return vals_N[take_N], rows_N[take_N], cols_N[take_N]


def group_floor(gmax_G: Tensor, total: int) -> tuple[float, int]:
    """(L, number of entries of `gmax_G` >= L) with at least `total` entries >= L, L close to
    the total-th largest entry (-inf when total covers them all).

    The exact total-th largest is one `kthvalue` over all of them (slow for millions); a strided
    sample gives a slightly lower value that is checked with one count, and widened if short."""
    n = gmax_G.numel()
    if total >= n:
        return float("-inf"), n
    stride = max(1, n // 65536) | 1  # odd: not in step with a power-of-two row length
    if stride > 1:
        sample = gmax_G[::stride].contiguous()
        m = sample.numel()
        for margin in (1.1, 1.5):
            r = int(total / n * m * margin) + 1
            if r >= m:
                break
            floor = sample.kthvalue(m - r + 1).values
            count = int((gmax_G >= floor).sum())
            if count >= total:
                return float(floor), count
    floor = _kth_largest(gmax_G, total)
    return float(floor), int((gmax_G >= floor).sum())


def sort_order(keys_N: Tensor, bound: int) -> Tensor:
    """Permutation sorting non-negative int keys < bound (int32 sorts when they fit: ~5x faster
    on CPU than int64)."""
    if bound <= 2**31 - 1 and keys_N.device.type == "cpu":
        keys_N = keys_N.to(torch.int32)
    return torch.sort(keys_N).indices
