"""The examples auto-interp works on: token windows with per-token activations of one latent.

`Example` is the unit (a list of token strings plus one activation per token); `LatentExamples`
groups what the feature store holds for one latent (top-activating windows, windows sampled
across activation quantiles, and random contexts where the latent does not fire).
`split_examples` decides, deterministically from (seed, latent), which examples the explainer sees
and which are held out for scoring, so a re-run builds byte-identical prompts (and so hits the
response cache).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Sequence

__all__ = [
    "Example",
    "LatentEvidence",
    "LatentExamples",
    "ExampleSplit",
    "active_positions",
    "crop_example",
    "split_examples",
    "latent_rng",
]


@dataclass(frozen=True)
class Example:
    """One token window: `tokens[i]` is a decoded token string, `acts[i]` the latent's activation
    on it. `ref` identifies the example in the store (kept in label provenance); `kind` is "top",
    "quantile" or "random"; `quantile` the quantile bin for quantile examples."""

    tokens: tuple[str, ...]
    acts: tuple[float, ...]
    ref: str = ""
    kind: str = "top"
    quantile: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(str(t) for t in self.tokens))
        object.__setattr__(self, "acts", tuple(float(a) for a in self.acts))
        if len(self.tokens) != len(self.acts):
            raise ValueError(
                f"Example {self.ref!r}: {len(self.tokens)} tokens but {len(self.acts)} activations; "
                "give one activation per token"
            )

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)


@dataclass(frozen=True)
class LatentEvidence:
    """What the store knows about a latent besides its examples: the tokens its decoder direction
    promotes / suppresses through the unembedding (logit effects, best first, as (token, value)),
    and its neighbours (decoder cosine and co-firing), each as (id, similarity, the tokens that
    neighbour promotes). All empty when the store has none (e.g. built without a model)."""

    promoted: tuple[tuple[str, float], ...] = ()
    suppressed: tuple[tuple[str, float], ...] = ()
    neighbours: tuple[tuple[int, float, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class LatentExamples:
    """What the store holds for one latent (any of the lists may be empty)."""

    latent: int
    top: tuple[Example, ...] = ()
    quantile: tuple[Example, ...] = ()
    random: tuple[Example, ...] = ()
    max_act: float | None = None  # the latent's max activation over the dataset, if known
    evidence: LatentEvidence = field(default_factory=LatentEvidence)

    @property
    def activating(self) -> tuple[Example, ...]:
        return tuple(e for e in self.top + self.quantile if e.max_act > 0)


@dataclass(frozen=True)
class ExampleSplit:
    """Which examples explain and which score (disjoint among the activating ones)."""

    explain: tuple[Example, ...]
    detect_pos: tuple[Example, ...]
    detect_neg: tuple[Example, ...]
    fuzz: tuple[Example, ...]
    background: tuple[Example, ...] = field(default=())  # non-activating contexts for statistics
    evidence: LatentEvidence = field(default_factory=LatentEvidence)


def latent_rng(seed: int, latent: int, purpose: str) -> random.Random:
    """A random generator fixed by (seed, latent, purpose): stable across runs and processes."""
    digest = hashlib.sha256(f"{seed}:{latent}:{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def active_positions(ex: Example, mark_threshold: float) -> list[int]:
    """Positions to mark as activating: act > 0 and act >= mark_threshold * the example's max."""
    peak = ex.max_act
    if peak <= 0:
        return []
    cut = mark_threshold * peak
    return [i for i, a in enumerate(ex.acts) if a > 0 and a >= cut]


def crop_example(ex: Example, max_tokens: int, before_frac: float = 0.75) -> Example:
    """At most `max_tokens` tokens, placed around the peak activation (3/4 of them before it)."""
    n = len(ex.tokens)
    if n <= max_tokens:
        return ex
    peak = max(range(n), key=lambda i: ex.acts[i]) if ex.max_act > 0 else n // 2
    start = max(0, min(peak - int(max_tokens * before_frac), n - max_tokens))
    sl = slice(start, start + max_tokens)
    return Example(ex.tokens[sl], ex.acts[sl], ex.ref, ex.kind, ex.quantile)


def _spread(items: Sequence[Example], k: int) -> list[Example]:
    """k items spread evenly over `items` (keeps the range of activation strengths)."""
    if k >= len(items):
        return list(items)
    if k <= 0:
        return []
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


def split_examples(
    lex: LatentExamples,
    *,
    n_explain_top: int,
    n_explain_quantile: int,
    n_detect: int,
    n_fuzz: int,
    seed: int,
) -> ExampleSplit:
    """Choose explanation examples and held-out scoring examples for one latent.

    The explainer sees the first `n_explain_top` top examples and `n_explain_quantile` quantile
    examples spread over the quantile bins. Scoring uses activating examples the explainer did
    not see (remaining quantile examples first, as they cover weak activations too, then remaining
    top examples): `n_detect` positives with as many random non-activating contexts, and `n_fuzz`
    activating examples for fuzzing (fuzzing may reuse detection positives when examples are
    scarce: it asks a different question about them)."""
    top = [e for e in lex.top if e.max_act > 0]
    quant = sorted((e for e in lex.quantile if e.max_act > 0), key=lambda e: (e.quantile or 0, e.ref))
    explain = top[:n_explain_top] + _spread(quant, n_explain_quantile)
    seen = {id(e) for e in explain}
    held = [e for e in quant if id(e) not in seen] + [e for e in top if id(e) not in seen]
    rng = latent_rng(seed, lex.latent, "split")
    rng.shuffle(held)
    detect_pos = held[:n_detect]
    rest = held[n_detect:]
    fuzz = (rest + detect_pos)[:n_fuzz]
    negs = [e for e in lex.random if e.max_act <= 0]
    rng.shuffle(negs)
    detect_neg = negs[:n_detect]
    background = tuple(negs[n_detect:]) or tuple(negs)
    return ExampleSplit(tuple(explain), tuple(detect_pos), tuple(detect_neg), tuple(fuzz), background, lex.evidence)
