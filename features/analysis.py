"""Weight- and count-based relations between latents: decoder-cosine neighbours, co-activation
neighbours, correlations of activations, logit effects through the unembedding, and Matryoshka
parent/child links.

Shape key: F d_sae, D d_in, V vocab, Q sampled events per latent, K latents per event, n neighbours
kept, b block rows.

Everything works in row blocks so that no [F, F] (or [F, V]) matrix is ever built.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

_BLOCK_ELEMS = 1 << 24  # ~64 MB of float32 per block product


def _block_rows(cols: int) -> int:
    return max(1, _BLOCK_ELEMS // max(cols, 1))


class Neighbours(NamedTuple):
    ids_Fn: Tensor  # int64, -1 where fewer than n exist
    score_Fn: Tensor  # float32 (cosine, or Jaccard for co-activation)
    count_Fn: Tensor | None = None  # co-firing counts (co-activation only)


def decoder_neighbours(W_dec_FD: Tensor, n: int) -> Neighbours:
    """For every latent, the n other latents whose decoder directions have the largest cosine."""
    W = W_dec_FD.detach().float()
    F = W.shape[0]
    n = min(n, F - 1)
    Wn = W / W.norm(dim=1, keepdim=True).clamp(min=1e-12)
    ids = torch.full((F, max(n, 0)), -1, dtype=torch.int64)
    sc = torch.zeros(F, max(n, 0))
    if n <= 0:
        return Neighbours(ids, sc)
    b = _block_rows(F)
    for f0 in range(0, F, b):
        f1 = min(F, f0 + b)
        sims = Wn[f0:f1] @ Wn.T
        sims[torch.arange(f1 - f0), torch.arange(f0, f1)] = float("-inf")
        v, i = sims.topk(n, dim=1)
        ids[f0:f1], sc[f0:f1] = i, v
    return Neighbours(ids, sc)


class CoactSample(NamedTuple):
    """Each latent's uniform sample of firing events (see features.accumulate) and, per event,
    the latents active on that token."""

    lat_FQK: Tensor  # int32, -1 padded
    n_sample_F: Tensor  # events in the sample (= min(n_fires, Q))
    n_fires_F: Tensor


def coact_counts(sample: CoactSample, f0: int, f1: int, cols: int | None = None) -> Tensor:
    """Dense counts [f1-f0, cols] (cols default d_sae): in how many of latent f's sampled events
    latent g was active (g != f; the diagonal is zero). One scatter_add per block, no sorting."""
    F = sample.n_fires_F.numel()
    cols = F if cols is None else cols
    x = sample.lat_FQK[f0:f1].reshape(f1 - f0, -1).long()
    x = torch.where((x >= 0) & (x < cols), x, cols)  # padding and columns not asked for -> a spill column
    out = torch.zeros(f1 - f0, cols + 1, dtype=torch.int32)
    out.scatter_add_(1, x, torch.ones_like(x, dtype=torch.int32))
    out = out[:, :cols]
    rows = torch.arange(f1 - f0)
    self_col = torch.arange(f0, f1)
    inside = self_col < cols
    out[rows[inside], self_col[inside]] = 0
    return out


def _jaccard(c: Tensor, n_sample: Tensor, n_f: Tensor, n_g: Tensor) -> Tensor:
    """Estimated Jaccard index of f and g from c = sampled events of f in which g fired."""
    est = c / n_sample.float().clamp(min=1) * n_f
    est = torch.minimum(est, torch.minimum(n_f, n_g))  # a sampling estimate; never above either count
    return est / (n_f + n_g - est).clamp(min=1e-12)


def coact_neighbours(sample: CoactSample, n: int) -> Neighbours:
    """For every latent, the n latents with the largest estimated Jaccard index of co-firing.

    From f's sample, P(g | f) = (events with g) / (events sampled); the co-firing count is
    estimated as P(g | f) * n_f (capped by n_f and n_g) and Jaccard = C / (n_f + n_g - C).
    `count` is the number of sampled events of f in which g fired. Ties: the lower latent id first.

    Sparse: only the (f, g) pairs seen in f's sample are counted (at most Q*K per latent), so the
    cost is O(F*Q*K log), not the O(F^2) of scoring every pair (`coact_neighbours_dense`, the
    reference, took minutes at 131k latents)."""
    F = sample.n_fires_F.numel()
    ids = torch.full((F, n), -1, dtype=torch.int64)
    sc = torch.zeros(F, n)
    cnt = torch.zeros(F, n, dtype=torch.int64)
    nf = sample.n_fires_F.float()
    QK = sample.lat_FQK[0].numel() if F else 1
    b = max(1, min(_BLOCK_ELEMS // 8 // max(QK, 1), (2**31 - 1) // max(F, 1)))  # block keys fit in int32 (faster sorts)
    for f0 in range(0, F, b):
        f1 = min(F, f0 + b)
        g_BM = sample.lat_FQK[f0:f1].reshape(f1 - f0, -1).to(torch.int32)
        row_BM = torch.arange(f1 - f0, dtype=torch.int32).unsqueeze(1).expand_as(g_BM)  # rows of the block
        ok = (g_BM >= 0) & (g_BM != row_BM + f0)
        keys, c = torch.unique(row_BM[ok] * F + g_BM[ok], return_counts=True)  # sorted by (f, g)
        if keys.numel() == 0:
            continue
        r_P, g_P = (keys // F).long(), (keys % F).long()
        f_P = r_P + f0
        jac = _jaccard(c.float(), sample.n_sample_F[f_P], nf[f_P], nf[g_P])
        # within each f: descending Jaccard, then ascending g. One stable sort of 2r - jac (exact in
        # float64: jac is a float32 in (0, 1], so each row keeps to its own interval [2r - 1, 2r))
        order = torch.sort(r_P.double() * 2 - jac.double(), stable=True).indices
        r_P, g_P, c, jac = r_P[order], g_P[order], c[order], jac[order]
        first = torch.zeros(f1 - f0 + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(r_P, minlength=f1 - f0), 0, out=first[1:])
        rank = torch.arange(r_P.numel()) - first[r_P]
        top = (rank < n) & (jac > 0)
        r_P, g_P, c, jac, rank = r_P[top], g_P[top], c[top], jac[top], rank[top]
        ids[r_P + f0, rank], sc[r_P + f0, rank], cnt[r_P + f0, rank] = g_P, jac, c.long()
    return Neighbours(ids, sc, cnt)


def coact_neighbours_dense(sample: CoactSample, n: int) -> Neighbours:
    """The eager reference of `coact_neighbours`: every (f, g) pair scored in dense row blocks
    (O(F^2)); ties broken by `topk`."""
    F = sample.n_fires_F.numel()
    ids = torch.full((F, n), -1, dtype=torch.int64)
    sc = torch.zeros(F, n)
    cnt = torch.zeros(F, n, dtype=torch.int64)
    k = min(n, F)
    nf = sample.n_fires_F.float()
    b = _block_rows(F)
    for f0 in range(0, F, b):
        f1 = min(F, f0 + b)
        c = coact_counts(sample, f0, f1).float()
        n_f = nf[f0:f1, None]
        est = c / sample.n_sample_F[f0:f1, None].float().clamp(min=1) * n_f
        est = torch.minimum(est, torch.minimum(n_f, nf[None, :]))  # a sampling estimate; never above either count
        jac = est / (n_f + nf[None, :] - est).clamp(min=1e-12)
        jac[c == 0] = -1.0
        v, i = jac.topk(k, dim=1)
        ok = v > 0
        ids[f0:f1, :k] = torch.where(ok, i, -1)
        sc[f0:f1, :k] = torch.where(ok, v, 0)
        cnt[f0:f1, :k] = torch.where(ok, c.gather(1, i).long(), 0)
    return Neighbours(ids, sc, cnt)


class Correlations(NamedTuple):
    """Each latent's most correlated latents by activation, as SAEDashboard's feature tables have
    them: Pearson correlation and cosine similarity of the two latents' activations over every token."""

    ids_Fn: Tensor  # int64, -1 where fewer than n exist
    pearson_Fn: Tensor  # float32, descending in each row
    cossim_Fn: Tensor  # float32, at the same latents


