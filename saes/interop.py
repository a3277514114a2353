"""Bridges to the sae-lens package: pretrained SAEs from its registry, and conversions.

sae_lens is imported inside the functions: importing `saes` stays light and offline.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import torch

from saes.base import SAE
from saes.io import sae_from_sae_lens_dict, save_sae


def load_pretrained(release: str, sae_id: str, device: str = "cpu", dtype: torch.dtype | None = None) -> SAE:
    """An SAE from SAELens's pretrained registry, e.g. ("gpt2-small-res-jb", "blocks.8.hook_resid_pre"):
    `saes.formats.resolve_sae("sae_lens:RELEASE/SAE_ID")` (sae_lens's loaders, the HF cache), its SAE."""
    from saes.formats import resolve_sae

    return resolve_sae(f"sae_lens:{release}/{sae_id}", device=device, dtype=dtype).sae


def from_sae_lens(sl_sae: Any, dtype: torch.dtype | None = None, source: str = "sae_lens SAE") -> SAE:
    """Convert a loaded `sae_lens.SAE` (inference or training class) into ours."""
    cfg = sl_sae.cfg.to_dict()
    if cfg.get("normalize_activations") == "expected_average_only_in":
        # SAELens folds the factor in when it has it (end of training, a registry id listing it) and then
        # says "none"; an object still saying this was never folded, and SAELens runs it unscaled (its
        # run_time_activation_norm_fn_in is the identity), as the folder and registry loaders refuse to
        from saes.formats.sae_lens_registry import refuse_unscaled

        refuse_unscaled(source, "a sae_lens object keeps no factor, and SAELens runs it on raw activations; the "
                                "factor is a trainer's activation_scaler.scaling_factor, or the registry's "
                                "norm_scaling_factor")
    state = {k: v.detach() for k, v in sl_sae.state_dict().items()}
    return sae_from_sae_lens_dict(cfg, state, device=next(iter(state.values())).device, dtype=dtype, source=source)


def is_sae_lens_sae(obj: Any) -> bool:
    """Whether `obj` is a `sae_lens.SAE` (any of its classes, training ones included). Asked without
    importing sae_lens: an object of its classes exists only once it is imported."""
    sae_lens = sys.modules.get("sae_lens")
    return sae_lens is not None and isinstance(obj, sae_lens.SAE)


def as_sae(obj: Any) -> Any:
    """For APIs that take an SAE: a `sae_lens.SAE` converted to ours (`from_sae_lens`: a copy of its
    weights as they are now), anything else as given (callers check it)."""
    return from_sae_lens(obj, source=f"sae_lens {type(obj).__name__}") if is_sae_lens_sae(obj) else obj


def as_loaded_sae(obj: Any) -> Any:
    """For APIs that take `saes.formats.LoadedSAE`s: one given as is; an SAE (ours or a `sae_lens.SAE`,
    converted) beside an empty provenance, its spec saying it came from memory."""
    from saes.formats.base import LoadedSAE

    if isinstance(obj, LoadedSAE):
        return obj
    fmt = "sae_lens" if is_sae_lens_sae(obj) else "object"
    return LoadedSAE(as_sae(obj), {}, f"in memory ({type(obj).__name__})", fmt)


def to_sae_lens(sae: SAE, device: str = "cpu") -> Any:
    """The same SAE as a `sae_lens.SAE` (e.g. for HookedSAETransformer)."""
    from sae_lens import SAE as SaeLensSAE

    with tempfile.TemporaryDirectory() as tmp:  # the folder SAELens users load (`save_sae`: the one writer of it)
        return SaeLensSAE.load_from_disk(str(save_sae(sae, os.path.join(tmp, "sae"))), device=device)
