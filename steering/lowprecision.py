"""How far a bf16 / fp16 TopK SAE's own pre-activations can be from ours: thresholds that decide a
latent's selection exactly without the SAE's own encode (`steering.topk_read`, relative mode).

In float32 the TopK read bounds the rounding of a product by its worst case, (D + 4) eps ||x||
||w||: far below the pre-activations' spread. In bf16 (eps 2^-7) that bound exceeds every
pre-activation, so nothing could be decided and every row went to the SAE's own encode of the
row alone. But the products of bf16 / fp16 matrices on CPU (oneDNN, or torch's own kernels) are
accumulated in float32 (the products of two bf16 / fp16 values are exact there) and rounded to
the dtype once (`rounds_once_in_float32`; on CUDA only with cuBLAS's reduced-precision
reductions switched off, elsewhere not assumed). Then both the SAE's own pre-activation
P = fl(fl(v @ w) + b), v = fl(x - b_dec), and ours q, the same expression over another batch
(the same v bit for bit: an elementwise op), are within a few roundings of the exact value:

    |P - q| <= a |q| + c_r,   a = 4.25 u,   c_r = 2.1 u max|b| + 2.1 gamma (||v_r|| max||w|| + max|b|) + 4 tiny

(u = eps / 2 of the dtype, gamma = (D + 2) float32 eps, the accumulation's worst case; per row r;
from |P - E| <= u (2 + u) |E| + u (1 + u) |b| + (1 + u)^2 gamma S, E the exact value,
S = sum |v_i w_i| <= ||v|| ||w||, for P and q alike, with |E| written through |q|). Since
q -> q -+ a |q| is increasing, "P_c > P_m" is proven by q_c above one threshold per (row,
latent m), and "P_c >= P_m is possible" by q_c at or above another: counts against them decide
as the float32 read's do. Thresholds are computed in float64 and rounded to float32 away from
the side they prove (a comparison of bf16 / fp16 values with float32 ones is exact). A latent
whose q is beyond a quarter of the dtype's range (fp16 overflows at 65504) or not finite, or a
row whose c_r is beyond a 32nd of it, proves nothing: such rows go to the SAE's own encode.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

LOW_PRECISION = (torch.bfloat16, torch.float16)


def sae_precision(x: Tensor) -> contextlib.AbstractContextManager:
    """Where a steering hook computes its edit: autocast off on x's device, so the reads and the
    delta run in the SAE's own dtype (the exact reads' tolerances are for that dtype's products,
    and the eager reference is the SAE's own encode at it). Under the caller's autocast its
    products would round to the autocast dtype instead, and torch.cat of fp16 tensors fails
    under CPU autocast. A no-op context when autocast is off (the usual case)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def rounds_once_in_float32(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a matrix product of `dtype` tensors on `device` accumulates in float32 and rounds to
    `dtype` once (the premise of `RelativeTolerance`). CPU: yes (torch's and oneDNN's kernels for
    bf16 / fp16); CUDA: only while cuBLAS may not reduce in reduced precision
    (torch.backends.cuda.matmul.allow_bf16/fp16_reduced_precision_reduction, on by default; fp16 also
    not while allow_fp16_accumulation sums in fp16);
    anything else: not assumed."""
    if dtype not in LOW_PRECISION:
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        m = torch.backends.cuda.matmul
        reduced = (m.allow_bf16_reduced_precision_reduction if dtype == torch.bfloat16
                   else m.allow_fp16_reduced_precision_reduction or getattr(m, "allow_fp16_accumulation", False))
        return not reduced
    return False


class RelativeTolerance:
    """Thresholds on our pre-activations q that decide the SAE's own P (see the module docstring),
    for encoder weights W_DF [D, F] and bias b_F in a low-precision dtype."""

    def __init__(self, W_DF: Tensor, b_F: Tensor) -> None:
        lo = W_DF.dtype
        u = torch.finfo(lo).eps / 2
        gamma = (W_DF.shape[0] + 2) * torch.finfo(torch.float32).eps
        w_max = float(torch.linalg.vector_norm(W_DF.double(), dim=0).max()) if W_DF.shape[1] else 0.0
        b_max = float(b_F.double().abs().max()) if b_F.numel() else 0.0
        self.a = 4.25 * u
        self.c_const = 2.1 * u * b_max + 2.1 * gamma * b_max + 4.0 * torch.finfo(lo).tiny
        self.c_per_norm = 2.1 * gamma * w_max * (1.0 + 1e-6)  # the norm's own float64 rounding
        self.big = torch.finfo(lo).max / 4  # beyond it a rounding may overflow: nothing is proven

    def row_const(self, v_ND: Tensor) -> Tensor:
        """c_r [N, 1] (float64) for the rows v (the SAE's input less b_dec, as the SAE computes it)."""
        norm = torch.linalg.vector_norm(v_ND, dim=-1, keepdim=True, dtype=torch.float64)
        return norm.mul_(self.c_per_norm).add_(self.c_const)

    def above(self, q: Tensor, c: Tensor) -> Tensor:
        """A threshold t (float32, q's shape) such that q_c > t proves P_c > P_m, q = q_m."""
        q = q.double()
        g = q + self.a * q.abs() + 2.0 * c  # q_c - a |q_c| > g proves it
        t = torch.where(g >= 0, g / (1.0 - self.a), g / (1.0 + self.a))
        return _round_up(t.masked_fill_(~self._in_range(q, c), float("inf")))

    def maybe(self, q: Tensor, c: Tensor) -> Tensor:
        """A threshold t (float32) such that q_c < t proves P_c < P_m: q_c >= t where P_c >= P_m is possible."""
        q = q.double()
        h = q - self.a * q.abs() - 2.0 * c  # q_c + a |q_c| < h proves it
        t = torch.where(h >= 0, h / (1.0 + self.a), h / (1.0 - self.a))
        return _round_down(t.masked_fill_(~self._in_range(q, c), float("-inf")))

    def positive(self, q: Tensor, c: Tensor) -> Tensor:
        """Where P > 0 is proven (bool)."""
        q = q.double()
        return (q > c / (1.0 - self.a)) & self._in_range(q, c)

    def negative(self, q: Tensor, c: Tensor) -> Tensor:
        """Where P < 0 is proven (bool)."""
        q = q.double()
        return (q < -c / (1.0 - self.a)) & self._in_range(q, c)

    def _in_range(self, q: Tensor, c: Tensor) -> Tensor:
        """Where q and c are small enough for the bound (no overflow near them; False for NaN, inf)."""
        return (q.abs() <= self.big) & (c <= self.big / 8)


def _round_up(t: Tensor) -> Tensor:
    """float64 -> float32, at least t (NaN stays NaN: no comparison holds)."""
    f = t.float()
    return torch.where(f.double() < t, torch.nextafter(f, torch.full_like(f, float("inf"))), f)


def _round_down(t: Tensor) -> Tensor:
    f = t.float()
    return torch.where(f.double() > t, torch.nextafter(f, torch.full_like(f, float("-inf"))), f)
