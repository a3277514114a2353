"""Open what `saesteer serve` serves: the store files named on the command line, their SAEs, one model.

    entries = open_entries(["a.db", "b.db"], model=model, sae_dirs=None, limits=Limits())

Each store gets an id from its file name (unique, URL-safe). With a model, each store's SAE is
loaded from `--sae` (in the order of `--store`) or else from the (absolute) SAE path the store
recorded when it was built, and checked against the store's fingerprint; the model is checked
against the model the store records (`saes.identity`; a mismatch is refused naming both and
--allow-model-mismatch). A store whose SAE cannot be found, or served without a model, is
browse-only, and its entry says why (`StoreEntry.browse_only_reason`). All stores share one
`ModelQueue` (one model, one job at a time). These are the only file paths the app ever opens,
and they come from the operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from saesteer.web.config import Limits
from saesteer.web.jobs import ModelQueue
from saesteer.web.sources import StoreEntry, make_store_ids

__all__ = ["open_entries", "model_name_of", "recorded_models"]

NO_MODEL_REASON = "the server was started without a model (pass --model)"


def model_name_of(model: Any) -> str:
    cfg = getattr(model, "cfg", None)
    return str(getattr(cfg, "model_name", None) or type(model).__name__)


def recorded_models(store_paths: Sequence[str | Path]) -> list:
    """The model each store records (`saes.identity.ModelIdentity`, or None), in order."""
    from features import FeatureStore

    out = []
    for p in store_paths:
        with FeatureStore.open(p, readonly=True) as store:
            out.append(store.recorded_model())
    return out


def open_entries(
    store_paths: Sequence[str | Path],
    *,
    model: Any = None,
    sae_dirs: Sequence[str | Path] | None = None,
    limits: Limits | None = None,
    allow_model_mismatch: bool = False,
    no_model_reason: str | None = None,
) -> list[StoreEntry]:
    """One entry per store. `no_model_reason`: why there is no model (shown for every store when
    `model` is None). Raises ModelMismatchError when `model` is not the model a store records."""
    from features import FeatureStore
    from saesteer.web.model_source import ModelEngine
    from saesteer.web.store_source import StoreCatalog

    limits = limits or Limits()
    paths = [Path(p) for p in store_paths]
    if not paths:
        raise ValueError("no feature store given; pass --store FILE (built by `saesteer features build`)")
    check_sae_dirs(sae_dirs, paths)
    ids = make_store_ids(p.stem for p in paths)
    queue = ModelQueue(model_name_of(model), limits.max_pending) if model is not None else None
    entries = []
    for k, (sid, path) in enumerate(zip(ids, paths)):
        store = FeatureStore.open(path, readonly=True)
        catalog = StoreCatalog(store, name=path.stem)
        engine, reason = None, no_model_reason or NO_MODEL_REASON
        if model is not None:
            loaded, reason = _load_sae(store, sae_dirs[k] if sae_dirs else None)
            if loaded is not None:
                _check_model(store, loaded, model, path, allow_model_mismatch)
                engine = ModelEngine(model, loaded.sae, catalog, limits, allow_model_mismatch=allow_model_mismatch)
        entries.append(StoreEntry(sid, catalog, engine, queue if engine is not None else None,
                                  browse_only_reason=None if engine is not None else reason))
    return entries


def check_sae_dirs(sae_dirs: Sequence[str | Path] | None, store_paths: Sequence[str | Path]) -> None:
    """One --sae per --store, or none (`saesteer serve` checks so before its model loads)."""
    if sae_dirs and len(sae_dirs) != len(store_paths):
        raise ValueError(f"got {len(sae_dirs)} --sae folder(s) for {len(store_paths)} --store file(s); give one --sae per "
                         f"--store, in the same order, or none")


def _load_sae(store, sae_dir) -> tuple[Any, str | None]:
    """(the store's SAE as a `LoadedSAE`, None), or (None, why it cannot be loaded). Any format `saes.formats` reads;
    the hook and model the store recorded stand in for --hook/--model of formats that record neither (an SAE
    that records another hook than the store's is refused by the store's check, naming both)."""
    from saes.formats import resolve_store_sae

    meta = store.meta.get("sae") or {}
    recorded = meta.get("path")
    if sae_dir:
        spec = str(sae_dir)
        if not spec.startswith("sae_lens:") and not Path(spec).exists():
            raise FileNotFoundError(f"--sae {spec}: no such folder")
    elif not recorded:
        return None, "the store does not record its SAE folder (pass --sae DIR)"
    else:
        spec = recorded
        if not spec.startswith("sae_lens:") and not Path(spec).exists():
            if not Path(spec).is_absolute():  # stores from older versions kept the path as typed
                return None, (f"its SAE folder {recorded!r} was recorded relative to the directory the store was "
                              f"built in, and is not found from {Path.cwd()} (pass --sae DIR)")
            return None, f"its SAE folder {spec} does not exist any more (moved or deleted?; pass --sae DIR)"
    loaded = resolve_store_sae(spec, meta.get("hook_name"), model=meta.get("model_name"))
    loaded.sae.eval()
    store.check_sae(loaded.sae)  # StoreMismatchError names both fingerprints
    return loaded, None


def _check_model(store, loaded, model, store_path: Path, allow_mismatch: bool) -> None:
    from saes.identity import check_named_model, check_same_model, identity_of_model, identity_of_sae
    from saesteer.models import OVERRIDE_FLAG

    if not allow_mismatch:
        recorded = store.recorded_model() or identity_of_sae(loaded)
        check_same_model(recorded, identity_of_model(model), recorded_in=f"the feature store {store_path}",
                         given_as="the server's model", override=OVERRIDE_FLAG,
                         fix="serve it with the model it records (leave out --model)")
        check_named_model(loaded, identity_of_model(model), sae_as=f"the SAE of the feature store {store_path}",
                          given_as="the server's model", override=OVERRIDE_FLAG, fix="serve it with that model")
    sae_meta = store.meta.get("sae") or {}
    d_in = sae_meta.get("d_in")
    d_model = getattr(getattr(model, "cfg", None), "d_model", None)
    hook = sae_meta.get("hook_name") or ""
    if d_in and d_model and "resid" in hook and int(d_in) != int(d_model):
        raise ValueError(f"{store_path}: its SAE reads width {d_in} at {hook} but the model's d_model is {d_model}; serve it with the model it was trained on")

