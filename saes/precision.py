"""The rounding a matrix product really has, under torch's current precision settings.

    eps = matmul_eps(W.dtype, W.device)     # bounds on x @ W use this, not finfo(W.dtype).eps

A float32 matmul is not always float32: on CUDA, torch may round its inputs to TF32 (10-bit
mantissa, the spacing of float16) when allowed (`torch.backends.cuda.matmul.allow_tf32 = True`,
`torch.set_float32_matmul_precision("high")`, `torch.backends.cuda.matmul.fp32_precision = "tf32"`),
or to bfloat16 ("medium"; oneDNN on the CPU follows "high" / "medium" too, on hardware that has
it). Error bounds that prove a result exact (`steering.topk_read`'s bound, the threshold reader's
near rows, the fast forward's check against TransformerLens) must use the rounding in force, or a
bound computed for float32 proves wrong things on a GPU whose user (or library) turned TF32 on.

Read where a bound is built: a setting changed afterwards is not seen by a bound built before.
Where a setting cannot be read, the coarser rounding is assumed: a looser bound costs speed, never
a wrong result.
"""

from __future__ import annotations

import torch

__all__ = ["matmul_rounding", "matmul_eps"]

# fp32_precision values (torch >= 2.9) and float32_matmul_precision names -> the rounding they allow
_ROUNDING = {"ieee": torch.float32, "highest": torch.float32, "tf32": torch.float16, "high": torch.float16,
             "bf16": torch.bfloat16, "medium": torch.bfloat16}
_COARSER = (torch.float32, torch.float16, torch.bfloat16)  # in order of growing spacing (eps)


def _read(get) -> str | None:
    """A setting, or None where torch refuses to say (it raises once the legacy and the new
    precision APIs were both used; the backend's own setting then says)."""
    try:
        return get()
    except RuntimeError:
        return None


def _settings(device_type: str) -> list[str]:
    """The precision settings that may apply to float32 matmuls on `device_type` (names of
    _ROUNDING): the legacy global one, CUDA's allow_tf32, and the backend's own fp32_precision
    (torch >= 2.9; "none" inherits torch.backends.fp32_precision). The coarsest one is assumed."""
    found = [_read(torch.get_float32_matmul_precision)]
    backend = None
    if device_type == "cuda":
        backend = torch.backends.cuda.matmul
        if _read(lambda: getattr(backend, "allow_tf32", False)):
            found.append("tf32")
    elif device_type == "cpu":
        backend = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    own = _read(lambda: getattr(backend, "fp32_precision", None)) if backend is not None else None
    found.append(own if own not in (None, "none") else getattr(torch.backends, "fp32_precision", None))
    return [s for s in found if s not in (None, "none")]


def matmul_rounding(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype whose rounding a product of `dtype` tensors on `device` has now: `dtype` itself,
    except float32 under TF32 (float16's mantissa) or bfloat16-internal precision."""
    if dtype != torch.float32:
        return dtype
    kind = torch.device(device).type
    roundings = [_ROUNDING.get(s, torch.bfloat16) for s in _settings(kind)]  # an unknown name: the coarsest
    return max(roundings, key=_COARSER.index, default=torch.float32)


def matmul_eps(dtype: torch.dtype, device: torch.device | str) -> float:
    """Machine epsilon of the products' inputs (`matmul_rounding`): what error bounds on x @ W use."""
    return float(torch.finfo(matmul_rounding(dtype, device)).eps)
