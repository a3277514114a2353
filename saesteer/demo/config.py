"""What a demo run is asked to do (`DemoConfig`), where it keeps its work (`DemoPaths`), and the
training run it implies (`run_config`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saes.errors import SaesteerError

STAGES = ("model", "cache", "train", "features", "label", "steer")
MARKER = "demo.json"
AUTO = "auto"


class DemoError(SaesteerError, RuntimeError):
    """The demo cannot go on; the message says why and what to do."""


@dataclass
class DemoConfig:
    """The toy-world demo: how much to cache and train, and what to show."""

    out: str = field(default="runs/demo", metadata={"help": "work folder (re-running reuses the finished stages in it)"})
    hook: str = field(default="blocks.2.hook_resid_post",
                      metadata={"help": "hook point of the toy model (4 layers, d_model 128) to train the SAE on"})
    cache_tokens: int = field(default=150_000, metadata={"help": "model-input tokens to cache (BOS tokens are not cached)"})
    train_tokens: int = field(default=400_000,
                              metadata={"help": "training tokens; more than the cache holds means several passes over it"})
    d_sae: int = field(default=1024, metadata={"help": "latents of the Matryoshka SAE"})
    k: int = field(default=16, metadata={"help": "active latents per token (BatchTopK: on average over the batch)"})
    matryoshka_widths: list[int] = field(default_factory=list,
                                         metadata={"help": "nested prefix widths ending at d_sae (empty: ~4x steps)"})
    batch_size: int = field(default=4096, metadata={"help": "tokens per training step"})
    dead_tokens: int = field(default=200_000,
                             metadata={"help": "dead window cap: a latent silent for the last min(this, a tenth of the training "
                                               "tokens) counts as dead (AuxK revives it)"})
    ce_contexts: int = field(default=64, metadata={"help": "validation contexts for CE loss recovered (0: skip)"})
    label_limit: int | None = field(
        default=None,
        metadata={"help": "label at most this many latents, most frequent first (none: all of them with the offline "
                          "judge, 100 with an LLM judge)"},
    )
    steer_topic: str = field(
        default=AUTO,
        metadata={"help": "toy-world topic of the steering example, or 'auto': the topics whose sparse latents match "
                          "them best (token F1)"},
    )
    steer_candidates: int = field(
        default=3, metadata={"help": "sparse topic latents (best concept F1 first) swept on the dev samples"})
    steer_strengths: list[float] = field(
        default_factory=lambda: [1.0, 2.0, 3.0, 4.0, 6.0, 8.0],
        metadata={"help": "strengths of the steering sweep, in multiples of the feature's typical max activation"},
    )
    steer_samples: int = field(
        default=16, metadata={"help": "unconditional dev samples per strength (seed --seed) that pick the latent and strength"})
    steer_test_samples: int = field(
        default=32, metadata={"help": "held-out unconditional samples (seed --seed + 1) the steering figures are reported on"})
    steer_positions: str = field(
        default="0,1,2,3,4",
        metadata={"help": "token positions the steering example edits (0 = BOS; 'all' for every position): the "
                          "start of a text sets its topic and the toy model keeps it, so later sentences stay fluent"},
    )
    steer_new_tokens: int = field(default=32, metadata={"help": "tokens generated per sample"})
    showcase: int = field(default=6, metadata={"help": "labelled features shown in the summary"})
    seed: int = field(default=0, metadata={"help": "seed of training, sampling and generation"})

    def __post_init__(self) -> None:
        def pos(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
                raise ValueError(f"DemoConfig.{name} must be a {'non-negative' if allow_zero else 'positive'} integer; got {v!r}")

        for n in ("cache_tokens", "train_tokens", "d_sae", "k", "batch_size", "dead_tokens", "steer_samples",
                  "steer_test_samples", "steer_candidates", "steer_new_tokens"):
            pos(n)
        for n in ("ce_contexts", "showcase", "seed"):
            pos(n, allow_zero=True)
        if not self.out:
            raise ValueError("DemoConfig.out is empty: give a work folder, e.g. --out runs/demo")
        if self.k > self.d_sae:
            raise ValueError(f"DemoConfig.k ({self.k}) must not exceed d_sae ({self.d_sae})")
        if self.label_limit is not None and (isinstance(self.label_limit, bool) or self.label_limit < 0):
            raise ValueError(f"DemoConfig.label_limit must be >= 0 or none; got {self.label_limit!r}")
        self.matryoshka_widths = [int(w) for w in self.matryoshka_widths]
        self.steer_strengths = [float(s) for s in self.steer_strengths]
        from steering.spec import normalize_positions

        normalize_positions(self.steer_positions)  # a clear error for a bad --steer-positions
        if not any(v != 0 for v in self.steer_strengths):
            raise ValueError("DemoConfig.steer_strengths needs a non-zero strength; give e.g. 1,2,3,4,6,8")
        from toyworld.lexicon import TOPICS

        if self.steer_topic != AUTO and self.steer_topic not in TOPICS:
            raise ValueError(f"DemoConfig.steer_topic must be '{AUTO}' or a toy-world topic ({', '.join(TOPICS)}); "
                             f"got {self.steer_topic!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DemoPaths:
    out: Path

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    @property
    def heldout_cache(self) -> Path:
        return self.out / "heldout-cache"

    @property
    def run(self) -> Path:
        return self.out / "train"

    @property
    def store(self) -> Path:
        return self.out / "features.db"

    @property
    def steering(self) -> Path:
        return self.out / "steering"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    @property
    def marker(self) -> Path:
        return self.out / MARKER

    def named(self) -> dict[str, Path]:
        """Every path of the work folder by name (`out` and each property above), for summary.json."""
        names = [f.name for f in dataclasses.fields(self)]
        names += [k for k, v in vars(type(self)).items() if isinstance(v, property)]
        return {k: getattr(self, k) for k in names}


def holdout_rows(cfg: DemoConfig) -> int:
    """The held-out rows of the demo's training run (scale, b_dec, held-out EV and dead figures)."""
    return min(16384, max(cfg.batch_size, cfg.cache_tokens // 10))


def run_config(cfg: DemoConfig, progress: bool = True):
    """The training run's `training.RunConfig` for this demo config."""
    from training.config import CheckpointConfig, EvalConfig, LogConfig, OptimConfig, RunConfig, SAESpec, TrainConfig

    return RunConfig(
        saes=[SAESpec("matryoshka_batchtopk", d_sae=cfg.d_sae, k=cfg.k, matryoshka_widths=list(cfg.matryoshka_widths))],
        train=TrainConfig(total_tokens=cfg.train_tokens, batch_size=cfg.batch_size, seed=cfg.seed,
                          dead_tokens=cfg.dead_tokens, holdout_tokens=holdout_rows(cfg)),
        optim=OptimConfig(),
        checkpoint=CheckpointConfig(every_tokens=max(cfg.train_tokens // 3, cfg.batch_size)),
        eval=EvalConfig(every_tokens=0, ce_contexts=cfg.ce_contexts),
        log=LogConfig(log_every=10, progress=progress),
    )