def activation_correlations(sample: CoactSample, val_FQK: Tensor, self_FQ: Tensor, sum_F: Tensor, sumsq_F: Tensor,
                            n_rows: int, n: int) -> Correlations:
    """For every latent f, the n latents g with the largest Pearson correlation of activations over
    all `n_rows` tokens (a latent that is silent counts 0), and the cosine similarity of the same two
    activation vectors: SAEDashboard's `correlated_features_pearson` and `_cossim` (Neuronpedia's
    `correlated_features_pearson` and `_l1`).

    Sums and sums of squares are exact (the pass's moments); the cross sum S_fg = sum_t x_f(t) x_g(t)
    is estimated from f's uniform sample of firing events (`sample.lat_FQK`, their activations
    `val_FQK`, f's own `self_FQ`): (n_f / sampled) * sum over the sample of x_f x_g. Exact when f
    fires at most Q times and at most `coact_kmax` latents fire on each of its tokens. Only pairs seen
    in f's sample are scored and only positive correlations kept: a pair that never fires together
    has S_fg = 0, so its correlation is negative. Ties: the lower latent first."""
    F = sample.n_fires_F.numel()
    ids = torch.full((F, n), -1, dtype=torch.int64)
    pear = torch.zeros(F, n)
    cos = torch.zeros(F, n)
    N = float(n_rows)
    S, SS = sum_F.double(), sumsq_F.double()
    var = (N * SS - S * S).clamp(min=0)  # N^2 times the variance over all tokens
    scale_F = sample.n_fires_F.double() / sample.n_sample_F.double().clamp(min=1)
    QK = sample.lat_FQK[0].numel() if F else 1
    b = max(1, min(_BLOCK_ELEMS // 16 // max(QK, 1), (2**62) // max(F, 1)))
    for f0 in range(0, F, b):
        f1 = min(F, f0 + b)
        g_BM = sample.lat_FQK[f0:f1].reshape(f1 - f0, -1).long()
        xy_BM = (self_FQ[f0:f1, :, None].double() * val_FQK[f0:f1].double()).reshape(f1 - f0, -1)
        row_BM = torch.arange(f1 - f0).unsqueeze(1).expand_as(g_BM)
        ok = (g_BM >= 0) & (g_BM != row_BM + f0)
        keys, inv = torch.unique(row_BM[ok] * F + g_BM[ok], return_inverse=True)  # sorted by (f, g)
        if keys.numel() == 0:
            continue
        sxy = torch.zeros(keys.numel(), dtype=torch.float64).index_add_(0, inv, xy_BM[ok])
        r_P, g_P = keys // F, keys % F
        f_P = r_P + f0
        sxy = sxy * scale_F[f_P]
        den = (var[f_P] * var[g_P]).sqrt()
        p = torch.where(den > 0, (N * sxy - S[f_P] * S[g_P]) / den.clamp(min=1e-300), 0.0).clamp(-1, 1)
        c = (sxy / (SS[f_P] * SS[g_P]).sqrt().clamp(min=1e-300)).clamp(-1, 1)
        # within each f: descending correlation, then ascending g (stable; rows keep to (4r - 2, 4r])
        order = torch.sort(r_P.double() * 4 - (p + 1), stable=True).indices
        r_P, g_P, p, c = r_P[order], g_P[order], p[order], c[order]
        first = torch.zeros(f1 - f0 + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(r_P, minlength=f1 - f0), 0, out=first[1:])
        rank = torch.arange(r_P.numel()) - first[r_P]
        top = (rank < n) & (p > 0)
        r_P, g_P, p, c, rank = r_P[top], g_P[top], p[top], c[top], rank[top]
        ids[r_P + f0, rank], pear[r_P + f0, rank], cos[r_P + f0, rank] = g_P, p.float(), c.float()
    return Correlations(ids, pear, cos)


# ----------------------------------------------------------------------------------------------
class LogitEffects(NamedTuple):
    top_ids_Fn: Tensor
    top_vals_Fn: Tensor
    bottom_ids_Fn: Tensor
    bottom_vals_Fn: Tensor
    method: str  # how the direction was mapped through the final layer norm (stored in the store)


def final_norm_transform(model) -> tuple[callable, str]:
    """The linear part of the model's final normalisation, applied to a direction.

    A final LayerNorm maps a residual x to w * (x - mean(x)) / sigma(x) + b. For the effect of a
    single decoder direction d we apply what is linear and the same for every input: the centring
    (for LN / LNPre) and the elementwise weight w (when not already folded into W_U). We do not
    divide by sigma: it depends on the whole residual stream, not on d, and is a positive scale
    shared by every vocabulary entry, so it changes no ranking of promoted/suppressed tokens. The
    bias adds the same vector for every latent and is left out. Later layers are not run: this is
    the direct path only (exact for a direction added at the last residual, approximate earlier)."""
    kind = str(getattr(getattr(model, "cfg", None), "normalization_type", None))
    ln = getattr(model, "ln_final", None)
    w = getattr(ln, "w", None) if ln is not None else None
    center = kind in ("LN", "LNPre")
    scale = isinstance(w, Tensor) and kind in ("LN", "RMS")
    parts = []
    if center:
        parts.append("centred (LayerNorm mean removal)")
    if scale:
        parts.append("times ln_final.w")
    if kind in ("LNPre", "RMSPre"):
        parts.append("ln_final weights already folded into W_U")
    method = (
        f"direct path: W_dec[f] {', '.join(parts) + ', ' if parts else ''}then @ W_U; final norm type {kind}; "
        f"the 1/sigma scale of the norm (a positive factor that depends on the whole residual) is not applied"
    )

    def transform(d_bD: Tensor) -> Tensor:
        if center:
            d_bD = d_bD - d_bD.mean(dim=1, keepdim=True)
        if scale:
            d_bD = d_bD * w.detach().to(d_bD)
        return d_bD

    return transform, method


def logit_effects(W_dec_FD: Tensor, model, n: int) -> LogitEffects:
    """Top n promoted and suppressed tokens of each latent's decoder direction through W_U."""
    W_U = model.W_U.detach().float()  # [D, V]
    W = W_dec_FD.detach().float().to(W_U.device)
    F, D = W.shape
    if W_U.shape[0] != D:
        raise ValueError(f"the SAE writes width {D} but the model's unembedding reads {W_U.shape[0]}")
    transform, method = final_norm_transform(model)
    V = W_U.shape[1]
    n = min(n, V)
    out = [torch.empty(F, n, dtype=t) for t in (torch.int64, torch.float32, torch.int64, torch.float32)]
    b = _block_rows(V)
    for f0 in range(0, F, b):
        f1 = min(F, f0 + b)
        eff = transform(W[f0:f1]) @ W_U
        tv, ti = eff.topk(n, dim=1)
        bv, bi = eff.topk(n, dim=1, largest=False)
        for o, t in zip(out, (ti, tv, bi, bv)):
            o[f0:f1] = t.cpu()
    return LogitEffects(*out, method)


# ----------------------------------------------------------------------------------------------
class Links(NamedTuple):
    level_F: Tensor  # int64
    parent_F: Tensor  # int64, -1: none
    parent_coact_F: Tensor  # P(parent fires | latent fires) in the latent's sample, NaN when unsampled
    parent_cos_F: Tensor  # decoder cosine with the parent, NaN when no parent
    method_F: list[str | None]  # "coact" | "decoder" | None


def matryoshka_links(
    widths: list[int],
    W_dec_FD: Tensor,
    sample: CoactSample,
    min_coact: float,
    min_cos: float,
    min_sample: int = 1,
    freq_F: Tensor | None = None,
    min_lift: float = 2.0,
) -> Links:
    """Each latent's level, and a parent among the latents of the lower levels.

    Candidates for the parent of latent f (level > 0) are the lower-level latents g that fire on
    at least `min_coact` of f's firings, P(g | f) (estimated from f's sample of firing events,
    which needs at least `min_sample` events): a child feature implies its parent. A generic
    latent that fires on most tokens would pass that test for everyone, so g must also be
    specific: lift P(g | f) / freq(g) >= `min_lift` (when `freq_F` is given). Among candidates
    the most specific (highest lift; ties: the closer decoder) is the parent. Without a
    candidate, the lower-level latent with the most similar decoder direction is the parent when
    that cosine is at least `min_cos`; otherwise there is none. Children are the latents that
    name f as their parent."""
    F = W_dec_FD.shape[0]
    bounds = torch.tensor(widths, dtype=torch.int64)
    level = torch.bucketize(torch.arange(F), bounds, right=True)
    parent = torch.full((F,), -1, dtype=torch.int64)
    p_coact = torch.full((F,), float("nan"))
    p_cos = torch.full((F,), float("nan"))
    method: list[str | None] = [None] * F
    W = W_dec_FD.detach().float()
    Wn = W / W.norm(dim=1, keepdim=True).clamp(min=1e-12)
    for lev in range(1, len(widths)):
        lo, hi, lower = widths[lev - 1], widths[lev], widths[lev - 1]  # latents [0, lower) are the lower levels
        b = _block_rows(lower)
        for f0 in range(lo, hi, b):
            f1 = min(hi, f0 + b)
            cos = Wn[f0:f1] @ Wn[:lower].T  # [f1 - f0, lower]
            frac = coact_counts(sample, f0, f1, cols=lower).double() / sample.n_sample_F[f0:f1, None].double().clamp(min=1)
            ok, ok2, chosen = _choose_parents(
                cos, frac, sample.n_sample_F[f0:f1], None if freq_F is None else freq_F[:lower],
                min_coact=min_coact, min_cos=min_cos, min_sample=min_sample, min_lift=min_lift)
            for i in ok.nonzero(as_tuple=True)[0].tolist():
                method[f0 + i] = "coact"
            for i in ok2.nonzero(as_tuple=True)[0].tolist():
                method[f0 + i] = "decoder"
            has = chosen >= 0
            rows = has.nonzero(as_tuple=True)[0]
            parent[f0:f1] = chosen
            p_coact[f0 + rows] = frac[rows, chosen[rows]].float()
            p_coact[f0 + rows[sample.n_sample_F[f0 + rows] == 0]] = float("nan")
            p_cos[f0 + rows] = cos[rows, chosen[rows]]
    return Links(level, parent, p_coact, p_cos, method)


def _choose_parents(cos: Tensor, frac: Tensor, n_sample: Tensor, freq_lower: Tensor | None, *, min_coact: float,
                    min_cos: float, min_sample: int, min_lift: float) -> tuple[Tensor, Tensor, Tensor]:
    """For a block of latents against the lower levels (decoder cosines and co-activation fractions,
    [block, lower]): (chosen by co-activation, chosen by decoder, the parent or -1), as in
    matryoshka_links."""
    best_cos, best_cos_id = cos.max(dim=1)
    if freq_lower is not None:
        lift = frac / freq_lower.double().clamp(min=1e-12)[None, :]
        eligible = (frac >= min_coact) & (lift >= min_lift)
    else:
        lift = frac
        eligible = frac >= min_coact
    score = torch.where(eligible, lift + 1e-9 * cos.double(), float("-inf"))  # ties: the closer decoder
    best, bi = score.max(dim=1)
    enough = n_sample >= min_sample
    ok = (best > float("-inf")) & enough
    chosen = torch.where(ok, bi, -1)
    ok2 = (~ok) & (best_cos >= min_cos)
    chosen = torch.where(ok2, best_cos_id, chosen)
    return ok, ok2, chosen
