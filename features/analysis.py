"""Weight- and count-based relations between latents: decoder-cosine neighbours, co-activation
neighbours, correlations of activations, logit effects through the unembedding, and Matryoshka
parent/child links.

Shape key: F d_sae, D d_in, V vocab, Q sampled events per latent, K latents per event, n neighbours
kept, b block rows.

Everything works in row blocks so that no [F, F] (or [F, V]) matrix is ever built.
"""

from __future__ import annotations

import math
import re
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


def _block_pairs(lat_BM: Tensor, f0: int, F: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The distinct pairs (f0 + r, g) of a block of latents' samples `lat_BM` (row r: latent f0 + r;
    -1 padding and f itself left out), sorted by (r, g): (r_P, g_P, the kept slots [B, M], each kept
    slot's pair, each pair's number of slots). Keys r * F + g are computed in lat_BM's dtype."""
    row_BM = torch.arange(lat_BM.shape[0], dtype=lat_BM.dtype).unsqueeze(1).expand_as(lat_BM)
    ok = (lat_BM >= 0) & (lat_BM != row_BM + f0)
    keys, inv, count = torch.unique(row_BM[ok] * F + lat_BM[ok], return_inverse=True, return_counts=True)
    return (keys // F).long(), (keys % F).long(), ok, inv, count


def _top_n_per_row(r_P: Tensor, score_P: Tensor, n: int, rows: int) -> tuple[Tensor, Tensor]:
    """Of pairs sorted by (row, g) with scores in [-1, 1], the n of each row with the largest
    positive score, ties to the lower g: (their indices into the pairs, their ranks in the row). One
    stable sort of 4r - (score + 1): each row keeps to its own interval (4r - 2, 4r]."""
    order = torch.sort(r_P.double() * 4 - (score_P.double() + 1), stable=True).indices
    r = r_P[order]
    first = torch.zeros(rows + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(r, minlength=rows), 0, out=first[1:])
    rank = torch.arange(r.numel()) - first[r]
    top = (rank < n) & (score_P[order] > 0)
    return order[top], rank[top]


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
        r_P, g_P, _, _, c = _block_pairs(sample.lat_FQK[f0:f1].reshape(f1 - f0, -1).to(torch.int32), f0, F)
        if r_P.numel() == 0:
            continue
        f_P = r_P + f0
        jac = _jaccard(c.float(), sample.n_sample_F[f_P], nf[f_P], nf[g_P])
        sel, rank = _top_n_per_row(r_P, jac, n, f1 - f0)
        f_P = f_P[sel]
        ids[f_P, rank], sc[f_P, rank], cnt[f_P, rank] = g_P[sel], jac[sel], c[sel].long()
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
    b = max(1, min(_BLOCK_ELEMS // 16 // max(QK, 1), (2**31 - 1) // max(F, 1)))  # block keys fit in int32 (faster sorts)
    for f0 in range(0, F, b):
        f1 = min(F, f0 + b)
        r_P, g_P, ok, inv, _ = _block_pairs(sample.lat_FQK[f0:f1].reshape(f1 - f0, -1).to(torch.int32), f0, F)
        if r_P.numel() == 0:
            continue
        xy_BM = (self_FQ[f0:f1, :, None].double() * val_FQK[f0:f1].double()).reshape(f1 - f0, -1)
        f_P = r_P + f0
        sxy = torch.zeros(r_P.numel(), dtype=torch.float64).index_add_(0, inv, xy_BM[ok]) * scale_F[f_P]
        p, c = _pearson_cossim(sxy, S[f_P], S[g_P], SS[f_P], SS[g_P], var[f_P], var[g_P], N)
        sel, rank = _top_n_per_row(r_P, p, n, f1 - f0)
        f_P = f_P[sel]
        ids[f_P, rank], pear[f_P, rank], cos[f_P, rank] = g_P[sel], p[sel].float(), c[sel].float()
    return Correlations(ids, pear, cos)


def _pearson_cossim(sxy, s_f, s_g, ss_f, ss_g, var_f, var_g, N: float) -> tuple[Tensor, Tensor]:
    """Pearson correlation and cosine similarity of two activation vectors over N tokens from their
    sums s, sums of squares ss, N^2 times their variances var, and their cross sum sxy (float64)."""
    den = (var_f * var_g).sqrt()
    p = torch.where(den > 0, (N * sxy - s_f * s_g) / den.clamp(min=1e-300), 0.0).clamp(-1, 1)
    c = (sxy / (ss_f * ss_g).sqrt().clamp(min=1e-300)).clamp(-1, 1)
    return p, c


def activation_correlations_dense(sample: CoactSample, val_FQK: Tensor, self_FQ: Tensor, sum_F: Tensor,
                                  sumsq_F: Tensor, n_rows: int, n: int) -> Correlations:
    """The eager reference of `activation_correlations`: the same estimate, an [F, F] cross-sum table
    filled event by event from each latent's sample, every pair seen scored, ranked per latent in
    Python (tests only: O(F^2) memory)."""
    F = sample.n_fires_F.numel()
    N = float(n_rows)
    S, SS = sum_F.double(), sumsq_F.double()
    var = (N * SS - S * S).clamp(min=0)
    cross = torch.zeros(F, F, dtype=torch.float64)
    seen = torch.zeros(F, F, dtype=torch.bool)
    for f in range(F):
        for q in range(int(sample.n_sample_F[f])):
            for g, v in zip(sample.lat_FQK[f, q].tolist(), val_FQK[f, q].tolist()):
                if g >= 0 and g != f:
                    cross[f, g] += float(self_FQ[f, q]) * v
                    seen[f, g] = True
        cross[f] *= float(sample.n_fires_F[f]) / max(int(sample.n_sample_F[f]), 1)
    p, c = _pearson_cossim(cross, S[:, None], S[None, :], SS[:, None], SS[None, :], var[:, None], var[None, :], N)
    ids = torch.full((F, n), -1, dtype=torch.int64)
    pear, cos = torch.zeros(F, n), torch.zeros(F, n)
    for f in range(F):
        ranked = sorted((g for g in range(F) if seen[f, g] and p[f, g] > 0), key=lambda g: (-float(p[f, g]), g))[:n]
        for j, g in enumerate(ranked):
            ids[f, j], pear[f, j], cos[f, j] = g, float(p[f, g]), float(c[f, g])
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

    A final LayerNorm maps a residual x to g * (x - mean(x)) / sigma(x) + b. For the effect of a
    single decoder direction d we apply what is linear and the same for every input: the centring
    (for LN / LNPre) and the elementwise gain g (when not already folded into W_U). We do not
    divide by sigma: it depends on the whole residual stream, not on d, and is a positive scale
    shared by every vocabulary entry, so it changes no ranking of promoted/suppressed tokens. The
    bias adds the same vector for every latent and is left out. Later layers are not run: this is
    the direct path only (exact for a direction added at the last residual, approximate earlier).
    The gain is read off the norm as it runs (`_norm_gain`), not off its stored weight: Gemma's
    RMSNorm stores an offset w and multiplies by 1 + w."""
    kind = str(getattr(getattr(model, "cfg", None), "normalization_type", None))
    ln = getattr(model, "ln_final", None)
    center = kind in ("LN", "LNPre")
    gain, gain_is = (_norm_gain(ln, center) if kind in ("LN", "RMS") and isinstance(getattr(ln, "w", None), Tensor)
                     else (None, ""))
    parts = []
    if center:
        parts.append("centred (LayerNorm mean removal)")
    if gain is not None:
        parts.append(f"times {gain_is}")
    if kind in ("LNPre", "RMSPre"):
        parts.append("ln_final weights already folded into W_U")
    method = (
        f"direct path: W_dec[f] {', '.join(parts) + ', ' if parts else ''}then @ W_U; final norm type {kind}; "
        f"the 1/sigma scale of the norm (a positive factor that depends on the whole residual) is not applied"
    )

    def transform(d_bD: Tensor) -> Tensor:
        if center:
            d_bD = d_bD - d_bD.mean(dim=1, keepdim=True)
        if gain is not None:
            d_bD = d_bD * gain.to(d_bD)
        return d_bD

    return transform, method


@torch.no_grad()
def _norm_gain(ln, center: bool) -> tuple[Tensor, str]:
    """The elementwise gain `ln` applies and what it is, from two runs of it: on a probe x of entries +-1000 (large:
    the norm's epsilon is lost beside its variance) and on -x. Their difference is 2 g (x - m) / s, the
    bias cancelling; m and s are x's mean (LayerNorm; 0 for RMSNorm) and its scale, known here."""
    w = ln.w.detach()
    D = w.shape[-1]
    x = 1000.0 * (1 - 2 * (torch.arange(D, device=w.device) % 2)).float()
    xc = x - x.mean() if center else x
    s = xc.pow(2).mean().sqrt()
    probe = x.view(1, 1, D).to(w.dtype)  # a bf16 LayerNorm refuses float32 input; +-1000 is exact in bf16
    gain = (ln(probe) - ln(-probe)).reshape(D).float() * s / (2 * xc)
    # the probe is only at the norm's precision (a bf16 Gemma's 1 + w comes out 1% off, reordering near
    # ties): where it measured one of the forms norms store their gain in, that form, exact
    forms = {"ln_final.w": w.float(), "ln_final's gain 1 + w (w = ln_final.w: Gemma's offset RMSNorm)": 1 + w.float()}
    for name, stored in forms.items():
        if torch.allclose(gain, stored, rtol=1e-2, atol=1e-2):
            return stored, name
    return gain, "ln_final's gain, measured by running it"


# hook points of the residual stream's width that are not in it (a direction there is no residual
# direction): query/key/value per head, MLP neurons (d_mlp may equal d_model)
_NOT_RESIDUAL = re.compile(r"\.attn\.hook_[qkv]$|\.hook_(pre|post|pre_linear)$")
_ATTN_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")


def residual_directions(W_dec_FD: Tensor, model, hook_name: str | None) -> tuple[Tensor, str] | None:
    """Each latent's decoder direction as it reaches the residual stream, with how it was mapped:
    at `blocks.L.attn.hook_z` (heads flattened) through that layer's W_O, as the attention output
    does; at a hook of the residual stream (resid, attn_out, mlp_out, ...) as it is; None where the
    hook is no residual direction (hook_q/k/v, MLP neurons) or the width is not the model's."""
    d_model = model.W_U.shape[0]
    z = _ATTN_Z.match(hook_name or "")
    if z is not None:
        W_O = model.blocks[int(z.group(1))].attn.W_O.detach().float()  # [H, d_head, D]
        H, d_head, _ = W_O.shape
        if W_dec_FD.shape[1] != H * d_head:
            return None
        W = torch.einsum("fhd,hdD->fD", W_dec_FD.detach().float().to(W_O.device).view(-1, H, d_head), W_O)
        return W, f"through W_O of layer {z.group(1)} (a hook_z direction, heads flattened), "
    if (hook_name and _NOT_RESIDUAL.search(hook_name)) or W_dec_FD.shape[1] != d_model:
        return None
    return W_dec_FD, ""


def logit_effects(W_dec_FD: Tensor, model, n: int) -> LogitEffects:
    """Top n promoted and suppressed tokens of each latent's decoder direction through W_U.

    W_U is read a slice of the vocabulary at a time, each slice cast to float32 on its own (a bf16
    Gemma unembedding, 256k x 2304, is 2.4 GB more as one float32 copy), and each slice's top n
    merged into the running top n: the rankings of the whole [latents, vocab] product, never made."""
    W_U = model.W_U.detach()  # [D, V], in the model's dtype
    W = W_dec_FD.detach().float().to(W_U.device)
    F, D = W.shape
    if W_U.shape[0] != D:
        raise ValueError(f"the SAE writes width {D} but the model's unembedding reads {W_U.shape[0]}")
    transform, method = final_norm_transform(model)
    W = transform(W)
    V = W_U.shape[1]
    n = min(n, V)
    top = _RunningTopk(F, n, W.device, largest=True)
    bottom = _RunningTopk(F, n, W.device, largest=False)
    cols = max(n, _block_rows(D))  # vocabulary entries per float32 slice of W_U
    for v0 in range(0, V, cols):
        W_U_Dc = W_U[:, v0:v0 + cols].float()
        b = _block_rows(W_U_Dc.shape[1])
        for f0 in range(0, F, b):
            eff = W[f0:f0 + b] @ W_U_Dc
            top.add(f0, v0, eff)
            bottom.add(f0, v0, eff)
    return LogitEffects(*top.result(), *bottom.result(), method)


class _RunningTopk:
    """The n largest (or smallest) values of each row of a [rows, cols] matrix seen a block of rows and
    columns at a time, with their column ids."""

    def __init__(self, rows: int, n: int, device, *, largest: bool) -> None:
        self.n, self.largest = n, largest
        self.vals = torch.full((rows, n), -math.inf if largest else math.inf, device=device)
        self.ids = torch.full((rows, n), -1, dtype=torch.int64, device=device)

    def add(self, r0: int, c0: int, block_bc: Tensor) -> None:
        r1 = r0 + block_bc.shape[0]
        v, i = block_bc.topk(min(self.n, block_bc.shape[1]), dim=1, largest=self.largest)
        vals = torch.cat([self.vals[r0:r1], v], dim=1)
        ids = torch.cat([self.ids[r0:r1], i + c0], dim=1)
        keep_v, at = vals.topk(self.n, dim=1, largest=self.largest)
        self.vals[r0:r1], self.ids[r0:r1] = keep_v, ids.gather(1, at)

    def result(self) -> tuple[Tensor, Tensor]:
        return self.ids.cpu(), self.vals.cpu()


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
