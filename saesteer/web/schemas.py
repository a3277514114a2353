"""The JSON shapes of the web API (they also feed the HTML templates and /openapi.json).

Request models carry hard ceilings (`HARD_LIMITS`) in their field constraints so the OpenAPI
schema documents them; the configured, usually tighter, `Limits` are checked in the routes.
Strengths must be finite (`allow_inf_nan=False`): Python's JSON parser accepts NaN/Infinity.
"""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from saesteer.web.config import HARD_LIMITS

T = TypeVar("T")

SortKey = Literal["latent", "label", "score", "frequency", "n_fires", "max_act", "mean_act", "level"]
Health = Literal["ok", "dead", "dense", "bos_only", "single_position"]
EditOp = Literal["add", "clamp", "scale", "ablate"]
StrengthUnit = Literal["raw", "max_act"]
PositionName = Literal["all", "prompt", "generated", "last"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored


class Page(_Out, Generic[T]):
    items: list[T]
    total: int = Field(description="rows matching the query, over all pages (see total_exact)")
    offset: int
    limit: int
    next_offset: int | None = Field(description="offset of the next page, or null on the last")
    total_exact: bool = Field(True, description="false: a search counted its hits only up to this page and "
                                                "one more: at least `total` rows match")


class StoreInfo(_Out):
    id: str = Field(description="the id used in URLs (chosen by the server from its --store list)")
    name: str
    model: str | None = None
    hook: str | None = None
    architecture: str | None = None
    d_sae: int
    n_features: int
    levels: list[int] = Field(default_factory=list, description="Matryoshka levels present (empty if not Matryoshka)")
    has_labels: bool = False
    can_steer: bool = False
    browse_only_reason: str | None = Field(None, description="why the store cannot run the model (when can_steer is false)")
    tokens_seen: int | None = None
    score_method: str | None = Field(None, description="the score shown as 'score' (sorting and filtering use it too)")
    replaced_note: str | None = Field(None, description="set when the store's file was rebuilt, replaced, moved or "
                                      "deleted after the server opened it: the server still shows the one it opened")


class SnippetPart(_Out):
    text: str
    match: bool


class FeatureSummary(_Out):
    latent: int
    label: str | None = None
    score: float | None = Field(None, description="the current label's main score (balanced accuracy of detection), if scored")
    frequency: float | None = Field(None, description="fraction of tokens on which the feature fires")
    n_fires: int | None = None
    max_act: float | None = None
    mean_act: float | None = Field(None, description="mean activation where it fires")
    typical_max_act: float | None = Field(None, description="the 'x max' unit of steering strengths")
    health: Health = Field("ok", description="'ok', or the first of the store's flags")
    flags: list[str] = Field(default_factory=list)
    level: int | None = Field(None, description="Matryoshka level (0 = innermost), if any")
    parent: int | None = None
    recommended_strength: float | None = Field(None, description="in multiples of typical_max_act ('x max')")
    snippet: str | None = Field(None, description="search only: the matching text")
    snippet_parts: list[SnippetPart] | None = Field(None, description="search only: the matching text in pieces, "
                                                                      "each saying whether it is a match")
    similarity: float | None = Field(None, description="search by meaning only: cosine of the label's and the "
                                                       "query's embeddings")
    output_score: float | None = Field(None, description="does steering with the feature move text toward its label? "
                                                         "(win rate; 0.5 = no move), if scored")


class MapPoint(_Out):
    latent: int
    x: float
    y: float
    label: str | None = None
    level: int | None = Field(None, description="Matryoshka level")
    health: Health = "ok"
    score: float | None = Field(None, description="the current label's main score")
    output_score: float | None = Field(None, description="does steering move text toward the label (0.5 = no)")
    frequency: float | None = None


class MapData(_Out):
    layout: str = Field(description="the layout shown: <source>-<method>, e.g. decoder-umap")
    layouts: list[str] = Field(description="every stored layout")
    source: str
    method: str
    score_method: str
    points: list[MapPoint]


class Example(_Out):
    id: int | None = None
    tokens: list[str] = Field(description="each token's piece of the window's text: joined, they are the text as the "
                                          "tokenizer decodes it (a character split over tokens is on the last of them)")
    acts: list[float]
    activation: float = Field(description="activation at the example's centre token")
    max_act: float
    kind: str = "top"
    quantile: float | None = Field(None, description="quantile examples: fraction of firings below this one")
    centre: int | None = Field(None, description="index of the centre token in `tokens`")
    # 0..10 per token, relative to the feature's max activation: the colour class of the token.
    shade: list[int] = Field(default_factory=list)


class Histogram(_Out):
    edges: list[float] = Field(description="bin edges (len(counts) + 1)")
    counts: list[int]
    log_scale: bool = False


class TokenEffect(_Out):
    token: str
    token_id: int | None = None
    value: float


class LogitEffects(_Out):
    positive: list[TokenEffect] = Field(default_factory=list)
    negative: list[TokenEffect] = Field(default_factory=list)


class Neighbour(_Out):
    latent: int
    similarity: float
    count: int | None = Field(None, description="co-firing neighbours: in how many of this feature's sampled firing "
                                                "events (at most the build's n_quantile) the other one fired")
    label: str | None = None


class FeatureRef(_Out):
    latent: int
    label: str | None = None
    score: float | None = Field(None, description="parent/child link strength, e.g. P(parent fires | child fires)")


class ScoreInfo(_Out):
    method: str
    value: float
    n_examples: int | None = None
    offline: bool | None = None
    created: str | None = None


class LabelInfo(_Out):
    text: str
    explanation: str | None = None
    judge_model: str | None = None
    judge_kind: str | None = None
    prompt_version: str | None = None
    offline: bool = False
    created: str | None = None
    source: str | None = None  # where an imported label came from ("Neuronpedia gpt2-small/6-res-jb", "delphi run x")
    source_url: str | None = None  # its page there (Neuronpedia's)


class FeatureDetail(_Out):
    store: str
    summary: FeatureSummary
    label: LabelInfo | None = None
    scores: list[ScoreInfo] = Field(default_factory=list)
    stats: dict[str, float | int | None] = Field(default_factory=dict)
    histogram: Histogram | None = None
    top_examples: list[Example] = Field(default_factory=list)
    quantile_examples: list[Example] = Field(default_factory=list)
    logit_effects: LogitEffects | None = None
    decoder_neighbours: list[Neighbour] = Field(default_factory=list, description="by decoder cosine")
    coact_neighbours: list[Neighbour] = Field(default_factory=list, description="by co-firing (Jaccard)")
    parent: FeatureRef | None = None
    children: list[FeatureRef] = Field(default_factory=list)


class FireRequest(_In):
    text: str = Field(min_length=1, max_length=int(HARD_LIMITS["max_text_chars"]))
    top_k: int = Field(5, ge=1, le=50, description="features shown per token")


class FeatureAct(_Out):
    latent: int
    act: float
    label: str | None = None


class FiringFeature(_Out):
    latent: int
    label: str | None = None
    max_act: float = Field(description="largest activation on this text")
    count: int = Field(description="tokens it fires on")
    shade: list[int] = Field(description="0..10 per token of the text, relative to this feature's typical max")
    acts: list[float]


class FireResult(_Out):
    tokens: list[str] = Field(description="each token's piece of the text (joined: the text as the tokenizer decodes it)")
    token_shade: list[int] = Field(default_factory=list, description="0..10 per token: its strongest feature, relative to that feature's max")
    features: list[FiringFeature] = Field(description="features firing anywhere on the text, strongest first")
    per_token: list[list[FeatureAct]] = Field(description="for each token, its strongest features")


class Edit(_In):
    latent: int = Field(ge=0, le=2**31 - 1, description="the latent's index in the SAE")
    op: EditOp = Field("add", description="add: add to the latent; clamp: set it; scale: multiply it; ablate: zero it")
    value: float = Field(
        0.0, allow_inf_nan=False, ge=-HARD_LIMITS["max_abs_strength"], le=HARD_LIMITS["max_abs_strength"],
        description="add/clamp: the amount (see unit); scale: the factor; ablate: ignored",
    )
    unit: StrengthUnit = Field("max_act", description="'max_act': multiples of the feature's typical max activation; 'raw': activation units (scale/ablate: raw)")
    positions: PositionName = Field("all", description="which tokens the edit applies to")


class GenerateOptions(_In):
    prompt: str = Field(min_length=1, max_length=int(HARD_LIMITS["max_text_chars"]))
    max_new_tokens: int = Field(24, ge=1, le=int(HARD_LIMITS["max_new_tokens"]))
    temperature: float = Field(0.0, ge=0.0, le=5.0, allow_inf_nan=False, description="0 = greedy (most likely token)")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class SteerRequest(GenerateOptions):
    edits: list[Edit] = Field(min_length=1, max_length=int(HARD_LIMITS["max_edits"]))


class SteerResult(_Out):
    prompt: str
    default: str = Field(description="continuation without steering")
    steered: str = Field(description="continuation with the edits applied")
    edits: list[Edit]


class SweepRequest(GenerateOptions):
    edit: Edit = Field(description="the edit whose value is swept (its own value is ignored)")
    values: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1, max_length=int(HARD_LIMITS["max_sweep_points"]))


class SweepPoint(_Out):
    value: float = Field(description="the edit's value (in the edit's unit)")
    concept: float | None = Field(None, description="see SweepResult.concept")
    fluency: float | None = Field(None, description="see SweepResult.fluency")
    aggregate: float | None = Field(None, description="harmonic mean of concept and fluency")
    perplexity: float | None = Field(None, description="perplexity of the continuation under the unsteered model")
    text: str = Field("", description="the steered continuation at this value")


class SweepResult(_Out):
    latent: int
    op: EditOp
    unit: StrengthUnit
    points: list[SweepPoint]
    recommended: float | None = Field(None, description="the non-zero value with the best aggregate score among "
                                                          "those raising the concept above the unsteered value's "
                                                          "(ties: the weaker); null: no value works")
    verdict: str = Field("", description="the recommendation in words, or that no value works")
    concept: str = Field(description="what `concept` measures")
    fluency: str = Field(description="what `fluency` measures")


class ErrorOut(_Out):
    detail: str
