"""training package: the activation cache (text -> model -> shards on disk -> shuffled batches)
and the SAE trainer (training.trainer.train).

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
    # SAE training (issue 5)
    "RunConfig": "training.config",
    "SAESpec": "training.config",
    "TrainConfig": "training.config",
    "OptimConfig": "training.config",
    "CheckpointConfig": "training.config",
    "EvalConfig": "training.config",
    "LogConfig": "training.config",
    "DataConfig": "training.config",
    "train": "training.trainer",
    "Trainer": "training.trainer",
    "TrainResult": "training.trainer",
    "ModelEval": "training.trainer",
    "NonFiniteError": "training.trainer",
    "ConfigMismatchError": "training.trainer",
    "evaluate_activations": "training.evaluate",
    "splice_metrics": "training.evaluate",
    "Collectives": "training.collectives",
    "DistCollectives": "training.collectives",
    "init_from_env": "training.distributed",
    "SyntheticActivations": "training.synthetic",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)
