"""Turn the pass state into per-latent results: statistics, quantiles, flags, chosen examples.

Shape key: F d_sae, K top examples, Q reservoir, P negative pool, G negatives per latent,
H histogram bins, W window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from features.accumulate import PERM_TAG, FeatureAccumulator
from features.hashing import uniform

FLAG_NAMES = ("dead", "dense", "bos_only", "single_position")


@dataclass
class PassResult:
    n_rows: int
    n_fires_F: Tensor
    freq_F: Tensor
    mean_F: Tensor  # mean activation over firings (NaN when dead)
    std_F: Tensor
    max_F: Tensor
    sum_F: Tensor
    sumsq_F: Tensor  # sum of squared activations (float64)
    min_pos_F: Tensor  # -1 when dead
    max_pos_F: Tensor
    bos_fires_F: Tensor
    hist_FH: Tensor
    bin_width_F: Tensor  # 0 when dead
    typical_max_F: Tensor  # median of the top-K activations (NaN when dead)
    q_F3: Tensor  # 50th, 90th, 99th percentile of the activation when firing (from the histogram)
    flags_F4: Tensor  # bool, columns FLAG_NAMES
    top_val_FK: Tensor  # -inf: empty slot
    top_seq_FK: Tensor
    top_pos_FK: Tensor
    top_win_FKW: Tensor
    qex_val_FQ: Tensor  # quantile examples, sorted by activation (descending), -inf empty
    qex_q_FQ: Tensor  # their quantile in the latent's activation distribution
    qex_seq_FQ: Tensor
    qex_pos_FQ: Tensor
    qex_win_FQW: Tensor
    neg_seq_FG: Tensor  # -1: empty
    neg_pos_FG: Tensor
    coact_lat_FQK: Tensor  # latents active on each sampled event (reservoir order), -1 padded
    coact_val_FQK: Tensor  # their activations on that token (0 in padding)
    coact_self_FQ: Tensor  # the latent's own activation on each sampled event (reservoir order)
    coact_n_F: Tensor  # sampled events per latent


def histogram_cdf(hist_FH: Tensor, width_F: Tensor, lat: Tensor, val: Tensor) -> Tensor:
    """Fraction of latent lat[i]'s firings below val[i] (linear within a bin)."""
    H = hist_FH.shape[1]
    h = hist_FH[lat].double()
    total = h.sum(1).clamp(min=1)
    x = (val.double() / width_F[lat].double().clamp(min=1e-30)).clamp(0, H - 1e-9)
    b = x.floor().long()
    below = torch.cumsum(h, 1).gather(1, b[:, None])[:, 0] - h.gather(1, b[:, None])[:, 0]
    frac = x - b.double()
    return ((below + frac * h.gather(1, b[:, None])[:, 0]) / total).float()


def histogram_quantiles(hist_FH: Tensor, width_F: Tensor, qs: list[float]) -> Tensor:
    """Activation at each quantile in qs [F, len(qs)] (linear within a bin; NaN when empty)."""
    F, H = hist_FH.shape
    h = hist_FH.double()
    cum = torch.cumsum(h, 1)
    total = cum[:, -1:]
    target = torch.tensor(qs, dtype=torch.float64)[None, :] * total  # [F, q]
    b = torch.searchsorted(cum.contiguous(), target.contiguous()).clamp(max=H - 1)
    before = cum.gather(1, b) - h.gather(1, b)
    inbin = h.gather(1, b).clamp(min=1e-30)
    x = b.double() + ((target - before) / inbin).clamp(0, 1)
    out = (x * width_F.double()[:, None]).float()
    out[total[:, 0] == 0] = float("nan")
    return out


