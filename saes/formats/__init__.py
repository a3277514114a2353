"""Any SAE a practitioner has, as one of our SAE classes with the source library's encode/decode.

    loaded = resolve_sae("runs/x/saes/topk_k32_f4096")                       # saesteer / SAELens folder
    loaded = resolve_sae("sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre")   # SAELens registry (HF cache)
    loaded = resolve_sae("gpt2-small/8-res-jb")        # its Neuronpedia id (or page address), via the registry
    loaded = resolve_sae("checkpoints/run/layers.6", model="EleutherAI/pythia-70m")  # sparsify hookpoint
    loaded = resolve_sae("dl/trainer_0")                                      # dictionary_learning ae.pt + config.json
    loaded = resolve_sae("dl/trainer_0/checkpoints/ae_500.pt")                # ... a checkpoint trainSAE wrote midway
    loaded = resolve_sae("gs/params.npz", model="gemma-2-2b", hook="blocks.20.hook_resid_post")  # Gemma Scope
    loaded = resolve_sae(".../snapshots/REV/resid_post/layer_12_width_16k_l0_small")  # Gemma Scope 2 (HF cache)
    loaded = resolve_sae("oa/6.pt", model="gpt2", hook="blocks.6.mlp.hook_post")  # OpenAI Autoencoder state dict
    loaded.sae, loaded.provenance, loaded.spec

`resolve_sae` is the one place a `--sae` string becomes an SAE: every command goes through it.
`hook` and `model` are what the user says the SAE reads; formats that record them keep their
record (a contradicting hook is refused), formats that do not take the user's, and the
provenance keeps both. `spec` is canonical (absolute path or registry id): it resolves again to
the same SAE, so feature stores record it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from saes.formats import (dictionary_learning, gemma_scope, neuronpedia, openai_sae, sae_lens_folder, sae_lens_registry,
                          sparsify)
from saes.formats.base import LoadedSAE, sae_of, tl_hook_for_module
from saes.io import PICKLE_SUFFIXES, SAEFormatError

FORMATS = {
    sae_lens_folder.FORMAT: "folder with cfg.json + sae_weights.safetensors (saesteer, SAELens)",
    sae_lens_registry.FORMAT: "sae_lens:RELEASE/SAE_ID or a Neuronpedia id/address such as gpt2-small/8-res-jb "
                              "(SAELens's pretrained registry, through the HF cache)",
    sparsify.FORMAT: "sparsify hookpoint folder with cfg.json + sae.safetensors",
    dictionary_learning.FORMAT: "dictionary_learning folder with ae.pt (+ config.json), the ae.pt file, or a "
                                "checkpoints/ae_STEP.pt file",
    gemma_scope.FORMAT: "Gemma Scope params.npz (or its folder); a Gemma Scope 2 folder (params.safetensors) in the "
                        "HF cache loads by its SAELens registry id",
    openai_sae.FORMAT: "OpenAI sparse_autoencoder Autoencoder state dict (a .pt file, read weights-only)",
}

__all__ = ["FORMATS", "LoadedSAE", "detect_format", "resolve_sae", "resolve_store_sae", "sae_of", "tl_hook_for_module"]


def detect_format(spec: str | os.PathLike) -> str:
    """Which reader a spec goes to (a FORMATS key); a clear error naming what was expected."""
    text = os.fspath(spec)
    if text.startswith(sae_lens_registry.PREFIX):
        return sae_lens_registry.FORMAT
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix == ".npz":
            return gemma_scope.FORMAT
        if dictionary_learning.is_weights_file(path):
            return dictionary_learning.FORMAT
        if path.suffix.lower() in PICKLE_SUFFIXES:  # read weights-only; the reader refuses what is not its format
            return openai_sae.FORMAT
        raise SAEFormatError(f"{path} is a file; pass the SAE folder (or one of: {_known()})")
    if not path.is_dir():
        raise FileNotFoundError(f"SAE not found: {path} (expected a folder, a file, or {sae_lens_registry.PREFIX}"
                                f"RELEASE/SAE_ID)")
    for fmt, is_folder in ((sae_lens_folder.FORMAT, sae_lens_folder.is_folder), (sparsify.FORMAT, sparsify.is_folder),
                           (dictionary_learning.FORMAT, dictionary_learning.is_folder),
                           (gemma_scope.FORMAT, gemma_scope.is_folder)):
        if is_folder(path):
            return fmt
    hookpoints = sparsify.hookpoint_folders(path)
    if hookpoints:
        raise SAEFormatError(f"{path} is a sparsify run with one SAE per hookpoint; pass one of its folders, e.g. "
                             f"{path / hookpoints[0]} (hookpoints: {', '.join(hookpoints[:8])}"
                             f"{', ...' if len(hookpoints) > 8 else ''})")
    steps = dictionary_learning.checkpoint_files(path)
    if steps:
        raise SAEFormatError(f"{path} holds dictionary_learning checkpoints; pass one of them, e.g. {path / steps[-1]} "
                             f"(or {path.parent} for the final SAE; checkpoints: {', '.join(steps[:8])}"
                             f"{', ...' if len(steps) > 8 else ''})")
    trainers = sorted(p.name for p in path.iterdir() if dictionary_learning.is_folder(p))
    if trainers:
        raise SAEFormatError(f"{path} holds several dictionary_learning SAEs; pass one of {', '.join(trainers[:8])}")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    held = (f" (it holds pickled file(s) {', '.join(pickles[:5])}: pass the file itself if it is an OpenAI "
            f"Autoencoder state dict)" if pickles else "")
    raise SAEFormatError(f"{path} is not an SAE folder saesteer reads{held}; expected one of: {_known()}")


def _known() -> str:
    return "; ".join(FORMATS.values())


def resolve_sae(
    spec: str | os.PathLike,
    *,
    hook: str | None = None,
    model: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedSAE:
    """Load the SAE `spec` names (see the module docstring); errors are `SAEFormatError` /
    `FileNotFoundError` with one line saying what to fix."""
    text = os.fspath(spec)
    if not text.startswith(sae_lens_registry.PREFIX) and not Path(text).expanduser().exists():
        spec = text = neuronpedia.registry_spec(text) or text  # a Neuronpedia id / address
    elif not text.startswith(sae_lens_registry.PREFIX):  # Gemma Scope 2's folder in the HF cache: its registry id
        spec = text = gemma_scope.gemma_scope_2_registry_spec(Path(text).expanduser()) or text
    fmt = detect_format(spec)
    kw = {"hook": hook, "model": model, "device": device, "dtype": dtype}
    if fmt == sae_lens_registry.FORMAT:
        return sae_lens_registry.load(text[len(sae_lens_registry.PREFIX):], **kw)
    path = Path(text).expanduser()
    reader = {sae_lens_folder.FORMAT: sae_lens_folder.load, sparsify.FORMAT: sparsify.load,
              dictionary_learning.FORMAT: dictionary_learning.load, gemma_scope.FORMAT: gemma_scope.load,
              openai_sae.FORMAT: openai_sae.load}[fmt]
    return reader(path, **kw)


def resolve_store_sae(spec: str | os.PathLike, store_hook: str | None, *, hook: str | None = None,
                      **kw: Any) -> LoadedSAE:
    """`resolve_sae` of the SAE a feature store is used with: `store_hook` (the hook the store was built at)
    fills in only for an SAE that records none. One that records another hook is loaded at its own, for the
    store's check (`FeatureStore.check_sae`) to refuse naming both hooks, not as a `--hook` never given."""
    try:  # the weights are read once where the store's hook fits (or the SAE records none)
        return resolve_sae(spec, hook=hook or store_hook, **kw)
    except SAEFormatError:
        if hook or not store_hook:
            raise
        return resolve_sae(spec, **kw)  # it records another hook
