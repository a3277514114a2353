"""Settings of the API's batching: how many generations run together and how many may wait.

Plain dataclass: `saesteer api` / `saesteer serve` build their flags from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BatchConfig"]


@dataclass
class BatchConfig:
    """How the API batches concurrent requests on one model."""

    max_batch_rows: int = field(default=32, metadata={"help": "most generations decoded together in one batch"})
    max_queued: int = field(default=64, metadata={"help": "most API requests in the server at once (running or waiting); more get 503"})
    max_prefill_tokens: int = field(default=4096, metadata={"help": "most prompt tokens prefilled in one step when requests join"})
    stream_stall_s: float = field(default=30.0, metadata={
        "help": "seconds a stream may wait for its client to read on (its unread output filling the connection's "
                "buffers) before its generation is cancelled and its batch rows freed"})

    def __post_init__(self) -> None:
        for name, hard in (("max_batch_rows", 1024), ("max_queued", 4096), ("max_prefill_tokens", 1 << 20)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hard:
                raise ValueError(f"BatchConfig.{name} must be an integer in 1..{hard}, got {v!r}")
        v = self.stream_stall_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 86400:
            raise ValueError(f"BatchConfig.stream_stall_s must be a number of seconds in (0, 86400], got {v!r}")