def _sorted_top_examples(s: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(values, seqs, positions, windows) of each latent's top-K buffer, which is unordered:
    sorted by (value desc, row asc)."""
    rows = torch.where(s["top_row"] >= 0, s["top_row"], torch.iinfo(torch.int64).max)
    o = torch.sort(rows, dim=1, stable=True).indices
    o = o.gather(1, torch.sort(s["top_val"].gather(1, o), dim=1, descending=True, stable=True).indices)
    tv = s["top_val"].gather(1, o)
    top_seq, top_pos = s["top_seq"].gather(1, o), s["top_pos"].gather(1, o)
    top_win = s["top_win"].gather(1, o[:, :, None].expand(-1, -1, s["top_win"].shape[2]))
    return tv, top_seq, top_pos, top_win


def _typical_max(tv: Tensor) -> Tensor:
    """Median of the filled top-K slots (the usual median: mean of the middle two)."""
    filled = tv > float("-inf")
    tv_nan = torch.where(filled, tv, torch.full_like(tv, float("nan")))
    return torch.nanquantile(tv_nan, 0.5, dim=1)


def _flags(s: dict, cfg, n: Tensor, dead: Tensor, freq: Tensor) -> Tensor:
    """[F, 4] bool, columns FLAG_NAMES: dead, dense, fires only on BOS, fires at one position only."""
    enough = n >= max(cfg.flag_min_fires, 1)
    return torch.stack(
        [
            dead,
            freq > cfg.dense_threshold,
            enough & (s["bos_fires"] == n),
            enough & (s["min_pos"] == s["max_pos"]),
        ],
        1,
    )


def _quantile_examples(s: dict, F: int, width: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(order, values, quantiles, windows): the reservoir sorted by activation, each example
    tagged with its quantile of the latent's histogram."""
    rv = s["res_val"]
    order = torch.argsort(rv, dim=1, descending=True, stable=True)
    qv = rv.gather(1, order)
    lat = torch.arange(F)[:, None].expand_as(qv)
    ok = qv > float("-inf")
    qq = torch.full_like(qv, float("nan"))
    if bool(ok.any()):
        qq[ok] = histogram_cdf(s["hist"], width, lat[ok], qv[ok])
    win = s["res_win"].gather(1, order[:, :, None].expand(-1, -1, s["res_win"].shape[2]))
    return order, qv, qq, win


def _negatives(s: dict, cfg, F: int) -> tuple[Tensor, Tensor]:
    """(seqs, positions) [F, G]: a fixed random order of the pool; each latent takes the first G
    windows where it is silent throughout (-1 where fewer)."""
    G, P = cfg.n_negative, cfg.negative_pool
    neg_seq = torch.full((F, G), -1, dtype=torch.int64)
    neg_pos = torch.full((F, G), -1, dtype=torch.int64)
    if G and P:
        perm = torch.argsort(uniform(cfg.seed, torch.arange(P), PERM_TAG))
        valid_P = s["neg_row"][perm] >= 0
        for f0 in range(0, F, 4096):
            f1 = min(F, f0 + 4096)
            silent = (~s["neg_mask"][perm, f0:f1]).T & valid_P[None, :]  # [f, P]
            rank = torch.cumsum(silent.long(), 1)
            take = silent & (rank <= G)
            fi, pi = take.nonzero(as_tuple=True)
            slot = rank[fi, pi] - 1
            neg_seq[f0 + fi, slot] = s["neg_seq"][perm][pi]
            neg_pos[f0 + fi, slot] = s["neg_pos"][perm][pi]
    return neg_seq, neg_pos


def finalize(acc: FeatureAccumulator) -> PassResult:
    s, cfg = acc.s, acc.cfg
    F = acc.F
    n_rows = int(s["n_rows"])
    n = s["n_fires"]
    nf = n.double()
    dead = n == 0
    mean = torch.where(dead, float("nan"), s["sum"] / nf.clamp(min=1))
    var = (s["sumsq"] / nf.clamp(min=1) - mean.square()).clamp(min=0)
    std = torch.where(dead, float("nan"), var.sqrt())
    width = s["hist_top"] / cfg.hist_bins
    tv, top_seq, top_pos, top_win = _sorted_top_examples(s)
    typical = _typical_max(tv)
    q = histogram_quantiles(s["hist"], width, [0.5, 0.9, 0.99])
    freq = nf / max(n_rows, 1)
    flags = _flags(s, cfg, n, dead, freq)
    order, qv, qq, win = _quantile_examples(s, F, width)
    neg_seq, neg_pos = _negatives(s, cfg, F)
    return PassResult(
        n_rows=n_rows,
        n_fires_F=n.clone(),
        freq_F=freq,
        mean_F=mean,
        std_F=std,
        max_F=s["max"].clone(),
        sum_F=s["sum"].clone(),
        sumsq_F=s["sumsq"].clone(),
        min_pos_F=torch.where(dead, -1, s["min_pos"]),
        max_pos_F=s["max_pos"].clone(),
        bos_fires_F=s["bos_fires"].clone(),
        hist_FH=s["hist"].clone(),
        bin_width_F=width,
        typical_max_F=typical,
        q_F3=q,
        flags_F4=flags,
        top_val_FK=tv,
        top_seq_FK=top_seq,
        top_pos_FK=top_pos,
        top_win_FKW=top_win,
        qex_val_FQ=qv,
        qex_q_FQ=qq,
        qex_seq_FQ=s["res_seq"].gather(1, order),
        qex_pos_FQ=s["res_pos"].gather(1, order),
        qex_win_FQW=win,
        neg_seq_FG=neg_seq,
        neg_pos_FG=neg_pos,
        coact_lat_FQK=s["res_lat"],
        coact_val_FQK=s["res_latv"],
        coact_self_FQ=s["res_val"],
        coact_n_F=(s["res_val"] > float("-inf")).sum(1),
    )
