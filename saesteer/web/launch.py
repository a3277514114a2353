"""Open what `saesteer serve` serves: the store files named on the command line, their SAEs, one model.

    entries = open_entries(["a.db", "b.db"], model=model, sae_dirs=None, limits=Limits())

Each store gets an id from its file name (unique, URL-safe). With a model, each store's SAE is
loaded from `--sae` (in the order of `--store`) or else from the SAE path the store recorded when
it was built, and checked against the store's fingerprint; a store whose SAE cannot be found is
served browse-only, with a warning. All stores share one `ModelQueue` (one model, one job at a
time). These are the only file paths the app ever opens, and they come from the operator.
"""

from __future__ import annotations

import socket
import warnings
from pathlib import Path
from typing import Any, Sequence

from saesteer.web.config import Limits
from saesteer.web.jobs import ModelQueue
from saesteer.web.sources import StoreEntry, make_store_ids

__all__ = ["open_entries", "pick_port", "model_name_of"]


def model_name_of(model: Any) -> str:
    cfg = getattr(model, "cfg", None)
    return str(getattr(cfg, "model_name", None) or type(model).__name__)


def _model_id(model: Any) -> str | None:
    try:
        from saesteer.models import model_id

        return model_id(model)
    except Exception:  # not a model saesteer.models can fingerprint
        return None


def open_entries(
    store_paths: Sequence[str | Path],
    *,
    model: Any = None,
    sae_dirs: Sequence[str | Path] | None = None,
    limits: Limits | None = None,
) -> list[StoreEntry]:
    from features import FeatureStore
    from saesteer.web.store_source import ModelEngine, StoreCatalog

    limits = limits or Limits()
    paths = [Path(p) for p in store_paths]
    if not paths:
        raise ValueError("no feature store given; pass --store FILE (built by `saesteer features build`)")
    if sae_dirs and len(sae_dirs) != len(paths):
        raise ValueError(f"got {len(sae_dirs)} --sae folder(s) for {len(paths)} --store file(s); give one --sae per --store, in the same order, or none")
    ids = make_store_ids(p.stem for p in paths)
    queue = ModelQueue(model_name_of(model), limits.max_pending) if model is not None else None
    entries = []
    for k, (sid, path) in enumerate(zip(ids, paths)):
        store = FeatureStore.open(path, readonly=True)
        catalog = StoreCatalog(store, name=path.stem)
        engine = None
        if model is not None:
            sae = _load_sae(store, sae_dirs[k] if sae_dirs else None, path)
            if sae is not None:
                _check_model(store, model, path)
                engine = ModelEngine(model, sae, catalog, limits)
        entries.append(StoreEntry(sid, catalog, engine, queue if engine is not None else None))
    return entries


def _load_sae(store, sae_dir, store_path: Path):
    from saes.formats import resolve_sae

    meta = store.meta.get("sae") or {}
    recorded = meta.get("path")
    spec = str(sae_dir) if sae_dir else recorded
    if spec is None:
        warnings.warn(f"{store_path}: the store does not record its SAE folder; serving it browse-only (pass --sae DIR to steer)", stacklevel=3)
        return None
    if not spec.startswith("sae_lens:") and not Path(spec).exists():
        if sae_dir:
            raise FileNotFoundError(f"--sae {spec}: no such folder")
        warnings.warn(f"{store_path}: its SAE folder {spec} is gone; serving it browse-only (pass --sae DIR to steer)", stacklevel=3)
        return None
    # the hook and model the store recorded stand in for --hook/--model of formats that record neither
    sae = resolve_sae(spec, hook=meta.get("hook_name"), model=meta.get("model_name")).sae
    sae.eval()
    store.check_sae(sae)  # StoreMismatchError names both fingerprints
    return sae


def _check_model(store, model, store_path: Path) -> None:
    sae_meta = store.meta.get("sae") or {}
    want = sae_meta.get("model_name")
    have = model_name_of(model)
    if want and have and want != have and want != _model_id(model):  # SAEs record saesteer.models.model_id
        warnings.warn(f"{store_path}: the SAE was trained on model {want!r} but the server runs {have!r}", stacklevel=3)
    d_in = sae_meta.get("d_in")
    d_model = getattr(getattr(model, "cfg", None), "d_model", None)
    hook = sae_meta.get("hook_name") or ""
    if d_in and d_model and "resid" in hook and int(d_in) != int(d_model):
        raise ValueError(f"{store_path}: its SAE reads width {d_in} at {hook} but the model's d_model is {d_model}; serve it with the model it was trained on")


def pick_port(host: str, port: int) -> int:
    """`port`, or a free port on `host` when port is 0 (the Host check needs the real number)."""
    if port:
        return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host.strip("[]"), 0))
        return int(s.getsockname()[1])
