"""The rounding a matrix product really has, under torch's current precision settings.

    eps = matmul_eps(W.dtype, W.device)     # bounds on x @ W use this, not finfo(W.dtype).eps

A float32 matmul is not always float32. On CUDA, torch may round its inputs to TF32 (10-bit
mantissa, the spacing of float16) when allowed (`torch.backends.cuda.matmul.allow_tf32 = True`,
`torch.set_float32_matmul_precision("high")` or "medium", `torch.backends.cuda.matmul.fp32_precision
= "tf32"`); torch >= 2.9 reports what CUDA does in `torch.backends.cuda.matmul.fp32_precision`
(older versions: "medium" may mean bfloat16). On the CPU, oneDNN never uses TF32 but may round to
bfloat16 ("medium", `torch.backends.mkldnn.matmul.fp32_precision = "bf16"`, on hardware that has
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

# fp32_precision values (torch >= 2.9) and float32_matmul_precision names -> the rounding they allow on CUDA
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


def _backend_precision(backend) -> str | None:
    """The backend's own fp32_precision (torch >= 2.9, kept in step with the legacy API), "none"
    resolved to the global torch.backends.fp32_precision, whose "none" is float32 ("ieee"); None
    where torch has none or it cannot be read."""
    own = _read(lambda: getattr(backend, "fp32_precision", None)) if backend is not None else None
    if own is None:
        return None
    if own == "none":
        own = _read(lambda: getattr(torch.backends, "fp32_precision", "none"))
    return None if own is None else "ieee" if own == "none" else own


def _settings(device_type: str) -> list[str]:
    """The precision settings (names of _ROUNDING) that apply to float32 matmuls on `device_type`;
    the coarsest one is assumed."""
    legacy = _read(torch.get_float32_matmul_precision)
    if device_type == "cuda":
        backend = torch.backends.cuda.matmul
        own = _backend_precision(backend)
        if own is not None:  # what CUDA does: "medium" is TF32 there, not bfloat16
            return [own]
        return [s for s in (legacy, "tf32" if _read(lambda: getattr(backend, "allow_tf32", False)) else None)
                if s is not None] or ["medium"]  # nothing readable: the coarsest
    if device_type == "cpu":
        # oneDNN rounds to bfloat16 only ("medium" / "bf16"); it has no TF32, so "high" and
        # CUDA's allow_tf32 (which reads back as "high") change nothing here
        own = _backend_precision(getattr(getattr(torch.backends, "mkldnn", None), "matmul", None))
        bf16 = own == "bf16" if own is not None else legacy in ("medium", None)
        return ["bf16" if bf16 else "ieee"]
    return [legacy] if legacy is not None else ["medium"]


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
