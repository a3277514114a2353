"""SAELens training checkpoints of SAEs trained on whitened activations (`normalize_activations:
"covariance_whitening"`): read the whitening beside the weights and fold it in.

Shape key: D d_in.

SAELens's trainer feeds such an SAE z = (x - mean) @ M and maps its reconstruction back as
z_hat @ M^-1 + mean (`ActivationScaler.scale` / `unscale`); the statistics sit beside a checkpoint's
weights (`activation_scaler.json` saying `has_whitening`, the tensors `mean`, `matrix`,
`inverse_matrix` in `activation_whitening.safetensors`), and SAELens folds them into the weights only
when training ends (`SAE.fold_activation_whitening`). Both maps are affine, so the fold is exact:
`SAE.fold_input_whitening_` (saes/base.py) does SAELens's arithmetic, after the decoder-norm fold
the loader does anyway (`rescale_acts_by_decoder_norm`: the SAE selected on pre x the norms of its
decoder rows in whitened space; SAELens's TopK folds them first too). Only safetensors and JSON are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor

from saes.checks import SAEFormatError, check_finite
from saes.fileio import read_json

SCALER_FILENAME = "activation_scaler.json"  # SAELens's ActivationScaler.save
WHITENING_FILENAME = "activation_whitening.safetensors"  # sae_lens.constants.ACTIVATION_WHITENING_FILENAME
WHITENED = "covariance_whitening"


class Whitening(NamedTuple):
    """z = (x - mean) @ matrix; x = z @ inverse_matrix + mean."""

    mean_D: Tensor
    matrix_DD: Tensor
    inverse_DD: Tensor


def checkpoint_whitening(folder: Path, cfg: dict[str, Any], scaler: Any) -> Whitening | None:
    """The whitening a SAELens training checkpoint has not folded in yet (None if it has none).
    `scaler`: the parsed activation_scaler.json (None when there is none)."""
    if cfg.get("normalize_activations") != WHITENED or not isinstance(scaler, dict):
        return None
    where = folder / SCALER_FILENAME
    if scaler.get("scaling_factor") is not None:
        raise SAEFormatError(f"{where}: a scaling factor and a whitening together are not a checkpoint SAELens writes "
                             f"(normalize_activations is one of them); pass the final SAE SAELens saves", file=where)
    if not scaler.get("has_whitening", True):
        return None
    path = folder / WHITENING_FILENAME
    if not path.is_file():
        raise SAEFormatError(f"{folder}: {SCALER_FILENAME} says the SAE was trained on whitened activations but "
                             f"{WHITENING_FILENAME} (their mean and matrices) is missing; copy it beside the weights, "
                             f"or pass the final SAE SAELens saves", file=path)
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(path.read_bytes())
    except (SafetensorError, ValueError) as e:
        raise SAEFormatError(f"{path} is not a readable safetensors file ({e}); it is truncated or corrupt",
                             file=path) from None
    d_in = int(cfg.get("d_in", 0))
    shapes = {"mean": (d_in,), "matrix": (d_in, d_in), "inverse_matrix": (d_in, d_in)}
    for name, shape in shapes.items():
        if name not in tensors or tuple(tensors[name].shape) != shape:
            got = tuple(tensors[name].shape) if name in tensors else "missing"
            raise SAEFormatError(f"{path}: {name} must have shape {shape} (d_in={d_in}), got {got}", file=path)
    check_finite(tensors, str(path))
    return Whitening(tensors["mean"], tensors["matrix"], tensors["inverse_matrix"])


def read_scaler(folder: Path) -> Any:
    """The parsed activation_scaler.json of a folder (None without one)."""
    path = folder / SCALER_FILENAME
    if not path.is_file():
        return None
    try:
        return read_json(path, "SAELens activation scaler")
    except ValueError as e:
        raise SAEFormatError(str(e), file=path) from None
