"""Configuration of the feature-store build (one dataclass; fields become CLI flags).

Memory of the pass state, in bytes, for F latents (W = window_before + 1 + window_after):
    F * (4*W*(top_k + n_quantile) + 8*n_quantile*coact_kmax + 8*hist_bins + ~120) + negative_pool * F
e.g. ~130 MiB for F = 8192 with the defaults, ~1 GiB for F = 65536; it never grows with tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from saes.validators import finite_number, whole_number


@dataclass
class BuildConfig:
    """Feature store build: what to keep per latent and how the streaming pass runs."""

    top_k: int = field(default=20, metadata={"help": "top activating contexts kept per latent"})
    n_quantile: int = field(
        default=32,
        metadata={"help": "random firing contexts kept per latent (a uniform reservoir), each tagged with its "
                          "quantile of the latent's activation distribution; also the co-activation sample"},
    )
    n_negative: int = field(default=20, metadata={"help": "random non-activating contexts kept per latent"})
    negative_pool: int = field(
        default=1024, metadata={"help": "random contexts sampled from the whole cache to draw the negatives from"}
    )
    window_before: int = field(default=24, metadata={"help": "tokens shown before the activating token"})
    window_after: int = field(default=8, metadata={"help": "tokens shown after the activating token"})
    hist_bins: int = field(
        default=64, metadata={"help": "activation histogram bins per latent (a power of two; bins span [0, 2^e) "
                                      "with 2^e the smallest power of two above the latent's max)"}
    )
    batch_rows: int = field(default=4096, metadata={"help": "rows (tokens) per batch of the pass, rounded to whole contexts"})
    dense_threshold: float = field(default=0.1, metadata={"help": "flag a latent 'dense' when it fires on more than this fraction of tokens"})
    flag_min_fires: int = field(
        default=10, metadata={"help": "a latent needs at least this many firings before 'bos_only' / 'single_position' are flagged"}
    )
    n_neighbours: int = field(default=10, metadata={"help": "decoder-cosine and co-activation neighbours kept per latent"})
    coact_kmax: int = field(
        default=32,
        metadata={"help": "co-activation sample: latents kept per sampled token (the strongest, when more are active)"},
    )
    n_logits: int = field(default=10, metadata={"help": "top promoted and suppressed tokens kept per latent"})
    parent_min_coact: float = field(
        default=0.5, metadata={"help": "Matryoshka: link a latent to a lower-level parent that fires on at least this fraction of its firings"}
    )
    parent_min_lift: float = field(
        default=2.0,
        metadata={"help": "Matryoshka: ... and whose firing rate on the latent's firings is at least this many times its "
                          "overall rate (so that a generic, dense latent is nobody's parent)"},
    )
    parent_min_cos: float = field(
        default=0.5, metadata={"help": "Matryoshka: else link it to the lower-level latent whose decoder cosine is at least this"}
    )
    checkpoint_rows: int = field(
        default=1 << 22, metadata={"help": "save the pass state (for resume) every this many rows; 0 disables mid-pass checkpoints"}
    )
    write_block: int = field(default=256, metadata={"help": "latents written per SQLite transaction"})
    seed: int = field(default=0, metadata={"help": "seed of the random example and negative sampling"})

    def __post_init__(self) -> None:
        for name in ("top_k", "hist_bins", "batch_rows", "write_block", "n_logits", "n_neighbours", "coact_kmax"):
            whole_number("BuildConfig", name, getattr(self, name))
        for name in ("n_quantile", "n_negative", "negative_pool", "window_before", "window_after", "flag_min_fires",
                     "checkpoint_rows", "seed"):
            whole_number("BuildConfig", name, getattr(self, name), minimum=0)
        if self.hist_bins & (self.hist_bins - 1):
            raise ValueError(f"BuildConfig.hist_bins must be a power of two (e.g. 64), got {self.hist_bins}")
        if self.negative_pool < self.n_negative:
            raise ValueError(
                f"BuildConfig.negative_pool ({self.negative_pool}) must be at least n_negative ({self.n_negative}); raise it"
            )
        for name in ("dense_threshold", "parent_min_coact", "parent_min_cos"):
            finite_number("BuildConfig", name, getattr(self, name), 0.0, 1.0)
        finite_number("BuildConfig", "parent_min_lift", self.parent_min_lift, lo=0.0)

    @property
    def window(self) -> int:
        return self.window_before + 1 + self.window_after

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    # Fields whose change changes the store's content (all but the performance knobs).
    def content_fields(self) -> dict[str, Any]:
        d = self.to_json()
        for k in ("checkpoint_rows", "write_block"):  # batch_rows stays: it sets the float summation order
            d.pop(k)
        return d
