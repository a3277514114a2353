"""Identity of an SAE: its weights' SHA-256 (`saes.fingerprint`) and what a store records about it."""

from __future__ import annotations

from saes.fingerprint import sae_fingerprint

__all__ = ["sae_fingerprint", "sae_description"]


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
    """An SAE spec made absolute where it is a path (a registry id such as sae_lens:RELEASE/SAE_ID stays).
    Symlinks are kept: an HF-cache snapshot's params.npz links to a nameless blob, which no reader
    recognises and which has lost the repo and folder naming the SAE's hook."""
    import os

    if not path:
        return None
    return path if str(path).startswith("sae_lens:") else os.path.abspath(os.path.expanduser(path))
