"""Dose-response sweeps: generate at a range of strengths, score each, pick a recommended strength.

    res = sweep(model, sae, latent=123, prompts=prompts, scorer=scorer,
                config=SweepConfig(strengths=[0, 0.5, 1, 2, 4], op="add", unit="max_act"),
                typical_max=store_max)
    write_sweep_html(res, "sweep_123.html")     # concept, fluency and aggregate against strength
    res.recommended                             # strength (in the sweep's unit), or None: no strength works
    res.verdict                                 # says which, and by what rule

Every point is scored for concept by the scorer and for fluency by `steering.fluency` (one
definition for every sweep). The unsteered baseline is strength 0 of an add sweep; a clamp sweep's
strength 0 is an ablation, so its baseline is generated beside the points (`SweepResult.unsteered`).
Strength 0 is never recommended. A
steered point is acceptable when its mean concept score is above the unsteered one's (steering
that does not move the concept is not recommended, however fluent), its mean aggregate is above 0
(no score is 0 in every sample) and its mean fluency is at least `min_fluency` (and, with
`target_concept`, its concept score reaches it; with `min_grammar`, its ground-truth grammatical
share reaches that). Among the acceptable points the recommendation is the one with the highest
mean aggregate score (the harmonic mean of the scores, AxBench's selection rule); or, with
`target_concept`, the weakest one (`rule="weakest"`), the one with the largest worst-case margin
to the targets (`rule="margin"`, the most robust on held-out samples), or that margin counted in
standard errors over samples (`rule="z"`, for when one score is much noisier than another). Ties
go to the weaker strength. No acceptable point: `recommended` is None and the verdict says that
no strength works.
`sweep_edits` sweeps anything that builds an edit from a strength (e.g. a steering vector).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from saes.interop import as_sae
from steering.evaluate import MethodResult, Scorer, score_generation
from steering.config import GenerationConfig, SweepConfig
from steering.generation import Generation, generate, with_sae_bos
from steering.inputs import Model, SAEArg, SAEs, TypicalMaxArg
from steering.session import check_not_steered, steer
from steering.spec import Edit, FeatureEdit, SteerLimits, SteeringError, plain_scalar


@dataclass
class SweepPoint:
    strength: float
    concept: float
    fluency: float
    aggregate: float
    instruction: float | None = None
    grammatical_sentences: float | None = None
    perplexity: float | None = None
    n_samples: int = 0
    examples: list[str] = field(default_factory=list)
    concept_se: float | None = None  # standard errors of concept, fluency and grammar over samples (rule="z")
    fluency_se: float | None = None
    grammar: float | None = None  # mean ground-truth grammatical share (scorers with a validator)
    grammar_se: float | None = None


@dataclass
class SweepResult:
    label: str  # e.g. "sae/123:add" or "diffmean@blocks.1.hook_resid_post"
    unit: str
    points: list[SweepPoint]
    recommended: float | None
    latent: int | None = None
    sae_name: str | None = None
    op: str | None = None
    typical_max: float | None = None
    rule: str = ""
    # the unsteered model's point when no swept strength is the unsteered model (a clamp sweep)
    unsteered: SweepPoint | None = None

    @property
    def verdict(self) -> str:
        """One line: the recommended strength and the rule, or that no strength works."""
        if self.recommended is None:
            steered = [f"{p.strength:g}" for p in self.points if p.strength != 0 or self.unsteered is not None]
            return f"no strength works: none of {', '.join(steered) or 'no steered strength'} met {self.rule}"
        return f"recommended strength {self.recommended:g} ({self.rule})"

    @property
    def recommended_raw(self) -> float | None:
        """The recommended strength in raw activation units (None when unknown)."""
        if self.recommended is None:
            return None
        if self.unit == "max_act":
            return None if self.typical_max is None else self.recommended * self.typical_max
        return self.recommended

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["recommended_raw"] = self.recommended_raw
        d["verdict"] = self.verdict
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, default=_nan_free)


def _nan_free(o: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _point(strength: float, r: MethodResult) -> SweepPoint:
    return SweepPoint(
        strength, r.concept, r.fluency, r.aggregate, r.instruction, r.grammatical_sentences,
        r.perplexity if (r.perplexity is None or math.isfinite(r.perplexity)) else None, r.n_samples, r.texts[:3],
        concept_se=r.concept_se, fluency_se=r.fluency_se, grammar=r.grammar, grammar_se=r.grammar_se,
    )


def recommend_strength(points: Sequence[SweepPoint], *, min_fluency: float = 0.0,
                       target_concept: float | None = None, rule: str = "weakest",
                       min_se: float = 0.01, min_grammar: float | None = None,
                       unsteered: SweepPoint | None = None) -> float | None:
    """See the module docstring. Never 0, never a strength whose concept score is not above the
    unsteered one's: `unsteered` when given (a clamp sweep), else the points at strength 0 (an add
    sweep's). None when no steered point is acceptable, i.e. no strength works.

    rule="margin" (with `target_concept`): among acceptable points, the one with the largest
    worst-case margin min(concept - target_concept, fluency - min_fluency[, grammar - min_grammar]).

    rule="z" (with `target_concept`): the same, with each margin in units of its standard error
    over samples: a score that varies more from sample to sample needs a wider margin. Standard
    errors below `min_se` count as `min_se`; points without standard errors are refused."""
    if rule not in ("weakest", "margin", "z"):
        raise SteeringError(f"rule must be 'weakest', 'margin' or 'z', got {rule!r}")
    if rule in ("margin", "z") and target_concept is None:
        raise SteeringError(f"rule={rule!r} needs target_concept")
    targets = dict(min_fluency=min_fluency, target_concept=target_concept, min_grammar=min_grammar)
    # acceptable: steered, more of the concept than the unsteered text (strength 0, when swept), every
    # score above 0 (a degenerate text has fluency 0), every target met
    baseline = [unsteered.concept] if unsteered is not None else [p.concept for p in points if p.strength == 0]
    floor = max(baseline) if baseline else -math.inf
    ok = [p for p in points if p.strength != 0 and p.concept > floor and p.aggregate > 0
          and target_margin(p, **targets) >= 0]
    if not ok:
        return None
    weaker_first = lambda p: (abs(p.strength), p.strength)  # noqa: E731
    if rule in ("margin", "z"):
        return max(ok, key=lambda p: (target_margin(p, **targets, in_se=rule == "z", min_se=min_se),
                                      -abs(p.strength))).strength
    if target_concept is not None:
        return min(ok, key=weaker_first).strength
    top = max(p.aggregate for p in ok)
    return min((p for p in ok if p.aggregate == top), key=weaker_first).strength


def target_margin(point: SweepPoint, *, min_fluency: float = 0.0, target_concept: float | None = None,
                  min_grammar: float | None = None, in_se: bool = False, min_se: float = 0.01) -> float:
    """The worst-case distance of a point to its targets, min(fluency - min_fluency[, concept -
    target_concept][, grammar - min_grammar]): >= 0 when it meets them all. in_se: each distance
    divided by its standard error over samples (at least `min_se`)."""
    terms = [(point.fluency - min_fluency, point.fluency_se)]
    if target_concept is not None:
        terms.append((point.concept - target_concept, point.concept_se))
    if min_grammar is not None:
        if point.grammar is None:
            raise SteeringError("min_grammar needs the ground-truth grammatical share of each point (a scorer with "
                                "a validator, e.g. the toy world's); drop min_grammar for other scorers")
        terms.append((point.grammar - min_grammar, point.grammar_se))
    if not in_se:
        return min(d for d, _ in terms)
    if any(se is None for _, se in terms):
        raise SteeringError("rule='z' needs the standard errors of each point (SweepPoint.concept_se, fluency_se, "
                            "grammar_se); sweep_edits fills them, or use rule='margin'")
    return min(d / max(se, min_se) for d, se in terms)  # type: ignore[arg-type]


def describe_rule(min_fluency: float = 0.0, target_concept: float | None = None, rule: str = "weakest",
                  min_grammar: float | None = None) -> str:
    """The recommendation rule in words (SweepResult.rule)."""
    needs = ["concept above the unsteered"] + ([f"concept >= {target_concept:g}"] if target_concept is not None else [])
    needs += [f"fluency >= {min_fluency:g}"]
    needs += [f"grammatical >= {min_grammar:g}"] if min_grammar is not None else []
    what = {"margin": "the largest margin over", "z": "the largest margin in standard errors over"}.get(rule)
    if what is None:
        what = "the weakest strength with" if target_concept is not None else "the best mean aggregate with"
    return f"{what} {', '.join(needs)}"


def sweep_edits(
    model: Model,
    saes: SAEs,
    make_edit: Callable[[float], "Edit | Sequence[Edit] | None"],
    strengths: Sequence[float],
    prompts: Sequence[str],
    scorer: Scorer,
    *,
    gen_config: GenerationConfig | None = None,
    typical_max: TypicalMaxArg = None,
    limits: SteerLimits | None = None,
    sentence_counts: Callable[[str], tuple[int, int]] | None = None,
    with_perplexity: bool = True,
    progress: bool = False,
    allow_model_mismatch: bool = False,
    unsteered_memo: MutableMapping[str, Generation] | None = None,
) -> list[SweepPoint]:
    """Generate and score at each strength; `make_edit(s)` gives the edit (or several edits) at
    strength s, or None for the unsteered model. SAEs recorded for another model are refused
    (see `steering.steer`) unless `allow_model_mismatch`. `unsteered_memo`: a dict the caller keeps
    across sweeps of one model (e.g. of several latents on the same prompts): the unsteered
    generation is made once per prompts and generation settings, then read from it."""
    from steering.resolve import check_models

    check_not_steered(model, "a sweep (its unsteered strength)")
    check_models(model, saes, allow_model_mismatch)
    gen_config = with_sae_bos(gen_config or GenerationConfig(), saes)  # unsteered and steered alike
    points = []
    it = strengths
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(strengths, desc="sweep", unit="strength")
    for s in it:
        edit = make_edit(s)
        edits = [] if edit is None else (list(edit) if isinstance(edit, (list, tuple)) else [edit])
        if not edits:
            gen = _unsteered(model, prompts, gen_config, unsteered_memo)
        else:
            with steer(model, saes, edits, typical_max=typical_max, limits=limits,
                       allow_model_mismatch=allow_model_mismatch) as sess:
                gen = sess.generate(prompts, gen_config)
        r = score_generation(f"{s:g}", model, prompts, gen, scorer, sentence_counts=sentence_counts,
                             with_perplexity=with_perplexity, strength=s)
        points.append(_point(s, r))
    return points


def _unsteered(model: Model, prompts: Sequence[str], gen_config: GenerationConfig,
               memo: MutableMapping[str, Generation] | None) -> Generation:
    """The unsteered generation, from `memo` when it holds one for these prompts and settings."""
    key = repr((list(prompts), gen_config))
    gen = memo.get(key) if memo is not None else None
    if gen is None:
        gen = generate(model, prompts, gen_config)
        if memo is not None:
            memo[key] = gen
    return gen


def sweep(
    model: Model,
    sae: SAEArg,
    latent: int,
    prompts: Sequence[str],
    scorer: Scorer,
    config: SweepConfig | None = None,
    *,
    gen_config: GenerationConfig | None = None,
    typical_max: TypicalMaxArg = None,
    sae_name: str = "sae",
    limits: SteerLimits | None = None,
    sentence_counts: Callable[[str], tuple[int, int]] | None = None,
    progress: bool = False,
    allow_model_mismatch: bool = False,
    unsteered_memo: MutableMapping[str, Generation] | None = None,
) -> SweepResult:
    """Dose-response of one SAE feature; see the module docstring. `unsteered_memo`: see
    `sweep_edits` (add 0 is the unsteered model: its exact-zero delta leaves every activation bit
    for bit as it was, steering.interventions)."""
    from steering.resolve import check_models, resolve_edits, typical_max_for
    from steering.spec import lookup_typical_max

    config = config or SweepConfig()
    latent = plain_scalar(latent)  # a tensor's `argmax()`: a tensor key would miss its typical max
    check_not_steered(model, "steering.sweep")
    saes = {sae_name: as_sae(sae)}  # a sae_lens.SAE object: converted once, not per strength
    check_models(model, saes, allow_model_mismatch)
    # validate every strength before generating anything
    for s in config.strengths:
        resolve_edits(model, saes, [FeatureEdit(latent, config.op, s, config.unit, config.positions, sae_name)],
                      typical_max=typical_max, limits=limits)

    def make(s: float) -> Edit | None:
        if config.op == "add" and s == 0:
            return None
        return FeatureEdit(latent, config.op, s, config.unit, config.positions, sae_name)

    run = dict(gen_config=gen_config, typical_max=typical_max, limits=limits, sentence_counts=sentence_counts,
               with_perplexity=config.perplexity, allow_model_mismatch=allow_model_mismatch,
               unsteered_memo=unsteered_memo)
    points = sweep_edits(model, saes, make, config.strengths, prompts, scorer, progress=progress, **run)
    # clamping to 0 ablates the latent: a clamp sweep's baseline is the unsteered model, generated apart
    unsteered = (sweep_edits(model, saes, lambda s: None, [0.0], prompts, scorer, **run)[0]
                 if config.op != "add" else None)
    tmax = lookup_typical_max(typical_max_for(typical_max, sae_name), latent)
    rec = recommend_strength(points, min_fluency=config.min_fluency, target_concept=config.target_concept,
                             rule=config.rule, min_grammar=config.min_grammar, unsteered=unsteered)
    rule = describe_rule(config.min_fluency, config.target_concept, config.rule, config.min_grammar)
    return SweepResult(f"{sae_name}/{latent}:{config.op}", config.unit, points, rec, latent, sae_name,
                       config.op, tmax, rule, unsteered)


# ---------------------------------------------------------------------------------- output
def dose_response_figure(result: SweepResult):
    """A plotly figure: concept, fluency and aggregate (and instruction) against strength."""
    import plotly.graph_objects as go

    xs = [p.strength for p in result.points]
    fig = go.Figure()
    series = [("concept", "concept"), ("fluency", "fluency"), ("aggregate (harmonic mean)", "aggregate")]
    if any(p.instruction is not None for p in result.points):
        series.append(("instruction", "instruction"))
    if any(p.grammar is not None for p in result.points):
        series.append(("grammatical (ground truth)", "grammar"))
    for name, attr in series:
        fig.add_trace(go.Scatter(x=xs, y=[getattr(p, attr) for p in result.points], mode="lines+markers", name=name,
                                 hovertext=[" | ".join(p.examples[:1]) for p in result.points]))
    if any(p.perplexity is not None for p in result.points):
        fig.add_trace(go.Scatter(x=xs, y=[p.perplexity for p in result.points], mode="lines+markers",
                                 name="perplexity (unsteered model)", yaxis="y2", line={"dash": "dot"}))
    if result.unsteered is not None:
        fig.add_hline(y=result.unsteered.concept, line_dash="dot",
                      annotation_text=f"unsteered concept {result.unsteered.concept:.2f}")
    if result.recommended is not None:
        fig.add_vline(x=result.recommended, line_dash="dash", annotation_text=f"recommended {result.recommended:g}")
    unit = "x typical max activation" if result.unit == "max_act" else "activation units"
    fig.update_layout(
        title=f"Steering dose-response: {result.label}<br><sub>{result.verdict}</sub>",
        xaxis_title=f"strength ({unit})",
        yaxis={"title": "score (0-1)", "range": [0, 1.05]},
        yaxis2={"title": "perplexity", "overlaying": "y", "side": "right", "type": "log"},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def write_sweep_html(result: SweepResult, path: str | os.PathLike) -> Path:
    """Write the dose-response plot (self-contained HTML, plotly.js inlined) atomically."""
    from saes.fileio import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, dose_response_figure(result).to_html(include_plotlyjs=True, full_html=True).encode())
    return path


def write_sweep_json(result: SweepResult, path: str | os.PathLike, provenance: dict | None = None) -> Path:
    """The sweep as JSON; `provenance` (`saesteer sweep`'s: the model, the SAE's `sae_fingerprint`, the
    hook, the store) lets a preset that keeps it as its scorecard check that it measured the same SAE."""
    from saes.fileio import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = result.to_dict() | ({"provenance": provenance} if provenance is not None else {})
    atomic_write_bytes(path, (json.dumps(record, indent=2, allow_nan=False, default=_nan_free) + "\n").encode())
    return path


# where a sweep's recommendation goes: `StoreLink.record_strength`-like, or a mapping feature -> record
StrengthSink = Union[Callable[[int, "float | None", str, "dict[str, Any]"], None], MutableMapping[int, "dict[str, Any]"]]


def store_recommendation(sink: StrengthSink, result: SweepResult) -> None:
    """Record the outcome of a feature sweep in `sink`: its recommended strength, or, when no
    strength works, an explicit None (which replaces an earlier recommendation; the details say why).

    `sink` is a callable `(feature, strength | None, unit, info) -> None` (`StoreLink.record_strength`)
    or a mutable mapping feature -> {"strength", "unit", "raw", ...}."""
    if result.latent is None:
        raise SteeringError("only feature sweeps have a recommended strength to store")
    if result.recommended == 0:  # recommend_strength never gives 0; a hand-edited result must not store it
        raise SteeringError(f"{result.label}: strength 0 is the unsteered model, not a recommendation")
    info = {"op": result.op, "raw": result.recommended_raw, "rule": result.rule, "verdict": result.verdict,
            "points": [{"strength": p.strength, "concept": p.concept, "fluency": p.fluency, "aggregate": p.aggregate,
                        "grammar": p.grammar} for p in result.points]}
    if callable(sink):
        sink(result.latent, result.recommended, result.unit, info)
    else:
        sink[result.latent] = {"strength": result.recommended, "unit": result.unit, **info}
