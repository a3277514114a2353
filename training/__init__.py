"""training package: the activation cache (text -> model -> shards on disk -> shuffled batches)
and, later, the SAE trainer.

Names are imported lazily so `import training` stays cheap (no torch until used).
"""

from __future__ import annotations

import importlib

# activation cache (issue 4)
_LAZY = {
    "TextConfig": "training.text",
    "TextPointer": "training.text",
    "CacheConfig": "training.cache_config",
    "CacheEstimate": "training.cache",
    "CacheResult": "training.cache",
    "CacheDiskFullError": "training.cache",
    "UnknownHookError": "training.cache",
    "ActivationRunner": "training.cache",
    "build_cache": "training.cache",
    "estimate_cache": "training.cache",
    "verify_cache": "training.cache",
    "VerifyReport": "training.cache",
    "Manifest": "training.manifest",
    "ShardInfo": "training.manifest",
    "read_manifest": "training.manifest",
    "CacheMismatchError": "training.manifest",
    "CacheFormatError": "training.manifest",
    "ShardCorruptError": "training.shards",
    "CacheReader": "training.reader",
    "ActivationBatch": "training.reader",
    "model_batches": "training.reader",
    "iter_shards": "training.reader",
    "ShardData": "training.reader",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)
