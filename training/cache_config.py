"""`CacheConfig`: the activation cache's settings (kept free of torch so the CLI stays light)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ExcludeTokens = Literal["none", "bos", "special"]
DTYPE_NAMES = ("fp16", "bf16", "fp32")
FORWARD_NAMES = ("auto", "transformer_lens", "fast")


@dataclass
class CacheConfig:
    """Activation cache: where, which hook points, precision and shard layout."""

    out: str = field(metadata={"help": "cache directory (created; re-running the same command resumes it)"})
    hooks: list[str] = field(
        metadata={"help": "hook point(s) to cache, comma-separated, e.g. blocks.2.hook_resid_post"}
    )
    dtype: Literal["fp16", "bf16", "fp32"] = field(
        default="fp16", metadata={"help": "storage precision of the activations"}
    )
    batch_size: int = field(default=32, metadata={"help": "contexts per model forward pass"})
    max_tokens: int | None = field(
        default=None, metadata={"help": "stop after this many model-input tokens (none: the whole dataset)"}
    )
    shard_contexts: int | None = field(
        default=None, metadata={"help": "contexts per shard (none: as many as fit in ~128 MiB)"}
    )
    exclude_tokens: ExcludeTokens = field(
        default="bos",
        metadata={"help": "positions not cached: none, bos (BOS tokens), or special (every special token)"},
    )
    forward: Literal["auto", "transformer_lens", "fast"] = field(
        default="auto",
        metadata={"help": "model forward pass: fast (fused ops, same values up to rounding), transformer_lens, or "
                          "auto (fast when it covers the model and matches TransformerLens on a check batch)"},
    )
    check_disk: bool = field(
        default=True, metadata={"help": "refuse to start when the estimated size exceeds the free disk space"}
    )

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("CacheConfig.out is empty: give the cache directory, e.g. --out caches/toy-l2")
        if isinstance(self.hooks, str):
            self.hooks = [h.strip() for h in self.hooks.split(",") if h.strip()]
        self.hooks = list(self.hooks or [])
        if not self.hooks:
            raise ValueError("CacheConfig.hooks is empty: name at least one hook point, e.g. --hooks blocks.1.hook_resid_post")
        if len(set(self.hooks)) != len(self.hooks):
            raise ValueError(f"CacheConfig.hooks lists a hook point twice: {self.hooks}")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"CacheConfig.dtype must be one of {', '.join(DTYPE_NAMES)}; got {self.dtype!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"CacheConfig.batch_size must be a positive integer; got {self.batch_size!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"CacheConfig.max_tokens must be positive (or None for the whole dataset); got {self.max_tokens}")
        if self.shard_contexts is not None and self.shard_contexts < 1:
            raise ValueError(f"CacheConfig.shard_contexts must be positive (or None for ~128 MiB shards); got {self.shard_contexts}")
        if self.forward not in FORWARD_NAMES:
            raise ValueError(f"CacheConfig.forward must be auto, transformer_lens or fast; got {self.forward!r}")
        if self.exclude_tokens not in ("none", "bos", "special"):
            raise ValueError(f"CacheConfig.exclude_tokens must be none, bos or special; got {self.exclude_tokens!r}")
