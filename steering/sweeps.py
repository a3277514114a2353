"""Dose-response sweeps: generate at a range of strengths, score each, pick a recommended strength.

    res = sweep(model, sae, feature=123, prompts=prompts, scorer=scorer,
                config=SweepConfig(strengths=[0, 0.5, 1, 2, 4], op="add", unit="max_act"),
                typical_max=store_max)
    write_sweep_html(res, "sweep_123.html")     # concept, fluency and aggregate against strength
    res.recommended                             # strength (in the sweep's unit) or None

The recommendation is the strength with the highest mean aggregate score (the harmonic mean
of concept and fluency [and instruction], AxBench's selection rule) among points whose mean
fluency is at least `min_fluency`; or, with `target_concept`, the weakest strength whose concept
score reaches the target with that fluency (`rule="weakest"`), or the strength with the largest
worst-case margin to both targets (`rule="margin"`, the most robust on held-out samples), or
that margin counted in standard errors over samples (`rule="z"`, for when one score is much
noisier than the other). Ties go to the weaker strength.
`sweep_edits` sweeps anything that builds an edit from a strength (e.g. a steering vector).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from steering.evaluate import MethodResult, Scorer, score_generation
from steering.config import GenerationConfig, SweepConfig
from steering.generation import generate
from steering.session import steer
from steering.spec import Edit, FeatureEdit, SteerLimits, SteeringError


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
    concept_se: float | None = None  # standard errors of concept and fluency over samples (rule="z")
    fluency_se: float | None = None


@dataclass
class SweepResult:
    label: str  # e.g. "sae/123:add" or "diffmean@blocks.1.hook_resid_post"
    unit: str
    points: list[SweepPoint]
    recommended: float | None
    feature: int | None = None
    sae_name: str | None = None
    op: str | None = None
    typical_max: float | None = None
    rule: str = ""

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
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, default=_nan_free)


def _nan_free(o: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _point(strength: float, r: MethodResult) -> SweepPoint:
    return SweepPoint(
        strength, r.concept, r.fluency, r.aggregate, r.instruction, r.grammatical_sentences,
        r.perplexity if (r.perplexity is None or math.isfinite(r.perplexity)) else None, r.n_samples, r.texts[:3],
        concept_se=r.concept_se, fluency_se=r.fluency_se,
    )


def recommend_strength(points: Sequence[SweepPoint], *, min_fluency: float = 0.0,
                       target_concept: float | None = None, rule: str = "weakest",
                       min_se: float = 0.01) -> float | None:
    """See the module docstring. None when no point qualifies.

    rule="margin" (with `target_concept`): the point with the largest worst-case margin
    min(concept - target_concept, fluency - min_fluency), i.e. the most robustly acceptable one
    (still a point, even if no point meets both).

    rule="z" (with `target_concept`): the same, with each margin in units of its standard error
    over samples, min((concept - target) / concept_se, (fluency - min_fluency) / fluency_se): a
    score that varies more from sample to sample needs a wider margin. Standard errors below
    `min_se` count as `min_se`; points without standard errors are refused."""
    if rule not in ("weakest", "margin", "z"):
        raise SteeringError(f"rule must be 'weakest', 'margin' or 'z', got {rule!r}")
    if rule in ("margin", "z"):
        if target_concept is None:
            raise SteeringError(f"rule={rule!r} needs target_concept")
        if rule == "z" and any(p.concept_se is None or p.fluency_se is None for p in points):
            raise SteeringError("rule='z' needs the standard errors of each point (SweepPoint.concept_se, "
                                "fluency_se); sweep_edits fills them, or use rule='margin'")

        def margin(p: SweepPoint) -> float:
            if rule == "margin":
                return min(p.concept - target_concept, p.fluency - min_fluency)
            return min((p.concept - target_concept) / max(p.concept_se, min_se),
                       (p.fluency - min_fluency) / max(p.fluency_se, min_se))

        best = max(points, key=lambda p: (margin(p), -abs(p.strength)))
        return best.strength
    ok = [p for p in points if p.fluency >= min_fluency]
    if target_concept is not None:
        hits = [p for p in ok if p.concept >= target_concept]
        return min(hits, key=lambda p: (abs(p.strength), p.strength)).strength if hits else None
    if not ok:
        return None
    best = max(p.aggregate for p in ok)
    return min((p for p in ok if p.aggregate == best), key=lambda p: (abs(p.strength), p.strength)).strength


def sweep_edits(
    model: Any,
    saes: Any,
    make_edit: Callable[[float], "Edit | Sequence[Edit] | None"],
    strengths: Sequence[float],
    prompts: Sequence[str],
    scorer: Scorer,
    *,
    gen_config: GenerationConfig | None = None,
    typical_max: Any = None,
    limits: SteerLimits | None = None,
    sentence_counts: Callable[[str], tuple[int, int]] | None = None,
    with_perplexity: bool = True,
    progress: bool = False,
    allow_model_mismatch: bool = False,
) -> list[SweepPoint]:
    """Generate and score at each strength; `make_edit(s)` gives the edit (or several edits) at
    strength s, or None for the unsteered model. SAEs recorded for another model are refused
    (see `steering.steer`) unless `allow_model_mismatch`."""
    from steering.session import check_models

    check_models(model, saes, allow_model_mismatch)
    gen_config = gen_config or GenerationConfig()
    points = []
    it = strengths
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(strengths, desc="sweep", unit="strength")
    for s in it:
        edit = make_edit(s)
        edits = [] if edit is None else (list(edit) if isinstance(edit, (list, tuple)) else [edit])
        if not edits:
            gen = generate(model, prompts, gen_config)
        else:
            with steer(model, saes, edits, typical_max=typical_max, limits=limits,
                       allow_model_mismatch=allow_model_mismatch) as sess:
                gen = sess.generate(prompts, gen_config)
        r = score_generation(f"{s:g}", model, prompts, gen, scorer, sentence_counts=sentence_counts,
                             with_perplexity=with_perplexity, strength=s)
        points.append(_point(s, r))
    return points


def sweep(
    model: Any,
    sae: Any,
    feature: int,
    prompts: Sequence[str],
    scorer: Scorer,
    config: SweepConfig | None = None,
    *,
    gen_config: GenerationConfig | None = None,
    typical_max: Any = None,
    sae_name: str = "sae",
    limits: SteerLimits | None = None,
    sentence_counts: Callable[[str], tuple[int, int]] | None = None,
    progress: bool = False,
    allow_model_mismatch: bool = False,
) -> SweepResult:
    """Dose-response of one SAE feature; see the module docstring."""
    from steering.session import check_models, resolve_edits, typical_max_for
    from steering.spec import lookup_typical_max

    config = config or SweepConfig()
    saes = {sae_name: sae}
    check_models(model, saes, allow_model_mismatch)
    # validate every strength before generating anything
    for s in config.strengths:
        resolve_edits(model, saes, [FeatureEdit(feature, config.op, s, config.unit, config.positions, sae_name)],
                      typical_max=typical_max, limits=limits)

    def make(s: float) -> Edit:
        return FeatureEdit(feature, config.op, s, config.unit, config.positions, sae_name)

    points = sweep_edits(model, saes, make, config.strengths, prompts, scorer, gen_config=gen_config,
                         typical_max=typical_max, limits=limits, sentence_counts=sentence_counts,
                         with_perplexity=config.perplexity, progress=progress,
                         allow_model_mismatch=allow_model_mismatch)
    tmax = lookup_typical_max(typical_max_for(typical_max, sae_name), feature)
    rec = recommend_strength(points, min_fluency=config.min_fluency, target_concept=config.target_concept,
                             rule=config.rule)
    if config.rule == "margin":
        rule = (f"largest margin min(concept - {config.target_concept:g}, fluency - {config.min_fluency:g})")
    elif config.rule == "z":
        rule = (f"largest margin in standard errors min((concept - {config.target_concept:g}) / se, "
                f"(fluency - {config.min_fluency:g}) / se)")
    else:
        rule = (f"weakest strength with concept >= {config.target_concept:g}" if config.target_concept is not None
                else "best mean aggregate") + (f", fluency >= {config.min_fluency:g}" if config.min_fluency else "")
    return SweepResult(f"{sae_name}/{feature}:{config.op}", config.unit, points, rec, feature, sae_name,
                       config.op, tmax, rule)


# ---------------------------------------------------------------------------------- output
def dose_response_figure(result: SweepResult):
    """A plotly figure: concept, fluency and aggregate (and instruction) against strength."""
    import plotly.graph_objects as go

    xs = [p.strength for p in result.points]
    fig = go.Figure()
    series = [("concept", "concept"), ("fluency", "fluency"), ("aggregate (harmonic mean)", "aggregate")]
    if any(p.instruction is not None for p in result.points):
        series.append(("instruction", "instruction"))
    for name, attr in series:
        fig.add_trace(go.Scatter(x=xs, y=[getattr(p, attr) for p in result.points], mode="lines+markers", name=name,
                                 hovertext=[" | ".join(p.examples[:1]) for p in result.points]))
    if any(p.perplexity is not None for p in result.points):
        fig.add_trace(go.Scatter(x=xs, y=[p.perplexity for p in result.points], mode="lines+markers",
                                 name="perplexity (unsteered model)", yaxis="y2", line={"dash": "dot"}))
    if result.recommended is not None:
        fig.add_vline(x=result.recommended, line_dash="dash", annotation_text=f"recommended {result.recommended:g}")
    unit = "x typical max activation" if result.unit == "max_act" else "activation units"
    fig.update_layout(
        title=f"Steering dose-response: {result.label}",
        xaxis_title=f"strength ({unit})",
        yaxis={"title": "score (0-1)", "range": [0, 1.05]},
        yaxis2={"title": "perplexity", "overlaying": "y", "side": "right", "type": "log"},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def write_sweep_html(result: SweepResult, path: str | os.PathLike) -> Path:
    """Write the dose-response plot (self-contained HTML, plotly.js inlined) atomically."""
    path = Path(path)
    html = dose_response_figure(result).to_html(include_plotlyjs=True, full_html=True)
    _atomic_write_text(path, html)
    return path


def write_sweep_json(result: SweepResult, path: str | os.PathLike) -> Path:
    path = Path(path)
    _atomic_write_text(path, result.to_json() + "\n")
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def store_recommendation(sink: Any, result: SweepResult) -> None:
    """Record the recommended strength of a feature sweep in `sink`.

    `sink` is a callable `(feature, strength, unit, info) -> None` (the feature store's setter once
    wired) or a mutable mapping feature -> {"strength", "unit", "raw", ...}."""
    if result.feature is None:
        raise SteeringError("only feature sweeps have a recommended strength to store")
    if result.recommended is None:
        raise SteeringError(f"{result.label}: no strength qualified ({result.rule}); nothing to store")
    info = {"op": result.op, "raw": result.recommended_raw, "rule": result.rule,
            "points": [{"strength": p.strength, "concept": p.concept, "fluency": p.fluency, "aggregate": p.aggregate}
                       for p in result.points]}
    if callable(sink):
        sink(result.feature, result.recommended, result.unit, info)
    else:
        sink[result.feature] = {"strength": result.recommended, "unit": result.unit, **info}
