"""Training checkpoints: a directory per checkpoint, safetensors + JSON only, never a pickle.

Layout (`<out>/checkpoints/step_<step, 10 digits>/`):

    tensors.safetensors   every tensor: SAE weights and thresholds, optimiser moments, dead-latent
                          counters, the torch RNG state, tensors of the reader state (if any)
    state.json            everything else: format, step, tokens, run config, activation scale,
                          per-SAE scalars, the optimiser state dicts and the reader state with
                          each tensor replaced by {"__tensor__": "<key in tensors.safetensors>"},
                          python/numpy RNG states, and the SHA-256 of tensors.safetensors

A checkpoint is built under a temporary name (`.tmp-step_...`) in the same folder, each file
fsynced, then the folder is renamed to its final name and the parent fsynced: a checkpoint
directory under its final name is always complete. Deleting old ones renames them to
`.del-...` first. Temporary leftovers of a killed run are removed on the next start.

Nested state (optimizer.state_dict(), a reader's state_dict()) is split by `flatten_state` into
JSON plus named tensors, losslessly: tuples, int-keyed dicts and numpy arrays are tagged.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from saes.errors import SaesteerError
from saes.fileio import (atomic_write_bytes, atomic_write_json, fsync_dir, make_temp_dir, name_the_final_file,
                         put_folder_in_place)

FORMAT = "saesteer.train_checkpoint"
FORMAT_VERSION = 1
STATE_FILE = "state.json"
TENSORS_FILE = "tensors.safetensors"
PREFIX = "step_"
TMP_PREFIX = ".tmp-"
DEL_PREFIX = ".del-"


class CheckpointError(SaesteerError, ValueError):
    """A checkpoint that cannot be written or read; the message says what to do."""


# ------------------------------------------------------------------ nested state <-> JSON + tensors
def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of `obj`; its tensors go into `tensors` under keys starting with `prefix`."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        if key in tensors:
            raise CheckpointError(f"duplicate tensor key {key!r} in checkpoint state")
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"{prefix}"
        t = torch.from_numpy(np.ascontiguousarray(obj).astype(np.int64) if obj.dtype.kind in "ui" else np.ascontiguousarray(obj))
        tensors[key] = t.clone()
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") and k.endswith("__") for k in obj):
            return {k: flatten_state(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise CheckpointError(f"cannot store a dict key of type {type(k).__name__} at {prefix}")
            items.append([k, flatten_state(v, f"{prefix}/{k}", tensors)])
        return {"__items__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {prefix} in a checkpoint (JSON + tensors only)")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
        if "__items__" in obj:
            return {k: unflatten_state(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        if "__dtype__" in obj:
            return getattr(torch, obj["__dtype__"])
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


# ------------------------------------------------------------------------------------ RNG states
def capture_rng(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Every global RNG state: python `random`, numpy's legacy global RNG, torch CPU (and CUDA)."""
    state: dict[str, Any] = {
        "python": flatten_state(random.getstate(), "rng/python", tensors),
        "numpy": flatten_state(np.random.get_state(legacy=False), "rng/numpy", tensors),
        "torch": flatten_state(torch.get_rng_state(), "rng/torch", tensors),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = flatten_state(torch.cuda.get_rng_state_all(), "rng/cuda", tensors)
    return state


def restore_rng(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    random.setstate(unflatten_state(state["python"], tensors))
    np.random.set_state(unflatten_state(state["numpy"], tensors))
    torch.set_rng_state(unflatten_state(state["torch"], tensors))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(unflatten_state(state["cuda"], tensors))


# ------------------------------------------------------------------------------- files on disk
def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:010d}"


def write_checkpoint(root: str | os.PathLike, step: int, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write one checkpoint atomically; refuses non-finite floating-point tensors."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"refusing to write a checkpoint with non-finite values in {', '.join(bad[:5])}")
    blob = st_save(tensors, metadata={"format": FORMAT})
    state = dict(state, format=FORMAT, format_version=FORMAT_VERSION, step=step,
                 tensors_sha256=hashlib.sha256(blob).hexdigest())
    final = root / checkpoint_name(step)
    tmp = make_temp_dir(f"{TMP_PREFIX}{final.name}.", root)
    try:
        atomic_write_bytes(tmp / TENSORS_FILE, blob)
        atomic_write_json(tmp / STATE_FILE, state)
        fsync_dir(tmp)
        # the same step written by an earlier attempt is replaced (put back if the rename fails)
        put_folder_in_place(tmp, final, aside=root / f"{DEL_PREFIX}{final.name}.{os.getpid()}")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        name_the_final_file(e, tmp, final)  # a full disk: the checkpoint's file, not its temporary folder's
        raise
    fsync_dir(root)
    return final


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit() and (p / STATE_FILE).is_file():
            out.append(p)
    return sorted(out, key=lambda p: int(p.name[len(PREFIX):]))


def clean_temporaries(root: str | os.PathLike) -> list[str]:
    """Remove half-written (`.tmp-`) and half-deleted (`.del-`) checkpoint folders."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((TMP_PREFIX, DEL_PREFIX)):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def prune_checkpoints(root: str | os.PathLike, keep_last: int) -> None:
    ckpts = list_checkpoints(root)
    for p in ckpts[: max(0, len(ckpts) - keep_last)]:
        trash = p.with_name(f"{DEL_PREFIX}{p.name}")
        os.rename(p, trash)
        shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(root)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(state, tensors) of one checkpoint, with format and checksum checks."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}/{STATE_FILE} cannot be read ({e}); delete this checkpoint folder to resume from an older one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a saesteer training checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('format_version')}; this saesteer reads {FORMAT_VERSION}"
        )
    try:
        blob = (path / TENSORS_FILE).read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}/{TENSORS_FILE} cannot be read ({e})") from None
    if hashlib.sha256(blob).hexdigest() != state.get("tensors_sha256"):
        raise CheckpointError(
            f"{path}/{TENSORS_FILE} does not match the checksum in {STATE_FILE}: the checkpoint is corrupt; "
            f"delete this folder to resume from an older checkpoint"
        )
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as e:  # the checksum matched bytes that are not safetensors
        raise CheckpointError(
            f"{path}/{TENSORS_FILE} is not a readable safetensors file ({e}) although it matches its recorded "
            f"checksum: it was written wrongly; delete this folder to resume from an older checkpoint",
            file=path / TENSORS_FILE) from None
    return state, tensors
