"""Statistics of the held-out sample that initialise a run: activation scale and b_dec.

Shape key: B rows, D d_in.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from saes.sparse import SparseActs
from training.collectives import Collectives


@torch.no_grad()
def estimate_activation_scale(sample_BD: Tensor, coll: Collectives | None = None) -> float:
    """The factor s with E||s x|| = sqrt(d_in) (SAELens's `expected_average_only_in`).

    Training reads `s * x`; `fold_activation_scale_(s)` makes the saved SAE read raw `x`."""
    coll = coll or Collectives()
    stats = torch.stack([sample_BD.double().norm(dim=1).sum(), sample_BD.new_tensor(sample_BD.shape[0], dtype=torch.float64)])
    coll.sum_(stats)
    mean_norm = float(stats[0] / stats[1])
    if not (mean_norm > 0 and math.isfinite(mean_norm)):
        raise ValueError(
            f"the held-out activations have mean norm {mean_norm}; the data is all zeros or non-finite - check the cache"
        )
    return math.sqrt(sample_BD.shape[1]) / mean_norm


@torch.no_grad()
def geometric_median(x_BD: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """The point minimising the sum of Euclidean distances to the rows (Weiszfeld's algorithm), [D]."""
    x = x_BD.double()
    y = x.mean(0)
    for _ in range(iters):
        dist_B = (x - y).norm(dim=1).clamp_min(1e-12)
        w_B = 1.0 / dist_B
        y_new = (w_B[:, None] * x).sum(0) / w_B.sum()
        moved = float((y_new - y).norm())
        y = y_new
        if moved <= tol * max(1.0, float(y.norm())):
            break
    return y.to(x_BD.dtype)


@torch.no_grad()
def initial_b_dec(sample_BD: Tensor, method: str, coll: Collectives | None = None) -> Tensor:
    """b_dec from the (already scaled) sample: geometric_median, mean or zeros, [D].

    With several ranks the value of rank 0 is used everywhere (every rank starts equal)."""
    coll = coll or Collectives()
    if method == "geometric_median":
        b = geometric_median(sample_BD)
    elif method == "mean":
        b = sample_BD.mean(0)
    elif method == "zeros":
        b = sample_BD.new_zeros(sample_BD.shape[1])
    else:
        raise ValueError(f"b_dec_init must be geometric_median, mean or zeros; got {method!r}")
    return coll.broadcast_(b.contiguous())


@torch.no_grad()
def least_squares_encoder_scale(W_enc_DF: Tensor, b_enc_F: Tensor, W_dec_FD: Tensor, b_dec_D: Tensor,
                                sample_BD: Tensor, k: int | None, chunk_rows: int = 1024,
                                target_BO: Tensor | None = None,
                                select: Callable[[Tensor], SparseActs] | None = None) -> float:
    """The factor c for W_enc, b_enc that makes the initial top-k reconstruction the least-squares
    fit of the (already scaled) sample: c = <x - b_dec, R> / <R, R>, R the reconstruction minus b_dec.
    k=None (an SAE without k, e.g. JumpReLU): R comes from `select` (the SAE's own selection at c = 1;
    exact too when the thresholds are scaled with the encoder, as `SAE.scale_encoder_` does).

    With W_enc = W_dec^T at unit norm and inputs at E||x|| = sqrt(d_in), the first reconstructions
    overshoot (held-out EV below zero on the toy world), and Adam spends its first steps shrinking
    the encoder; scaling by c starts from the best fit of the initial directions instead. The
    top-k rows do not depend on c > 0 (b_enc is zero at initialisation), so one pass suffices.

    A transcoder (`target_BO`, scaled like the sample): the encoder reads the sample uncentred and
    the fit is to the target minus b_dec."""
    ry, rr = 0.0, 0.0
    inputs = sample_BD - b_dec_D if target_BO is None else sample_BD
    goals = sample_BD - b_dec_D if target_BO is None else target_BO - b_dec_D
    for x_BD, y_BD in zip(inputs.split(chunk_rows), goals.split(chunk_rows)):  # chunks: [B, F] of a wide SAE is large
        pre_BF = x_BD @ W_enc_DF + b_enc_F
        if k is None:
            if select is None:
                raise ValueError("least_squares_encoder_scale needs k or a selection")
            R_BD = select(pre_BF).to_dense() @ W_dec_FD
        else:
            vals_BK, idx_BK = pre_BF.topk(min(k, pre_BF.shape[1]), dim=1)
            R_BD = torch.zeros_like(pre_BF).scatter_(1, idx_BK, vals_BK.relu()) @ W_dec_FD
        ry += float((R_BD.double() * y_BD.double()).sum())
        rr += float(R_BD.double().pow(2).sum())
    c = ry / rr if rr > 0 else 1.0
    return c if math.isfinite(c) and c > 0 else 1.0


@torch.no_grad()
def largest_silent_pre_activation(sae, sample_BD: Tensor, chunk_rows: int = 1024) -> float | None:
    """None when some latent of `sae` fires on some row of the (already scaled) sample; else the
    largest pre-activation of the sample, which no threshold let through. An SAE whose selection
    lets nothing through at its start gets no gradient (JumpReLU's straight-through estimate only
    reaches pre-activations near a threshold): it would stay dead for the whole run."""
    largest = float("-inf")
    for x_BD in sample_BD.split(chunk_rows):  # chunks: [B, F] of a wide SAE is large
        pre_BF = sae.pre_activations(x_BD)
        if bool((sae.select(pre_BF).values_N != 0).any()):
            return None
        largest = max(largest, float(pre_BF.max()))
    return largest
