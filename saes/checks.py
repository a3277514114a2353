"""What an SAE folder must satisfy before its SAE is built: a sound cfg.json, the weights'
recorded SHA-256, finite weights.

- `check_sae_config(cfg, source)`: the SAELens config fields we read, one by one (type and range),
  so that a bad value is refused naming the file and the field instead of failing deep inside
  with a bare Python error (`k: NaN`, `d_in: "abc"`, `metadata: "oops"`).
- `file_checksums` / `verify_checksums`: `saesteer.json` records the SHA-256 and size of the
  weights file; a folder whose weights no longer match (a flipped bit, a half-copied file) is
  refused. Folders made by SAELens have no such record and load unverified, with a note.
- `check_finite(weights, source)`: NaN or infinite weights are refused (saving refuses them too).

Every failure is an `SAEFormatError` whose message names the file and what to do.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping

from saes.errors import SaesteerError, note

__all__ = ["SAEFormatError", "check_sae_config", "file_checksums", "verify_checksums", "check_finite"]

CHECKSUMS_KEY = "files"  # in saesteer.json: {file name: {"sha256": hex, "bytes": n}}
KNOWN_DTYPES = ("float32", "float16", "bfloat16", "float64")


class SAEFormatError(SaesteerError, ValueError):
    """An SAE folder or file that cannot be read as an SAE; the message says how to fix it."""


# ------------------------------------------------------------------------------------ cfg.json
def _is_int(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, float) and math.isfinite(v) and v.is_integer()


def _bad(source: str, where: str, want: str, value: Any) -> SAEFormatError:
    shown = repr(value) if not isinstance(value, float) else str(value)
    return SAEFormatError(
        f"{source}: {where} must be {want}, got {shown}; fix that field (or re-save the SAE)", file=source
    )


def _positive_int(cfg: Mapping[str, Any], key: str, source: str, where: str, required: bool = False) -> None:
    if key not in cfg or cfg[key] is None:
        if required:
            raise SAEFormatError(f"{source}: the config lacks {where}; fix the file (or re-save the SAE)", file=source)
        return
    v = cfg[key]
    if not _is_int(v) or v <= 0:
        raise _bad(source, where, "a positive integer", v)


def _optional(cfg: Mapping[str, Any], key: str, kind: type | tuple[type, ...], want: str, source: str, where: str) -> None:
    v = cfg.get(key)
    if v is not None and (not isinstance(v, kind) or (kind is not bool and isinstance(v, bool))):
        raise _bad(source, where, want, v)


def check_sae_config(cfg: Any, source: str) -> None:
    """Refuse a SAELens config dict whose fields we read have the wrong type or range.

    `source` names the config (its path) in the messages."""
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{source} must hold a JSON object, got {type(cfg).__name__}", file=source)
    _positive_int(cfg, "d_in", source, "d_in", required=True)
    _positive_int(cfg, "d_sae", source, "d_sae", required=True)
    _positive_int(cfg, "d_out", source, "d_out")  # transcoders
    _optional(cfg, "architecture", str, "a string", source, "architecture")
    _optional(cfg, "apply_b_dec_to_input", bool, "true or false", source, "apply_b_dec_to_input")
    _optional(cfg, "rescale_acts_by_decoder_norm", bool, "true or false", source, "rescale_acts_by_decoder_norm")
    _optional(cfg, "normalize_activations", str, "a string", source, "normalize_activations")
    dtype = cfg.get("dtype")
    if dtype is not None and (not isinstance(dtype, str) or dtype.removeprefix("torch.") not in KNOWN_DTYPES):
        raise _bad(source, "dtype", f"one of {', '.join(KNOWN_DTYPES)}", dtype)
    for key in ("metadata", "activation_fn_kwargs"):
        _optional(cfg, key, dict, "a JSON object", source, key)
    metadata = cfg.get("metadata") or {}
    details = metadata.get("training_architecture_details")
    if details is not None and not isinstance(details, dict):
        raise _bad(source, "metadata.training_architecture_details", "a JSON object", details)
    details = details or {}
    for key in ("hook_name", "hook_name_out", "model_name", "training_architecture"):
        _optional(metadata, key, str, "a string", source, f"metadata.{key}")
        _optional(cfg, key, str, "a string", source, key)  # SAELens < 6 kept some at the top level
    for key in ("context_size",):
        _positive_int(metadata, key, source, f"metadata.{key}")
        _positive_int(cfg, key, source, key)
    _optional(metadata, "prepend_bos", bool, "true or false", source, "metadata.prepend_bos")
    for where, holder in (("k", cfg), ("metadata.training_architecture_details.k", details),
                          ("activation_fn_kwargs.k", cfg.get("activation_fn_kwargs") or {})):
        _positive_int(holder, "k", source, where)
        k = holder.get("k")
        if k is not None and _is_int(cfg["d_sae"]) and k > cfg["d_sae"]:
            raise SAEFormatError(f"{source}: {where} = {k} exceeds d_sae = {cfg['d_sae']}; the config is corrupt",
                                 file=source)
    for where, holder in (("matryoshka_widths", cfg), ("metadata.training_architecture_details.matryoshka_widths", details)):
        widths = holder.get("matryoshka_widths")
        if widths is not None and (not isinstance(widths, list) or not all(_is_int(w) and w > 0 for w in widths)):
            raise _bad(source, where, "a list of positive integers", widths)


# ------------------------------------------------------------------------------------ checksums
def file_checksums(files: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    """{name: {"sha256": hex, "bytes": size}} for the given file contents (what saesteer.json records)."""
    return {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()}


def verify_checksums(folder: str, files: Mapping[str, bytes], provenance: Mapping[str, Any] | None,
                     provenance_name: str) -> bool:
    """Check `files` (name -> bytes) against the SHA-256 recorded in the folder's provenance file.

    Returns True when every file was verified; a folder without a record (made by SAELens or by
    an older saesteer) loads with a note and returns False. A mismatch raises SAEFormatError."""
    recorded = (provenance or {}).get(CHECKSUMS_KEY) if isinstance(provenance, dict) else None
    if recorded is None:
        note(f"{folder} records no checksum of its weights ({provenance_name} has none: a SAELens folder or an "
             f"older saesteer); loading them unverified")
        return False
    if not isinstance(recorded, dict):
        raise SAEFormatError(f"{folder}/{provenance_name}: '{CHECKSUMS_KEY}' must map file names to checksums; "
                             f"the file is corrupt (re-save the SAE)", file=f"{folder}/{provenance_name}")
    for name, data in files.items():
        want = recorded.get(name)
        if not isinstance(want, dict) or not isinstance(want.get("sha256"), str):
            raise SAEFormatError(f"{folder}/{provenance_name} records no checksum for {name}; the folder was changed "
                                 f"by hand or is corrupt: re-save or re-download the SAE", file=f"{folder}/{name}")
        size = want.get("bytes")
        if isinstance(size, int) and size != len(data):
            raise SAEFormatError(
                f"{folder}/{name} has {len(data):,} bytes but {provenance_name} records {size:,}: the file is "
                f"truncated or corrupt (a partial copy or download?); re-download or re-save the SAE",
                file=f"{folder}/{name}")
        if hashlib.sha256(data).hexdigest() != want["sha256"]:
            raise SAEFormatError(
                f"{folder}/{name} does not match the SHA-256 recorded in {provenance_name}: the file was changed or "
                f"corrupted; re-download or re-save the SAE", file=f"{folder}/{name}")
    return True


# ------------------------------------------------------------------------------------ weights
def check_finite(weights: Mapping[str, Any], source: str) -> None:
    """Refuse weights holding NaN or infinite values (a diverged or corrupt SAE)."""
    import torch

    bad = [n for n, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise SAEFormatError(
            f"{source}: the weights hold NaN or infinite values in {', '.join(sorted(bad))}; the SAE diverged or the "
            f"file is corrupt: use an earlier checkpoint or re-download it", file=source)
