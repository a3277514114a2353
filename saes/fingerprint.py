"""Identity of an SAE's weights: a SHA-256 over its architecture, shape settings and parameter bytes.

It lives in `saes` so that every package that pairs things with an SAE (feature stores, steering
presets) can check it; `features.fingerprint` re-exports it.
"""

from __future__ import annotations

import hashlib
import json

import torch


def sae_fingerprint(sae, dtype: torch.dtype | None = None) -> str:
    """Hex SHA-256 of (architecture, d_in, d_sae, k, widths, apply_b_dec_to_input) and every
    parameter/buffer tensor (name, dtype, shape, bytes). Any change to the weights changes it.
    `dtype`: the fingerprint the SAE would have cast to it (`sae.to(dtype)`), without casting it."""
    cfg = sae.cfg
    head = {
        "architecture": getattr(sae, "architecture", type(sae).__name__),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "k": getattr(cfg, "k", None),
        "matryoshka_widths": list(getattr(cfg, "matryoshka_widths", []) or []),
        "apply_b_dec_to_input": getattr(cfg, "apply_b_dec_to_input", None),
    }
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    tensors = dict(sae.named_parameters())
    tensors.update(dict(sae.named_buffers()))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu")
        t = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def dtype_of_fingerprint(sae, fingerprint: str) -> torch.dtype | None:
    """The other float dtype in which `sae`'s weights have `fingerprint`, where one does: the same SAE held
    in another precision (a bfloat16 folder that SAELens's `from_pretrained` loads as float32). Casts only
    while hashing; None when no dtype gives it (another SAE)."""
    return next((d for d in FLOAT_DTYPES if d != sae.dtype and sae_fingerprint(sae, d) == fingerprint), None)
