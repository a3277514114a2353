"""Configs of the steering stage (plain dataclasses, no torch: the CLI builds its flags from them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from steering.spec import SteeringError, normalize_positions, plain_scalar


@dataclass
class GenerationConfig:
    """How to sample continuations."""

    max_new_tokens: int = field(default=32, metadata={"help": "tokens to generate per prompt"})
    max_new_tokens_cap: int = field(
        default=512, metadata={"help": "refuse requests for more new tokens than this (guards servers and typos)"}
    )
    do_sample: bool = field(default=True, metadata={"help": "sample (true) or take the most likely token (false)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_k: int | None = field(default=None, metadata={"help": "sample among the k most likely tokens (none: all)"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling mass (none: off)"})
    freq_penalty: float = field(default=0.0, metadata={"help": "penalty for tokens already in the text"})
    # one torch stream for the batch (TransformerLens samples all rows from it); the API's engine gives each
    # row its own stream: the request's seed + i, or a fresh one it reports
    seed: int | None = field(default=0, metadata={"help": "random seed for sampling, one for all the prompts: a "
                                                          "prompt's sampled text depends on the prompts sampled "
                                                          "beside it (in saesteer api, a request that gives a "
                                                          "seed samples its choice i from seed + i alone) (none: "
                                                          "do not reseed)"})
    use_past_kv_cache: bool = field(default=True, metadata={"help": "reuse keys/values of earlier tokens"})
    stop_at_eos: bool = field(default=True, metadata={"help": "stop a row when it emits an end-of-text token (the "
                                                              "tokenizer's eos, or one generation_config.json lists: "
                                                              "Llama 3's <|eot_id|>)"})
    prepend_bos: bool | None = field(
        default=None,
        metadata={"help": "prepend BOS to prompts (none: as the SAE was trained: its saesteer.json's BOS policy, "
                          "always BOS for --bos-policy doc; else its cfg.json; else the model's default)"})

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_new_tokens_cap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SteeringError(f"{name} must be a positive integer, got {v!r}", field=name)
        if self.max_new_tokens > self.max_new_tokens_cap:
            raise SteeringError(
                f"max_new_tokens={self.max_new_tokens} is above the cap of {self.max_new_tokens_cap}; ask for fewer "
                f"tokens or raise max_new_tokens_cap", field="max_new_tokens"
            )
        if not (_is_number(self.temperature) and 0 < self.temperature < math.inf):
            raise SteeringError(f"temperature must be a positive finite number, got {self.temperature!r}",
                                field="temperature")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            raise SteeringError(f"top_k must be a positive integer or None, got {self.top_k!r}", field="top_k")
        if self.top_p is not None and not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise SteeringError(f"top_p must be in (0, 1] or None, got {self.top_p!r}", field="top_p")
        if not (_is_number(self.freq_penalty) and math.isfinite(self.freq_penalty)):
            raise SteeringError(f"freq_penalty must be a finite number, got {self.freq_penalty!r}", field="freq_penalty")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise SteeringError(f"seed must be an integer or None, got {self.seed!r}", field="seed")


def strength_list(values, what: str) -> list[float]:
    """`values` (a list, or a notebook's np.linspace(...) / torch.linspace(...)) as Python floats;
    anything but finite numbers refused, naming `what`."""
    if getattr(values, "ndim", None) == 1 and callable(getattr(values, "tolist", None)):
        values = values.tolist()
    out = []
    for v in map(plain_scalar, values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SteeringError(f"{what} must be finite numbers, got {v!r}")
        out.append(float(v))
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class SweepConfig:
    """Which strengths to try and how to pick one."""

    strengths: list[float] = field(
        default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
        metadata={"help": "strengths to try (in `unit`), e.g. 0,0.5,1,2,4"},
    )
    op: Literal["add", "clamp"] = field(default="add", metadata={"help": "add to the latent, or clamp it to the strength"})
    unit: Literal["raw", "max_act"] = field(
        default="max_act", metadata={"help": "raw activation units, or multiples of the feature's typical max"}
    )
    positions: str = field(default="all", metadata={"help": "all | prompt | generated | last | token indices"})
    min_fluency: float = field(
        default=0.0,
        metadata={"help": "recommend only strengths with mean fluency >= this (steering.fluency: surprise under the "
                          "unsteered model, repetition and punctuation penalties; unsteered text scores about 1)"},
    )
    target_concept: float | None = field(
        default=None, metadata={"help": "recommend the weakest strength reaching this concept score (none: best aggregate)"}
    )
    min_grammar: float | None = field(
        default=None,
        metadata={"help": "toy world (--topic) only: recommend only strengths whose grammatical share of sentences "
                          "(the toy validator, ground truth) is >= this (none: no such condition)"},
    )
    rule: Literal["weakest", "margin", "z"] = field(
        default="weakest",
        metadata={"help": "with target_concept, among the strengths meeting every target: the 'weakest', or "
                          "'margin': the one with the largest worst-case margin min(concept - target, fluency - "
                          "min_fluency), or 'z': that margin with each term divided by its standard error over "
                          "samples"},
    )
    perplexity: bool = field(
        default=True, metadata={"help": "also report perplexity under the unsteered model (from the fluency pass)"})

    def __post_init__(self) -> None:
        self.strengths = vals = strength_list(self.strengths, "strengths")
        if not vals:
            raise SteeringError("strengths is empty; give at least one, e.g. 0,1,2,4")
        if not any(v != 0 for v in vals):
            raise SteeringError("strengths has no non-zero strength; 0 is the unsteered baseline, add e.g. 0.5,1,2")
        if self.op not in ("add", "clamp"):
            raise SteeringError(f"op must be add or clamp for a sweep, got {self.op!r}")
        if self.unit not in ("raw", "max_act"):
            raise SteeringError(f"unit must be raw or max_act, got {self.unit!r}")
        if not 0.0 <= self.min_fluency <= 1.0:
            raise SteeringError(f"min_fluency must be in [0, 1], got {self.min_fluency}")
        if self.min_grammar is not None and not 0.0 <= self.min_grammar <= 1.0:
            raise SteeringError(f"min_grammar must be in [0, 1], got {self.min_grammar}")
        if self.target_concept is not None and not 0.0 <= self.target_concept <= 1.0:
            raise SteeringError(f"target_concept must be in [0, 1], got {self.target_concept}")
        if self.rule not in ("weakest", "margin", "z"):
            raise SteeringError(f"rule must be weakest, margin or z, got {self.rule!r}")
        if self.rule in ("margin", "z") and self.target_concept is None:
            raise SteeringError(f"rule {self.rule!r} measures the distance to target_concept; set target_concept (e.g. 0.5)")


@dataclass
class CompareConfig:
    """How `compare_methods` picks and tests (the CLI's `steer-eval` flags)."""

    candidates: int = field(default=3, metadata={"help": "SAE latents swept when found by contrast (the best one is kept)"})
    op: str = field(default="add", metadata={"help": "add or clamp, for the SAE feature"})
    positions: str = field(default="all", metadata={"help": "where every method steers: all | prompt | generated | token indices"})
    sae_strengths: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0, 3.0, 4.0], metadata={
        "help": "SAE feature strengths (multiples of the typical max, else of its mean activation on the positive prompts)"})
    vector_strengths: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0, 3.0], metadata={
        "help": "difference-of-means strengths (multiples of the difference)"})
    target_concept: float = field(default=0.5, metadata={"help": "concept score a pick should reach"})
    min_fluency: float = field(default=0.8, metadata={"help": "fluency a pick should keep"})
    rule: str = field(default="margin", metadata={"help": "weakest | margin | z (see saesteer sweep --help)"})
    dev_seed: int = field(default=1, metadata={"help": "seed of the generations that pick strengths"})
    test_seed: int = field(default=3, metadata={"help": "seed of the generations that are scored"})

    def __post_init__(self) -> None:
        if self.op not in ("add", "clamp"):
            raise SteeringError(f"op must be add or clamp, got {self.op!r}")
        if self.rule not in ("weakest", "margin", "z"):
            raise SteeringError(f"rule must be weakest, margin or z, got {self.rule!r}")
        if self.candidates < 1:
            raise SteeringError(f"candidates must be positive, got {self.candidates}")
        self.sae_strengths = strength_list(self.sae_strengths, "sae_strengths")
        self.vector_strengths = strength_list(self.vector_strengths, "vector_strengths")
        if not self.sae_strengths or not self.vector_strengths:
            raise SteeringError("give at least one strength for each method")
        if self.dev_seed == self.test_seed:
            raise SteeringError("dev_seed and test_seed must differ: a method must not be scored on the samples that picked it")
        positions = normalize_positions(self.positions)
        if isinstance(positions, tuple):  # token indices: as ints (np.int64 ones from a notebook too)
            self.positions = list(positions)
