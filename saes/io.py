"""Save and load SAE folders in SAELens's layout, so both tools read each other's SAEs.

A folder holds:
- `cfg.json`: SAELens config fields (architecture, d_in, d_sae, dtype, k, metadata, ...).
- `sae_weights.safetensors`: `W_enc`, `b_enc`, `W_dec`, `b_dec` (+ `threshold`).
- `saesteer.json`: our provenance (model, hook, dataset, tokens, commit, metrics) and the SHA-256
  of the weights file, which the loader verifies (SAELens folders have none: they load with a note).

BatchTopK and Matryoshka SAEs are saved in their inference form, SAELens's "jumprelu"
architecture, with `metadata.training_architecture` and `training_architecture_details`
recording how they were trained (as SAELens itself does), so we load them back as themselves.

Attention-head hooks: our SAEs read all heads flattened, [..., n_heads * d_head] (the cache and
steering flatten them). For `attn.hook_z` the config says `reshape_activations: "hook_z"`, so
SAELens flattens the [..., n_heads, d_head] hook output the same way and reshapes the
reconstruction back (HookedSAETransformer then runs the SAE); `metadata.hook_head_index` is null
(every head, not one). SAELens has no such reshape for hook_q / hook_k / hook_v: those SAEs load in
SAELens but HookedSAETransformer cannot splice them in.

Transcoders (`cfg.d_out` set) are saved as SAELens saves its transcoders: cfg.json's architecture
is the inference form's name with "_transcoder" (or "_skip_transcoder") appended - "standard"
becomes SAELens's "transcoder" / "skip_transcoder", "jumprelu" (BatchTopK, Matryoshka, JumpReLU)
its "jumprelu_transcoder" / "jumprelu_skip_transcoder" - with `d_out`, `apply_b_dec_to_input:
false`, `metadata.hook_name_out` (the target hook, which SAELens's HookedSAETransformer splices
at) and `W_skip [d_out, d_in]` among the weights. SAELens has no TopK transcoder: a TopK one is
saved as "topk_transcoder", which we load and SAELens refuses as an unknown architecture.

SAELens training checkpoints: a scaling factor (`activation_scaler.json`) or a whitening
(`activation_whitening.safetensors`, `saes/whitening.py`) not yet folded in is folded as SAELens
folds it when training ends (`read_sae_folder_files`, `sae_from_folder`).

Only JSON and safetensors are ever read. A pickled checkpoint is refused with instructions;
`cfg.json` is checked field by field and NaN weights are refused (`saes.checks`).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from saes.base import SAE
from saes.checks import CHECKSUMS_KEY, SAEFormatError, check_finite, check_sae_config, file_checksums, verify_checksums
from saes.fileio import atomic_write_bytes, atomic_write_json, building_folder, read_json
from saes.registry import ARCHITECTURES, sae_class
from saes.whitening import (SCALER_FILENAME, WHITENED, WHITENING_FILENAME, Whitening, checkpoint_whitening,
                             read_scaler)

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
PROVENANCE_FILENAME = "saesteer.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# normalize_activations values that are the identity at inference (SAELens folds the factor in;
# a training checkpoint keeps it beside the weights, and `read_sae_folder` folds it the same way)
_IDENTITY_NORMS = ("none", "expected_average_only_in")
_DERIVED_METADATA = ("sae_lens_version", "sae_lens_training_version", "training_architecture", "training_architecture_details")
SAVE_TMP_MARK = ".tmp-"  # a new folder is built as `.<name>.tmp-XXXX` beside its final name
RESHAPES = ("none", "hook_z")  # SAELens's reshape_activations values
_HEAD_HOOKS = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z")  # [..., n_heads, d_head] at the hook


def reshape_for_hook(hook_name: str | None) -> str:
    """SAELens's `reshape_activations` for an SAE on `hook_name` that reads all heads flattened:
    "hook_z" where SAELens flattens the heads itself (its rule: the hook name ends in "_z")."""
    return "hook_z" if str(hook_name or "").endswith("hook_z") else "none"


TRANSCODER_SUFFIXES = ("skip_transcoder", "transcoder")  # longest first


def transcoder_architecture(base: str, skip: bool) -> str:
    """cfg.json's name of a transcoder whose inference form is `base` ("standard" -> SAELens's "transcoder")."""
    suffix = "skip_transcoder" if skip else "transcoder"
    return suffix if base == "standard" else f"{base}_{suffix}"


def split_transcoder_architecture(arch: str) -> tuple[str, bool, bool]:
    """(inference form, is a transcoder, has a skip connection) of a cfg.json architecture name."""
    for suffix in TRANSCODER_SUFFIXES:
        if arch == suffix:
            return "standard", True, suffix.startswith("skip")
        if arch.endswith("_" + suffix):
            return arch[: -len(suffix) - 1], True, suffix.startswith("skip")
    return arch, False, False


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _sae_lens_version() -> str:
    try:
        return importlib.metadata.version("sae-lens")
    except importlib.metadata.PackageNotFoundError:
        return "6.0.0"  # the first version with this config layout


# ---------------------------------------------------------------------------------- saving
def sae_lens_config(sae: SAE) -> dict[str, Any]:
    """The `cfg.json` dict SAELens expects for this SAE's inference form."""
    metadata = {"sae_lens_version": _sae_lens_version(), "sae_lens_training_version": None}
    metadata.update(sae.cfg.metadata)
    hook = metadata.get("hook_name")
    if str(hook or "").endswith(_HEAD_HOOKS):
        metadata.setdefault("hook_head_index", None)  # all heads (flattened), not one head
    arch = sae.saved_architecture()
    cfg: dict[str, Any] = {
        "architecture": transcoder_architecture(arch, sae.W_skip is not None) if sae.is_transcoder else arch,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        **({"d_out": sae.d_out} if sae.is_transcoder else {}),
        "dtype": _dtype_name(sae.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": reshape_for_hook(hook),
    }
    cfg.update(sae.saelens_fields())
    if arch != sae.architecture:  # saved as another architecture's inference form
        metadata["training_architecture"] = sae.architecture
        metadata["training_architecture_details"] = sae.training_details()
    cfg["metadata"] = metadata
    return cfg


def sae_state_dict(sae: SAE) -> dict[str, torch.Tensor]:
    """The tensors saved: the SAE's parameters and buffers (W_enc, b_enc, W_dec, b_dec, + threshold)."""
    return {n: t.detach().to("cpu").contiguous() for n, t in sae.state_dict().items()}


def remove_save_leftovers(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary folders a killed `save_sae` left beside `folder` (its `.<name>.tmp-*`)."""
    folder = Path(folder)
    removed = []
    if folder.parent.is_dir():
        for p in folder.parent.glob(f".{folder.name}{SAVE_TMP_MARK}*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def save_sae(sae: SAE, path: str | os.PathLike, provenance: dict[str, Any] | None = None) -> Path:
    """Write `sae` to folder `path` (created if needed). Non-finite weights are refused.

    `saesteer.json` gets `provenance` (if given; an existing one is kept otherwise) and the
    SHA-256 of the weights file. A new folder is built under a temporary name and renamed into
    place (leftovers of a killed save are removed first); an existing folder has each file
    replaced atomically (weights, then their checksum, then the config)."""
    path = Path(path)
    state = sae_state_dict(sae)
    bad = [n for n, t in state.items() if not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"refusing to save an SAE with non-finite values in {', '.join(bad)}")
    weights = save(state, metadata={"format": "pt"})
    cfg = sae_lens_config(sae)
    if provenance is None and (path / PROVENANCE_FILENAME).is_file():
        try:
            provenance = read_json(path / PROVENANCE_FILENAME, "provenance file")
        except ValueError:
            provenance = None  # unreadable: rewritten with the checksum only
    record = dict(provenance or {}) if isinstance(provenance, dict) else {}
    record[CHECKSUMS_KEY] = file_checksums({WEIGHTS_FILENAME: weights})
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder")
        atomic_write_bytes(path / WEIGHTS_FILENAME, weights)
        atomic_write_json(path / PROVENANCE_FILENAME, record)
        atomic_write_json(path / CFG_FILENAME, cfg)
        return path
    remove_save_leftovers(path)
    with building_folder(path, SAVE_TMP_MARK) as tmp:
        atomic_write_bytes(tmp / WEIGHTS_FILENAME, weights)
        atomic_write_json(tmp / PROVENANCE_FILENAME, record)
        atomic_write_json(tmp / CFG_FILENAME, cfg)
    return path


# --------------------------------------------------------------------------------- loading
def _refuse_pickles(folder: Path, missing: str) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise SAEFormatError(
            f"{folder} has no {missing} but holds pickled file(s) {', '.join(pickles)}; saesteer never "
            f"unpickles files (they can run arbitrary code). If you trust the file, convert it once in a "
            f"trusted Python session (load it with torch, then save the tensors with safetensors or saes.save_sae)."
        )


class SAEFolder(NamedTuple):
    """What an SAE folder holds, read once: the config and weights (a SAELens training checkpoint's
    scaling factor, or the registry's for a registry SAE's folder, folded in), our provenance (None for
    SAELens's folders), those factors and a whitened checkpoint's whitening (each None if none)."""

    cfg: dict[str, Any]
    weights: dict[str, torch.Tensor]
    provenance: dict[str, Any] | None
    scaling_factor: float | None
    whitening: Whitening | None  # a whitened SAELens checkpoint's statistics, folded by `sae_from_folder`
    registry_factor: dict[str, Any] | None = None  # {"registry_id", "factor"}: SAELens's registry's, folded


def read_sae_folder(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read (cfg, weights, provenance) from an SAE folder with clear errors. A whitened SAELens
    checkpoint is refused here (its whitening is folded into the SAE, not the tensors: `load_sae`)."""
    files = read_sae_folder_files(path)
    if files.whitening is not None:
        raise SAEFormatError(f"{path}: a SAELens checkpoint trained on whitened activations; load it with "
                             f"saes.load_sae (which folds the whitening), not as raw tensors")
    return files.cfg, files.weights, files.provenance


def sae_from_folder(files: SAEFolder, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                    source: str = "SAE") -> SAE:
    """The SAE an SAE folder's files describe, a whitened checkpoint's whitening folded in. An SAE
    trained here keeps its training's BOS policy (saesteer.json) as `trained_bos_policy`, on the
    object only: prompts of a "doc"-policy SAE start with BOS wherever it goes (`saes.bos`), while
    cfg.json's prepend_bos keeps SAELens's meaning; likewise `trained_special_tokens`
    (`features.text.trained_special_tokens`)."""
    from saes.bos import trained_bos_policy

    sae = sae_from_sae_lens_dict(files.cfg, files.weights, device=device, dtype=dtype, source=source)
    if files.whitening is not None:
        sae.fold_input_whitening_(*files.whitening)
    policy = trained_bos_policy(files.provenance or {})
    if policy is not None:
        sae.trained_bos_policy = policy
    # how its training text read a special token written out ("text" / "match"): features.text reads a text so
    reading = (((files.provenance or {}).get("data") or {}).get("text") or {}).get("special_tokens")
    if reading in ("text", "match"):
        sae.trained_special_tokens = reading
    return sae


def read_sae_folder_files(path: str | os.PathLike) -> SAEFolder:
    """An SAE folder's files, each read once: what `read_sae_folder` returns, the scaling factor folded
    in, and a whitened checkpoint's whitening (not refused here: `sae_from_folder` folds it)."""
    folder = Path(path)
    if folder.is_file():
        if folder.suffix.lower() in PICKLE_SUFFIXES:
            raise SAEFormatError(
                f"{folder} is a pickle file; saesteer loads only safetensors + JSON SAE folders. "
                f"Convert it with safetensors, then pass the folder holding cfg.json and {WEIGHTS_FILENAME}."
            )
        raise SAEFormatError(f"{folder} is a file; pass the SAE folder holding {CFG_FILENAME} and {WEIGHTS_FILENAME}")
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE folder not found: {folder}")
    cfg_path, weights_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            _refuse_pickles(folder, p.name)
            raise SAEFormatError(
                f"{folder} is not an SAE folder: {p.name} is missing (expected {CFG_FILENAME} + {WEIGHTS_FILENAME})"
            )
    try:
        cfg = read_json(cfg_path, "SAE config")
    except ValueError as e:
        raise SAEFormatError(str(e), file=cfg_path) from None
    check_sae_config(cfg, str(cfg_path))
    prov_path = folder / PROVENANCE_FILENAME
    try:
        provenance = read_json(prov_path, "provenance file") if prov_path.is_file() else None
    except ValueError as e:
        raise SAEFormatError(str(e), file=prov_path) from None
    if provenance is not None and not isinstance(provenance, dict):
        raise SAEFormatError(f"{prov_path} must hold a JSON object; delete it or re-save the SAE", file=prov_path)
    blob = weights_path.read_bytes()
    verify_checksums(str(folder), {WEIGHTS_FILENAME: blob}, provenance, PROVENANCE_FILENAME)
    try:
        weights = load(blob)
    except (SafetensorError, ValueError) as e:
        raise SAEFormatError(
            f"{weights_path} is not a readable safetensors file ({e}); it is truncated or corrupt - "
            f"re-download or re-save the SAE", file=weights_path
        ) from None
    check_finite(weights, str(weights_path))
    scaler = read_scaler(folder)
    factor = checkpoint_scaling_factor(folder, cfg, scaler)
    registry_factor = None
    if factor is not None:
        cfg, weights = fold_scaling_factor(cfg, weights, factor)
    elif cfg.get("normalize_activations") == "expected_average_only_in":  # the factor only SAELens's registry holds
        from saes.formats.sae_lens_registry import registry_scaling_factor

        registry_factor = registry_scaling_factor(folder)  # or refused: read raw, every input at the wrong scale
        cfg, weights = fold_scaling_factor(cfg, weights, registry_factor["factor"])
    whitening = checkpoint_whitening(folder, cfg, scaler)
    if whitening is not None:
        if split_transcoder_architecture(str(cfg.get("architecture") or ""))[1]:
            raise SAEFormatError(f"{folder}: a transcoder trained on whitened activations is not read (its target's "
                                 f"whitening is not in the checkpoint); pass the final transcoder SAELens saves",
                                 file=folder / SCALER_FILENAME)
        cfg = {**cfg, "normalize_activations": "none"}  # folded by sae_from_folder
    return SAEFolder(cfg, weights, provenance, factor, whitening, registry_factor)


def checkpoint_scaling_factor(folder: Path, cfg: dict[str, Any], scaler: Any) -> float | None:
    """The activation scaling factor a SAELens training checkpoint has not folded in yet
    (`scaler`: its parsed activation_scaler.json, None without one).

    SAELens trains `normalize_activations="expected_average_only_in"` SAEs on inputs multiplied by
    `scaling_factor` and folds the factor into the weights only when training ends; a checkpoint
    saved before that keeps it in `activation_scaler.json`. Read as the identity, such an SAE sees
    inputs at the wrong scale (its top-k and thresholds pick other latents): a silent wrong result."""
    if cfg.get("normalize_activations") != "expected_average_only_in" or scaler is None:
        return None
    factor = scaler.get("scaling_factor") if isinstance(scaler, dict) else None
    if factor is None:
        return None
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < float("inf"):
        path = folder / SCALER_FILENAME
        raise SAEFormatError(f"{path}: scaling_factor must be a positive number, got {factor!r}; the SAE needs it "
                             f"(cfg.json normalize_activations=expected_average_only_in)", file=path)
    return float(factor)


def fold_scaling_factor(cfg: dict[str, Any], weights: dict[str, torch.Tensor],
                        factor: float) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(cfg, weights) that read raw activations as the SAE read them multiplied by `factor`: what
    SAELens's `fold_activation_norm_scaling_factor` does at the end of training (W_enc * s,
    W_dec / s, b_dec / s; then normalize_activations is "none"). Pre-activations are unchanged, so
    b_enc and a JumpReLU threshold stay; a BatchTopK `topk_threshold` compared with pre * ||W_dec
    row|| (`rescale_acts_by_decoder_norm`) is divided by s, as SAELens's BatchTopK does."""
    weights = dict(weights)
    weights["W_enc"] = weights["W_enc"] * factor
    weights["W_dec"] = weights["W_dec"] / factor
    weights["b_dec"] = weights["b_dec"] / factor
    if "topk_threshold" in weights and cfg.get("rescale_acts_by_decoder_norm"):
        weights["topk_threshold"] = weights["topk_threshold"] / factor
    return {**cfg, "normalize_activations": "none"}, weights


def _architecture(cfg: dict[str, Any]) -> str:
    """The class to build (a transcoder: its inference form's class, or the one it was trained as)."""
    arch = cfg.get("architecture")
    if arch is None:  # SAELens < 6 config
        fn = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
        return "topk" if fn == "topk" else "standard"
    arch = split_transcoder_architecture(arch)[0]
    training_arch = (cfg.get("metadata") or {}).get("training_architecture")
    trained_as = ARCHITECTURES.get(training_arch) if isinstance(training_arch, str) else None
    if trained_as is not None and trained_as.saved_architecture() == arch:  # its inference form was saved
        return training_arch
    return arch


def sae_from_sae_lens_dict(
    cfg: dict[str, Any],
    weights: dict[str, torch.Tensor],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    source: str = "SAE",
) -> SAE:
    """Build our SAE from a SAELens config dict and state dict (folder, hub or object)."""
    arch = _architecture(cfg)
    try:
        cls = sae_class(arch)
    except ValueError as e:  # unknown architecture: the message lists the known ones
        raise SAEFormatError(f"{source}: {e}", file=source) from None
    norm = cfg.get("normalize_activations", "none")
    if norm == WHITENED:  # a training checkpoint's whitening is folded (and this set to none) before here
        raise SAEFormatError(
            f"{source}: an SAE trained on whitened activations ({norm}), without its whitening; pass the SAELens "
            f"checkpoint folder with its {SCALER_FILENAME} and {WHITENING_FILENAME}, or the final SAE SAELens saves")
    if norm not in _IDENTITY_NORMS:
        raise SAEFormatError(
            f"{source}: normalize_activations={norm!r} is not supported (supported: {', '.join(_IDENTITY_NORMS)})"
        )
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in RESHAPES:  # "hook_z": SAELens flattens the heads, as our SAEs always read them
        raise SAEFormatError(
            f"{source}: reshape_activations={reshape!r} is not supported (supported: {', '.join(RESHAPES)})"
        )
    metadata = dict(cfg.get("metadata") or {})
    for key in ("model_name", "hook_name", "hook_head_index", "context_size", "prepend_bos", "dataset_path"):
        if key in cfg and key not in metadata:  # SAELens < 6 kept these at the top level
            metadata[key] = cfg[key]
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    except KeyError as e:
        raise SAEFormatError(f"{source}: config lacks {e.args[0]!r}") from None
    details = metadata.get("training_architecture_details") or {}
    for key in _DERIVED_METADATA:  # the writer regenerates these from the SAE itself
        metadata.pop(key, None)
    fields: dict[str, Any] = {"apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)), "metadata": metadata}
    _, transcoder, skip = split_transcoder_architecture(str(cfg.get("architecture") or ""))
    d_out = d_in
    if transcoder:
        if "d_out" not in cfg:
            raise SAEFormatError(f"{source}: a {cfg['architecture']} config needs d_out (the target's width)")
        d_out = int(cfg["d_out"])
        fields.update(d_out=d_out, skip_connection=skip, apply_b_dec_to_input=False)
    try:
        fields.update(cls.config_fields_from_saelens(cfg, details, source))
    except (TypeError, ValueError) as e:
        raise SAEFormatError(f"{source}: {e}") from None
    try:
        sae_cfg = cls.config_class(d_in=d_in, d_sae=d_sae, **fields)
    except (TypeError, ValueError) as e:
        raise SAEFormatError(f"{source}: invalid config: {e}") from None

    try:
        weights = cls.saelens_inference_weights(weights, source)
    except ValueError as e:
        raise SAEFormatError(f"{source}: {e}") from None
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if transcoder and skip:
        expected["W_skip"] = (d_out, d_in)
    missing = [n for n in expected if n not in weights]
    if missing:
        raise SAEFormatError(f"{source}: weights lack {', '.join(missing)} (have: {', '.join(sorted(weights))})")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise SAEFormatError(
                f"{source}: {name} has shape {tuple(weights[name].shape)} but cfg d_in={d_in}, d_sae={d_sae}"
                f"{f', d_out={d_out}' if transcoder else ''} "
                f"needs {shape}; the config and weights do not belong together"
            )
    store_dtype = dtype or _DTYPES.get(str(cfg.get("dtype", "float32")).removeprefix("torch."), weights["W_enc"].dtype)
    sae = cls(sae_cfg, device="meta", dtype=store_dtype)
    sae = sae.to_empty(device=device or "cpu")
    with torch.no_grad():
        for name in expected:
            getattr(sae, name).copy_(weights[name])
        for buf in sae.buffers():  # to_empty left them uninitialised; the file's values come last
            buf.zero_()
        # SAELens may treat decoder rows as unit norm at run time; fold that into the weights
        rescale = cfg.get("rescale_acts_by_decoder_norm", details.get("rescale_acts_by_decoder_norm", False))
        if rescale:  # selection ran on pre * ||W_dec row||, so folding is exact here
            sae.fold_selection_decoder_norm_()
        try:
            sae.load_saelens_tensors_(weights, source)
        except ValueError as e:
            raise SAEFormatError(f"{source}: {e}") from None
    return sae


def load_sae(
    path: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> SAE:
    """Load an SAE folder written by saesteer or SAELens (the SAE alone: its provenance is
    `read_provenance(path)`; `saes.formats.resolve_sae(path)` returns both, side by side)."""
    return sae_from_folder(read_sae_folder_files(path), device=device, dtype=dtype, source=str(path))


def _without_checksums(record: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (record or {}).items() if k != CHECKSUMS_KEY}


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance recorded in an SAE folder's saesteer.json ({} without one; checksums left out)."""
    p = Path(path) / PROVENANCE_FILENAME
    return _without_checksums(read_json(p, "provenance file")) if p.is_file() else {}


def without_local_paths(record: Any) -> Any:
    """`record` (a provenance) with every absolute path (the cache folder, local dataset files, a local
    model's folder: this machine's layout, a user name among it) cut to its last part, for an SAE folder
    shared beyond this machine (`huggingface_hub.upload_folder` uploads saesteer.json as it is):

        shared = save_sae(load_sae(folder), "to_share", provenance=without_local_paths(read_provenance(folder)))

    Hub ids and relative names are kept. A local model's identity loses its path instead (None: unknown):
    its last part would claim a folder of that name, and no model at the real path would match it."""
    if isinstance(record, dict):
        cut = {k: without_local_paths(v) for k, v in record.items()}
        if record.get("source") == "local" and "weights_sha256" in record and cut.get("path") != record.get("path"):
            cut["path"] = None  # a ModelIdentity: matched by its weights' hash, else by name where a path is None
        return cut
    if isinstance(record, list):
        return [without_local_paths(v) for v in record]
    if isinstance(record, str) and (os.path.isabs(record) or record.startswith("~")):
        return Path(record).name or record
    return record
