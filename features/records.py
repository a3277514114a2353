"""Plain records the feature store returns (and auto-interp / steering / the web app consume)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ExampleKind = Literal["top", "quantile", "negative"]
JudgeKind = Literal["openai", "anthropic", "local", "offline", "human", "delphi", "neuronpedia"]
# imported labels: "delphi" from an EleutherAI delphi run (`saesteer label --import-delphi`,
# autointerp/delphi_store.py); "neuronpedia" from Neuronpedia's explanations (`saesteer label
# --import-neuronpedia`, features/neuronpedia_import.py)
JUDGE_KINDS = ("openai", "anthropic", "local", "offline", "human", "delphi", "neuronpedia")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# search snippets mark matches with two of Unicode's noncharacters, which it keeps for a program's own use
# and text interchanged does not hold (private-use characters would not do: Nerd-font and Powerline
# icons in code and shell prompts are those, U+E000 among them)
SNIPPET_OPEN, SNIPPET_CLOSE = "\ufdd0", "\ufdd1"


@dataclass(frozen=True)
class FeatureStats:
    n_fires: int
    freq: float  # fraction of the cache's tokens (rows) on which the latent fires
    mean_act: float | None  # mean activation over its firings
    std_act: float | None
    max_act: float
    sum_act: float
    typical_max_act: float | None  # median of the top-k activations: steering's "typical max"
    q50: float | None  # activation percentiles over firings (from the histogram)
    q90: float | None
    q99: float | None
    min_pos: int | None  # first / last position (within a context) it fired at
    max_pos: int | None
    bos_fires: int
    decoder_norm: float
    flags: tuple[str, ...]  # subset of: dead, dense, bos_only, single_position


@dataclass(frozen=True)
class Histogram:
    """Counts of the activation over firings in bins [i*bin_width, (i+1)*bin_width)."""

    bin_width: float
    counts: list[int]

    @property
    def edges(self) -> list[float]:
        return [i * self.bin_width for i in range(len(self.counts) + 1)]


@dataclass(frozen=True)
class Example:
    id: int  # examples.id (auto-interp cites these in label provenance)
    latent: int
    kind: str  # "top" | "quantile" | "negative"
    rank: int
    activation: float  # at the centre token (0 for negatives)
    quantile: float | None  # quantile examples: fraction of the latent's firings below `activation`
    seq_index: int  # context index in the cache
    position: int  # position of the centre token in its context
    centre: int  # index of the centre token in token_ids
    token_ids: list[int]
    tokens: list[str]  # each token's piece of `text`: "".join(tokens) == text (features.tokentext);
    #                    empty strings when the store was built without a tokenizer
    acts: list[float]  # the latent's activation at every token of the window
    text: str | None  # the window as the tokenizer decodes it, a cut byte run but its cut bytes (features.tokentext)


def without_start_bos(ex: Example, bos_id: int | None) -> Example:
    """The example as the judge and the reader see it: without the BOS that starts its context (a
    marker the model reads, not text: "<|begin_of_text|>" in a window says nothing about the
    latent), unless the latent fires on it. The store keeps the window as the model read it."""
    j = ex.centre - ex.position  # the context's first token, in the window
    if bos_id is None or len(ex.token_ids) < 2 or not 0 <= j < len(ex.token_ids) or ex.token_ids[j] != bos_id \
            or ex.acts[j] > 0:
        return ex
    tokens = ex.tokens[:j] + ex.tokens[j + 1:]
    return dataclasses.replace(
        ex, token_ids=ex.token_ids[:j] + ex.token_ids[j + 1:], tokens=tokens, acts=ex.acts[:j] + ex.acts[j + 1:],
        centre=ex.centre - 1 if ex.centre > j else min(ex.centre, len(tokens) - 1),
        text=ex.text if ex.text is None or not any(ex.tokens) else "".join(tokens))


@dataclass(frozen=True)
class TokenEffect:
    token_id: int
    token: str
    value: float


@dataclass(frozen=True)
class LogitEffects:
    promoted: list[TokenEffect]
    suppressed: list[TokenEffect]


@dataclass(frozen=True)
class Neighbour:
    latent: int
    score: float  # cosine (decoder) or estimated Jaccard index of co-firing (coact)
    count: int | None = None  # coact: in how many of this latent's sampled firings (<= n_quantile) the other fired
    label: str | None = None


@dataclass(frozen=True)
class Correlated:
    """A latent correlated with another by activation (over every token of the build's pass)."""

    latent: int
    pearson: float  # Pearson correlation of the two activations
    cossim: float  # cosine similarity of the two activation vectors
    label: str | None = None


@dataclass(frozen=True)
class ParentLink:
    parent_latent: int
    child_latent: int
    coact: float | None  # P(parent fires | child fires)
    cosine: float | None  # decoder cosine
    method: str  # "coact" | "decoder"


@dataclass
class LabelProvenance:
    """Who produced a label or score, how, and from what."""

    judge_model: str  # e.g. "gpt-4o-mini", "Qwen/Qwen2.5-7B-Instruct", "offline-heuristic"
    # "openai" (any OpenAI-compatible server), "anthropic" (Anthropic's Messages API), "local", "offline", "human";
    # imported: "delphi", "neuronpedia"
    judge_kind: str
    prompt_version: str
    examples_used: list[int] = field(default_factory=list)  # examples.id values shown to the judge
    params: dict[str, Any] = field(default_factory=dict)  # temperature, n, endpoint name, ...
    created_at: str | None = None  # ISO time; filled in when written
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.judge_kind not in JUDGE_KINDS:
            raise ValueError(f"LabelProvenance.judge_kind must be one of {', '.join(JUDGE_KINDS)}; got {self.judge_kind!r}")
        if not self.judge_model:
            raise ValueError("LabelProvenance.judge_model is empty; name the model (or the offline method)")
        if not self.prompt_version:
            raise ValueError("LabelProvenance.prompt_version is empty; give the prompt's version string")

    @property
    def offline(self) -> bool:
        return self.judge_kind == "offline"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["offline"] = self.offline
        return d


@dataclass(frozen=True)
class Label:
    id: int
    latent: int
    text: str
    explanation: str | None
    created_at: str
    provenance: LabelProvenance | None
    provenance_id: int | None


@dataclass(frozen=True)
class Score:
    id: int
    latent: int
    label_id: int | None
    method: str  # e.g. "detection", "fuzzing", "simulation"
    value: float
    n_examples: int | None
    details: dict[str, Any] | None
    created_at: str
    provenance_id: int | None
    offline: bool | None


@dataclass(frozen=True)
class ScoreInput:
    method: str
    value: float
    n_examples: int | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class FeatureSummary:
    """One row of a feature list."""

    latent: int
    n_fires: int
    freq: float
    mean_act: float | None
    max_act: float
    typical_max_act: float | None
    flags: tuple[str, ...]
    level: int | None
    parent_latent: int | None
    label: str | None
    recommended_strength: float | None


@dataclass(frozen=True)
class FeatureRecord:
    """Everything the store knows about one latent."""

    latent: int
    stats: FeatureStats
    histogram: Histogram
    top_examples: list[Example]
    quantile_examples: list[Example]
    negative_examples: list[Example]
    logits: LogitEffects | None  # None when the build had no model
    decoder_neighbours: list[Neighbour]
    coact_neighbours: list[Neighbour]
    level: int | None  # Matryoshka level (0 = innermost), None for other SAEs
    parent: ParentLink | None
    children: list[ParentLink]
    label: Label | None  # the current (latest) label
    scores: list[Score]  # scores of the current label (and unlabelled scores), newest first
    recommended_strength: float | None
    strength_source: str | None
    correlated: list[Correlated] = field(default_factory=list)  # descending Pearson; empty in older stores

    @property
    def flags(self) -> tuple[str, ...]:
        return self.stats.flags


@dataclass(frozen=True)
class SearchHit:
    latent: int
    score: float  # bm25 relevance (higher is better)
    label: str | None
    snippet: str  # matching text, each match between SNIPPET_OPEN and SNIPPET_CLOSE (see `parts`)
    freq: float

    @property
    def parts(self) -> list[tuple[str, bool]]:
        """The snippet as (text, is_match) pieces, in order (the text may hold any character but the marks)."""
        out: list[tuple[str, bool]] = []
        for k, piece in enumerate(self.snippet.split(SNIPPET_OPEN)):
            text, sep, rest = piece.partition(SNIPPET_CLOSE)
            if k == 0 or not sep:
                out.append((piece, False))
                continue
            out.append((text, True))
            out.append((rest, False))
        return [(t, m) for t, m in out if t]

    @property
    def text(self) -> str:
        """The snippet without match marks."""
        return "".join(t for t, _ in self.parts)


@dataclass
class FeatureFilter:
    """Which features `list_features` returns (all conditions must hold; None = no condition)."""

    min_freq: float | None = None
    max_freq: float | None = None
    min_max_act: float | None = None
    flags: list[str] | None = None  # must carry all of these flags
    exclude_flags: list[str] | None = None  # must carry none of these
    alive_only: bool = False  # leave out dead latents
    has_label: bool | None = None
    label_contains: str | None = None  # substring of the current label, compared folded (features.store.folding)
    level: int | None = None
    parent_latent: int | None = None
    latents: list[int] | None = None
    score_method: str | None = None  # with min_score: latest score of this method >= min_score
    min_score: float | None = None

    @classmethod
    def coerce(cls, value: "FeatureFilter | dict | None") -> "FeatureFilter":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise ValueError(f"unknown filter key(s) {', '.join(unknown)}; valid: {', '.join(cls.__dataclass_fields__)}")
            return cls(**value)
        raise TypeError(f"filter must be a FeatureFilter or a dict, got {type(value).__name__}")


@dataclass(frozen=True)
class ConceptMatch:
    concept: str
    latent: int
    f1: float
    precision: float
    recall: float
    rank: int = 0
