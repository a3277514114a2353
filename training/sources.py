"""Helpers that connect the trainer to the activation cache and text pipeline (used by the CLI).

No model loading here (the face resolves model names); functions receive a loaded model or
tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.manifest import Manifest, read_manifest
from training.shardset import ShardSet


# what an SAE records of how its text was read and packed (`data.text`; special_tokens as decided,
# "text" or "match": absent in SAEs from older versions)
TEXT_READING = ("dataset_config", "text_column", "txt_documents", "context_length", "bos_policy", "separator",
                "special_tokens")


def cache_provenance(manifest: Manifest, cache_dir: str | Path, hook: str) -> dict[str, Any]:
    """What the SAE folders record about their training data. `model_identity` is the cache's
    recorded model (None for caches from older versions); `model_name` is the name SAELens users
    load the model by (cfg.json's metadata.model_name)."""
    s = manifest.settings
    ds = s.get("dataset") or {}
    ident = manifest.recorded_model()
    text = text_config_from_manifest(manifest)
    return {
        "model": (s.get("model") or {}).get("id"), "model_revision": (s.get("model") or {}).get("revision"),
        "model_identity": manifest.model_identity, "model_processing": manifest.model_processing,
        "model_name": ident.saelens_model_name if ident else None,
        "hook_name": hook, "dataset": ds.get("name"), "dataset_split": ds.get("split"),
        "dataset_files": manifest.dataset_files,
        "context_size": s.get("context_length"), "prepend_bos": s.get("bos_policy") == "prepend",
        "bos_policy": s.get("bos_policy"),  # exactly ("doc" is not "none"): what --init-from of this SAE checks
        "exclude_tokens": s.get("exclude_tokens"), "cache": str(Path(cache_dir).resolve()),
        "cache_rows": manifest.total_rows,
        # how the text was read and packed, as training without a cache records it: what eval reads
        # again once the cache is gone (a hub dataset's configuration above all)
        "text": {k: getattr(text, k) for k in TEXT_READING},
    }


def text_config_from_manifest(manifest: Manifest) -> Any:
    """The training text of a cache as a `TextConfig`: its dataset and split, packed as the cache
    packed it. A local dataset named relative to another working directory is found again through
    the manifest's absolute `dataset_files`."""
    from training.splits import local_splits, looks_local, mapping_spec
    from training.text import TextConfig

    s = manifest.settings
    ds = s.get("dataset") or {}
    name, split = ds.get("name") or "toy", ds.get("split") or "train"
    if name != "toy" and looks_local(name) and manifest.dataset_files:
        try:
            local_splits(name)
        except (OSError, ValueError):
            name = mapping_spec({split: list(manifest.dataset_files)})
    return TextConfig(dataset=name, dataset_config=ds.get("config"), split=split,
                      text_column=ds.get("text_column") or "text", context_length=int(s["context_length"]),
                      bos_policy=s.get("bos_policy", "prepend"), separator=s.get("separator", "eos"),
                      txt_documents=ds.get("txt_documents") or "file",
                      special_tokens=special_tokens_of_manifest(s))


def special_tokens_of_manifest(settings: dict[str, Any]) -> str:
    """How the cache read special tokens written out in its documents, as `TextConfig.special_tokens`:
    "text" or "match", as its `literal_special_tokens` records (a cache from before the record
    matched them: `training.manifest.SETTING_DEFAULTS`)."""
    return "text" if settings.get("literal_special_tokens") else "match"


def training_text_of(data: dict[str, Any], manifests: dict[Path, Manifest] | None = None
                     ) -> tuple[Any, int | None] | None:
    """(the training text as a `TextConfig`, documents read or None for all) of an SAE from the
    `data` provenance training recorded (`cache_provenance`, or the dataset it read without a
    cache); None when it records no dataset. What `saesteer eval` checks its held-out text against.
    `manifests`: caches' manifests already read, by resolved path (a cache's is added once read)."""
    from training.splits import local_splits, looks_local, mapping_spec
    from training.text import TextConfig

    cache = data.get("cache")
    if cache and (Path(cache) / "manifest.json").is_file():
        known = manifests if manifests is not None else {}
        key = Path(cache).resolve()
        try:
            man = known[key] if key in known else known.setdefault(key, read_manifest(cache))
        except ValueError:
            man = None
        if man is not None:
            return text_config_from_manifest(man), text_documents_read(man)
    name, split = data.get("dataset"), data.get("dataset_split") or "train"
    if not isinstance(name, str) or not name:
        return None
    files = data.get("dataset_files")
    if name != "toy" and looks_local(name) and files:
        try:
            local_splits(name)
        except (OSError, ValueError):  # named relative to another working directory
            name = mapping_spec({split: list(files)})
    how = {k: v for k, v in (data.get("text") or {}).items() if k in TEXT_READING}  # absent before this version
    return TextConfig(dataset=name, split=split, **how), None


def text_documents_read(manifest: Manifest) -> int:
    """How many documents of its dataset the cache read (up to the end of its last shard)."""
    if not manifest.shards:
        return 0
    doc, offset = manifest.shards[-1].text_end
    return int(doc) + (1 if offset else 0)


def contexts_from_text(text_cfg: Any, tokenizer: Any, n: int) -> torch.Tensor:
    """The first `n` packed contexts [n, L] of a text config (e.g. the validation split)."""
    from training.packing import open_packer

    toks, _ = open_packer(text_cfg, tokenizer).take(n)
    if len(toks) == 0:
        raise ValueError(f"no contexts in split {text_cfg.split!r} of {text_cfg.dataset!r}")
    return torch.from_numpy(np.ascontiguousarray(toks)).long()


def contexts_from_cache(cache_dir: str | Path, n: int, manifest: Manifest | None = None) -> torch.Tensor:
    """Up to `n` model inputs [n, L] stored in the cache's last shards (trained-on text: a fallback);
    each shard read is checked first (`training.shardset`). `manifest`: the cache's, if read already."""
    hook = (manifest or read_manifest(cache_dir)).hooks[0]  # any hook: only the model inputs are read (and checked)
    cache = ShardSet(cache_dir, hook, acts=False)
    parts, have = [], 0
    for i in reversed(range(len(cache.shards))):
        t = cache.read(i, ["context_tokens"])["context_tokens"]
        parts.insert(0, t)
        have += t.shape[0]
        if have >= n:
            break
    if not parts:
        raise ValueError(f"{cache_dir} has no shards")
    return torch.cat(parts)[-n:].long()
