"""Counter-based random numbers: a uniform value in (0, 1) that is a pure function of
(seed, a, b), computed with vectorised int64 torch ops.

The build pass draws its reservoir decisions from these instead of a stateful generator, so the
sampled examples depend only on the seed and the cache (not on batch size, nor on where a
killed build resumed). All arithmetic stays exact inside int64: values are 32-bit, and a
32x32-bit product is taken modulo 2^32 from two 16-bit halves, so nothing overflows.
"""

from __future__ import annotations

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32) and a 32-bit constant c, without overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer (the 'lowbias32' constants), on int64 tensors holding 32-bit values."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def uniform(seed: int, a: Tensor, b: Tensor | int = 0) -> Tensor:
    """Uniform float64 values in (0, 1) (53 random bits), one per element of `a` (broadcast with b).

    `a` and `b` are int64 tensors of non-negative values below 2^62 (row ids, latent ids)."""
    a = a.to(torch.int64)
    b = torch.as_tensor(b, dtype=torch.int64, device=a.device)
    s = int(seed) & _M32
    h = hash32(hash32(a & _M32) ^ s)
    h = hash32(h ^ (a >> 32))
    h = hash32(h ^ (b & _M32))
    h = hash32(h ^ (b >> 32))
    h2 = hash32(h ^ 0x5BD1E995)
    return (((h << 21) + (h2 >> 11)).to(torch.float64) + 0.5) * (2.0**-53)
