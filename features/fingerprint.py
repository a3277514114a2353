"""Identity of an SAE: a SHA-256 over its architecture, shape settings and parameter bytes."""

from __future__ import annotations

import hashlib
import json

import torch


def sae_fingerprint(sae) -> str:
    """Hex SHA-256 of (architecture, d_in, d_sae, k, widths, apply_b_dec_to_input) and every
    parameter/buffer tensor (name, dtype, shape, bytes). Any change to the weights changes it."""
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
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sae_description(sae, path: str | None = None) -> dict:
    """What the store records about the SAE it was built from (`path` made absolute, so the store
    finds its SAE from any working directory)."""
    cfg = sae.cfg
    md = dict(getattr(cfg, "metadata", {}) or {})
    return {
        "architecture": getattr(sae, "architecture", type(sae).__name__),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "k": getattr(cfg, "k", None),
        "matryoshka_widths": list(getattr(cfg, "matryoshka_widths", []) or []) or None,
        "hook_name": md.get("hook_name"),
        "model_name": md.get("model_name"),
        "path": _absolute(path),
    }


def _absolute(path: str | None) -> str | None:
    """An SAE spec made absolute where it is a path (a registry id such as sae_lens:RELEASE/SAE_ID stays)."""
    from pathlib import Path

    if not path:
        return None
    return path if str(path).startswith("sae_lens:") else str(Path(path).expanduser().resolve())
