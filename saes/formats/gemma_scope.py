"""Gemma Scope's original files: `params.npz` (e.g. `layer_20/width_16k/average_l0_71/params.npz`
in google/gemma-scope-2b-pt-res).

The arrays, as released (`np.savez`): `W_enc [D, F]`, `W_dec [F, D]`, `b_enc [F]`, `b_dec [D]`,
`threshold [F]` (SAELens's `gemma_2_sae_huggingface_loader` also accepts `w_`-prefixed names and an
all-ones `scaling_factor`). The JumpReLU of the Gemma Scope tutorial: pre = x @ W_enc + b_enc (no
b_dec subtraction), acts = relu(pre) * (pre > threshold), recon = acts @ W_dec + b_dec: our
JumpReLU SAE with `apply_b_dec_to_input = False`.

The file records neither model nor hook point: pass `--model` and `--hook` (or load it through
SAELens's registry, `sae_lens:gemma-scope-...`, whose config names both). Read with
`numpy.load(allow_pickle=False)`: object arrays are refused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from saes.formats.base import LoadedSAE, files_record, record_model_and_hook, require_tensors
from saes.io import SAEFormatError, sae_from_sae_lens_dict

FORMAT = "gemma_scope"
WEIGHTS = "params.npz"
_NAMES = ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"]


def is_folder(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS).is_file()


def read_npz(path: Path, source: str) -> dict[str, torch.Tensor]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): np.array(data[k]) for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise SAEFormatError(f"{source}: {path.name} is not a readable .npz of numeric arrays ({e})") from None
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def load(
    path: Path, *, hook: str | None = None, model: str | None = None,
    device: torch.device | str | None = None, dtype: torch.dtype | None = None,
) -> LoadedSAE:
    path = path.resolve()
    npz = path if path.is_file() else path / WEIGHTS
    source = f"{npz} (Gemma Scope)"
    arrays = read_npz(npz, source)
    scale = arrays.pop("scaling_factor", None)
    if scale is not None and not torch.allclose(scale.float(), torch.ones_like(scale.float())):
        raise SAEFormatError(f"{source}: a scaling_factor other than 1 is not supported")
    require_tensors(arrays, _NAMES, source, "Gemma Scope JumpReLU SAE")
    D_, F_ = arrays["W_enc"].shape if arrays["W_enc"].ndim == 2 else (0, 0)
    if not D_:
        raise SAEFormatError(f"{source}: W_enc must be a matrix [d_in, d_sae], got shape {tuple(arrays['W_enc'].shape)}")
    cfg: dict[str, Any] = {"architecture": "jumprelu", "d_in": D_, "d_sae": F_, "apply_b_dec_to_input": False,
                           "dtype": str(arrays["W_enc"].dtype).removeprefix("torch."), "metadata": {}}
    sae = sae_from_sae_lens_dict(cfg, {n: arrays[n].contiguous() for n in _NAMES}, device=device, dtype=dtype,
                                 source=source)
    prov: dict[str, Any] = {"source": {"format": FORMAT, "path": str(npz), "files": files_record(npz.parent, [npz.name])}}
    record_model_and_hook(sae, prov, source=source, hook=hook, model=model, recorded_hook=None, recorded_model=None)
    return LoadedSAE(sae, prov, str(npz), FORMAT)
