"""training package: the activation cache (text -> model -> shards on disk -> shuffled batches)
and the SAE trainer (training.run.train).

Names are imported lazily so `import training` stays cheap (no torch until used).
"""

from __future__ import annotations

from saes.lazy import lazy_exports

# activation cache (issue 4)
_LAZY = {
    "TextConfig": "training.text",
    "TextPointer": "training.text",
    "CacheConfig": "training.cache_config",
    "CacheEstimate": "training.estimate",
    "CacheResult": "training.cache",
    "CacheDiskFullError": "training.writer",
    "UnknownHookError": "saes.hookpoints",
    "ActivationRunner": "training.runner",
    "build_cache": "training.cache",
    "estimate_cache": "training.estimate",
    "verify_cache": "training.shardset",
    "VerifyReport": "training.shardset",
    "Manifest": "training.manifest",
    "ShardInfo": "training.manifest",
    "read_manifest": "training.manifest",
    "CacheMismatchError": "training.manifest",
    "CacheFormatError": "training.manifest",
    "ShardCorruptError": "training.shards",
    "CacheReader": "training.reader",
    "ActivationBatch": "training.reader",
    "model_batches": "training.live",
    "iter_shards": "training.shardset",
    "ShardData": "training.shardset",
    "ShardSet": "training.shardset",
    "CacheWriteError": "training.writer",
    # SAE training (issue 5)
    "RunConfig": "training.config",
    "SAESpec": "training.config",
    "TrainConfig": "training.config",
    "OptimConfig": "training.config",
    "CheckpointConfig": "training.config",
    "EvalConfig": "training.config",
    "LogConfig": "training.config",
    "DataConfig": "training.config",
    "train": "training.run",
    "Trainer": "training.trainer",
    "TrainResult": "training.finish",
    "ModelEval": "training.evaluate",
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

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
