"""SAELens folders (`cfg.json` + `sae_weights.safetensors`), ours included (`saes.io`).

SAELens records the model and hook point in `cfg.json` (`metadata.model_name`, `hook_name`);
folders we trained add `saesteer.json`, whose provenance is kept as it is. A SAELens training
checkpoint's activation scaling factor (`activation_scaler.json`) or whitening (beside it,
`activation_whitening.safetensors`) is folded into the weights as SAELens folds it when training
ends (`saes.io.checkpoint_scaling_factor`, `saes.whitening`), and a registry SAE's folder without
that file gets SAELens's registry factor (`sae_lens_registry.registry_scaling_factor`); the provenance
says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saes.formats.base import LoadedSAE, files_record, record_model_and_hook, saelens_hook_of
from saes.io import (
    CFG_FILENAME,
    SCALER_FILENAME,
    WEIGHTS_FILENAME,
    SAEFormatError,
    read_sae_folder_files,
    sae_from_folder,
)
from saes.whitening import WHITENING_FILENAME

FORMAT = "sae_lens"


def is_folder(path: Path) -> bool:
    return path.is_dir() and (path / CFG_FILENAME).is_file() and (path / WEIGHTS_FILENAME).is_file()


def load(
    path: Path, *, hook: str | None = None, model: str | None = None,
    device: torch.device | str | None = None, dtype: torch.dtype | None = None,
) -> LoadedSAE:
    path = path.resolve()
    files = read_sae_folder_files(path)  # a registry SAE's folder: the registry's scaling factor folded in
    provenance = files.provenance
    sae = sae_from_folder(files, device=device, dtype=dtype, source=str(path))
    md = sae.cfg.metadata
    if provenance is not None:  # ours: saesteer.json says it all
        prov: dict[str, Any] = dict(provenance)
        if not md.get("hook_name") and (prov.get("hook_name") or hook):  # older folders: only saesteer.json says
            md["hook_name"] = prov.get("hook_name") or hook
        recorded = md.get("hook_name") or prov.get("hook_name")
        if hook and recorded and hook != recorded:
            raise SAEFormatError(f"{path} was trained on {recorded}, not {hook}; drop --hook or pick the right SAE")
    else:
        prov = {"source": {"format": FORMAT, "path": str(path),
                           "files": files_record(path, [CFG_FILENAME, WEIGHTS_FILENAME, SCALER_FILENAME,
                                                        WHITENING_FILENAME])}}
        if files.scaling_factor is not None:
            prov["source"]["activation_scaling_factor_folded"] = files.scaling_factor
        if files.registry_factor is not None:
            prov["source"]["registry_norm_scaling_factor_folded"] = files.registry_factor
        if files.whitening is not None:
            prov["source"]["activation_whitening_folded"] = True
        recorded_hook, basis = saelens_hook_of(md)
        record_model_and_hook(sae, prov, source=str(path), hook=hook, model=model, recorded_hook=recorded_hook,
                              recorded_model=md.get("model_name"), hook_basis=basis)
    return LoadedSAE(sae, prov, str(path), FORMAT)

