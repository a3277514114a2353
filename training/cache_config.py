"""`CacheConfig`: the activation cache's settings (kept free of torch so the CLI stays light)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from saes.validators import one_of, require, whole_number

ExcludeTokens = Literal["none", "bos", "special"]
DTYPE_NAMES = ("fp16", "bf16", "fp32")
FORWARD_NAMES = ("auto", "transformer_lens", "fast")
EXCLUDE_NAMES = ("none", "bos", "special")


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
        metadata={"help": "positions not cached: none, bos (BOS tokens: with GPT-2, whose BOS is its EOS, "
                                  "the document separators too), or special (every special token)"},
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
        require(self.out, "CacheConfig.out is empty: give the cache directory (e.g. caches/toy-l2)", field="out")
        if isinstance(self.hooks, str):
            self.hooks = [h.strip() for h in self.hooks.split(",") if h.strip()]
        self.hooks = list(self.hooks or [])
        require(self.hooks, "CacheConfig.hooks is empty: name at least one hook point (e.g. blocks.1.hook_resid_post)",
                field="hooks")
        require(len(set(self.hooks)) == len(self.hooks), f"CacheConfig.hooks lists a hook point twice: {self.hooks}",
                field="hooks")
        one_of("CacheConfig", "dtype", self.dtype, DTYPE_NAMES)
        whole_number("CacheConfig", "batch_size", self.batch_size)
        if self.max_tokens is not None:
            whole_number("CacheConfig", "max_tokens", self.max_tokens)
        if self.shard_contexts is not None:
            whole_number("CacheConfig", "shard_contexts", self.shard_contexts)
        one_of("CacheConfig", "forward", self.forward, FORWARD_NAMES)
        one_of("CacheConfig", "exclude_tokens", self.exclude_tokens, EXCLUDE_NAMES)
