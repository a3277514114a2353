"""SAE steering beside its baselines, on one protocol, with one scorecard.

    card = compare_methods(model, sae, scorer, positive=concept_docs, negative=other_docs,
                           cue="the sailor looked at the sea .", prompts=[""] * 32,
                           typical_max=store.typical_max)
    card.rows            # one MethodResult per method, on the test seed
    card.to_json()       # the scorecard (settings, picks, scores, examples)

Methods (each picks its strength on a development seed, then is scored on a held-out test seed
with the same prompts, so no method is tuned on the samples it is judged by):

- "unsteered": the model as it is.
- "SAE feature": the candidate latents (given, or the top ones by contrast of `positive` vs
  `negative` prompts) are each swept over `sae_strengths` (multiples of the typical max when
  known, else of the latent's mean activation on the positive prompts); the (latent, strength)
  with the best worst-case margin to the targets wins (`rule`, as `recommend_strength`).
- "diff-of-means": the mean activation at the SAE's hook over `positive` minus over `negative`
  prompts, added at `vector_strengths` (multiples of that difference); same selection.
- "prompting": the `cue` written before every prompt (no steering).

Scores come from `scorer` (an LLM judge, `JudgeScorer`, or offline scores, e.g. the toy world's
topic share and grammar); perplexity is the unsteered model's, over the generated tokens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steering.config import GenerationConfig
from steering.evaluate import MethodResult, Scorer, score_generation
from steering.generation import generate
from steering.session import steer
from steering.spec import FeatureEdit, Positions, SteeringError
from steering.sweeps import SweepPoint, recommend_strength, sweep_edits

if TYPE_CHECKING:
    from saes.base import SAE
    from steering.inputs import Model


@dataclass
class MethodPick:
    """What a method chose on the development seed."""

    method: str
    strength: float | None = None
    feature: int | None = None
    unit: str | None = None
    margin: float | None = None
    dev_points: list[SweepPoint] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)


@dataclass
class Scorecard:
    rows: list[MethodResult]
    picks: dict[str, MethodPick]
    settings: dict[str, Any]
    generations: dict[str, Any] = field(default_factory=dict, repr=False)  # method -> Generation (test seed)

    def row(self, method: str) -> MethodResult:
        return next(r for r in self.rows if r.method == method)

    def to_json(self) -> dict[str, Any]:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v

        rows = []
        for r in self.rows:
            d = {k: clean(v) for k, v in r.as_dict().items()}
            d["examples"] = list(r.texts[:3])
            rows.append(d)
        picks = {}
        for name, p in self.picks.items():
            d = dataclasses.asdict(p)
            d["dev_points"] = [{k: clean(v) for k, v in dataclasses.asdict(pt).items() if k != "examples"}
                               for pt in p.dev_points]
            picks[name] = d
        return {"format": "saesteer-steer-eval/1", "settings": self.settings, "methods": rows, "picks": picks}


def _margin(p: SweepPoint, rule: str, target: float, min_fluency: float, min_se: float = 0.01) -> float:
    if rule == "z":
        return min((p.concept - target) / max(p.concept_se or 0.0, min_se),
                   (p.fluency - min_fluency) / max(p.fluency_se or 0.0, min_se))
    return min(p.concept - target, p.fluency - min_fluency)


def _pick(points: Sequence[SweepPoint], rule: str, target: float, min_fluency: float) -> tuple[float, float]:
    """(strength, its margin): the rule's pick, else the best aggregate."""
    s = recommend_strength(points, min_fluency=min_fluency, target_concept=target, rule=rule)
    if s is None:
        s = recommend_strength(points)
    if s is None:
        s = points[0].strength
    p = next(p for p in points if p.strength == s)
    return s, _margin(p, rule if rule in ("z", "margin") else "margin", target, min_fluency)


def compare_methods(
    model: Model,
    sae: SAE,
    scorer: Scorer,
    *,
    prompts: Sequence[str],
    positive: Sequence[str] | None = None,
    negative: Sequence[str] | None = None,
    cue: str | Callable[[str], str] | None = None,
    features: Sequence[int] | None = None,
    n_candidates: int = 3,
    op: str = "add",
    positions: Positions = "all",
    sae_strengths: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
    vector_strengths: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 3.0),
    target_concept: float = 0.5,
    min_fluency: float = 0.8,
    rule: str = "margin",
    gen_config: GenerationConfig | None = None,
    dev_seed: int = 1,
    test_seed: int = 3,
    test_prompts: Sequence[str] | None = None,
    typical_max: Callable[[int], float | None] | None = None,
    with_perplexity: bool = True,
    allow_model_mismatch: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Scorecard:
    """See the module docstring. `features` skips the contrast search; `positive`/`negative` are
    needed for the contrast search and for difference of means (without them that method is
    left out); `cue` enables prompting. `test_prompts` (default `prompts`) are scored on the test seed."""
    from steering.baselines import diff_of_means, prompting_baseline
    from steering.search import contrast_features
    from steering.session import check_models, sae_hook_name

    check_models(model, sae, allow_model_mismatch)
    if op not in ("add", "clamp"):
        raise SteeringError(f"op must be add or clamp to compare steering methods, got {op!r}")
    if not prompts:
        raise SteeringError("give at least one prompt to steer (\"\" for unconditional generation)")
    has_sets = bool(positive) and bool(negative)
    if features is None and not has_sets:
        raise SteeringError("give the SAE features to steer with, or positive and negative prompts to find them by contrast")
    base_cfg = gen_config or GenerationConfig(max_new_tokens=32, do_sample=True, stop_at_eos=False)
    dev_cfg = dataclasses.replace(base_cfg, seed=dev_seed)
    test_cfg = dataclasses.replace(base_cfg, seed=test_seed)
    test_prompts = list(test_prompts or prompts)
    say = progress or (lambda msg: None)
    hook = sae_hook_name(sae)

    def test(method: str, make_edits, strength, score_prompts=None, gen_prompts=None) -> tuple[MethodResult, Any]:
        edits = make_edits(strength) if make_edits is not None else None
        ps = list(gen_prompts or test_prompts)
        if edits:
            with steer(model, sae if any(isinstance(e, FeatureEdit) for e in edits) else None, edits,
                       typical_max=typical_max, allow_model_mismatch=allow_model_mismatch) as s:
                gen = s.generate(ps, test_cfg)
        else:
            gen = generate(model, ps, test_cfg)
        r = score_generation(method, model, ps, gen, scorer, with_perplexity=with_perplexity, strength=strength,
                             score_prompts=score_prompts)
        return r, gen

    rows: list[MethodResult] = []
    picks: dict[str, MethodPick] = {}
    gens: dict[str, Any] = {}

    say("unsteered")
    r, g = test("unsteered", None, None)
    rows.append(r)
    gens["unsteered"] = g

    # -- SAE feature
    mean_pos: dict[int, float] = {}
    if features is None:
        ranked = contrast_features(model, sae, positive, negative, top=max(1, n_candidates),
                                   allow_model_mismatch=allow_model_mismatch)
        cands = [c.feature for c in ranked]
        mean_pos = {c.feature: max(float(c.mean_positive or 0.0), 1e-3) for c in ranked}
    else:
        cands = [int(f) for f in dict.fromkeys(features)]
        for f in cands:
            if not 0 <= f < sae.d_sae:
                raise SteeringError(f"feature {f} is out of range for this SAE (0..{sae.d_sae - 1})")
        if has_sets and (typical_max is None or any(not typical_max(f) for f in cands)):
            from steering.activations import mean_latent_activation

            mean_F, _, _ = mean_latent_activation(model, sae, positive)
            mean_pos = {f: max(float(mean_F[f]), 1e-3) for f in cands}
    best: MethodPick | None = None
    for f in cands:
        tmax = typical_max(f) if typical_max is not None else None
        if tmax:
            unit, scale = "max_act", 1.0
        elif f in mean_pos:
            unit, scale = "raw", mean_pos[f]
        else:
            raise SteeringError(f"feature {f} has no known typical max activation (pass a feature store), so its "
                                f"strengths cannot be scaled; or give positive/negative prompts")

        def make(s, f=f, unit=unit, scale=scale):
            return [FeatureEdit(f, op, s * scale, unit=unit, positions=positions)] if s else None

        say(f"SAE feature {f}: sweeping {len(sae_strengths)} strengths on the dev seed")
        pts = sweep_edits(model, sae, make, list(sae_strengths), prompts, scorer, gen_config=dev_cfg,
                          typical_max=typical_max, with_perplexity=False, allow_model_mismatch=allow_model_mismatch)
        s, m = _pick(pts, rule, target_concept, min_fluency)
        if best is None or m > (best.margin if best.margin is not None else -math.inf):
            best = MethodPick("SAE feature", s * scale, f, unit, m, pts, cands)
    assert best is not None
    picks["SAE feature"] = best

    def sae_edit(s):
        return [FeatureEdit(best.feature, op, s, unit=best.unit, positions=positions)] if s else None  # type: ignore[arg-type]

    say(f"SAE feature {best.feature} at {best.strength:g} ({best.unit}): test seed")
    r, g = test("SAE feature", sae_edit, best.strength)
    rows.append(r)
    gens["SAE feature"] = g

    # -- difference of means
    if has_sets:
        vec = diff_of_means(model, hook, positive, negative)

        def vec_edit(s):
            return [vec.edit(s, positions=positions)] if s else None

        say(f"difference of means: sweeping {len(vector_strengths)} strengths on the dev seed")
        pts = sweep_edits(model, None, vec_edit, list(vector_strengths), prompts, scorer, gen_config=dev_cfg,
                          with_perplexity=False, allow_model_mismatch=allow_model_mismatch)
        s, m = _pick(pts, rule, target_concept, min_fluency)
        picks["diff-of-means"] = MethodPick("diff-of-means", s, None, "x difference", m, pts)
        r, g = test("diff-of-means", vec_edit, s)
        rows.append(r)
        gens["diff-of-means"] = g

    # -- prompting
    if cue is not None:
        say("prompting: test seed")
        cued = prompting_baseline(test_prompts, cue)
        r, g = test("prompting", None, None, score_prompts=test_prompts, gen_prompts=cued)
        rows.append(r)
        gens["prompting"] = g
        picks["prompting"] = MethodPick("prompting")

    settings = {
        "op": op, "positions": positions if isinstance(positions, str) else list(positions),
        "sae_strengths": list(sae_strengths), "vector_strengths": list(vector_strengths),
        "target_concept": target_concept, "min_fluency": min_fluency, "rule": rule,
        "dev_seed": dev_seed, "test_seed": test_seed, "n_prompts": len(prompts), "n_test_prompts": len(test_prompts),
        "max_new_tokens": base_cfg.max_new_tokens, "temperature": base_cfg.temperature, "hook": hook,
        "cue": cue if isinstance(cue, str) else (None if cue is None else "function"),
        "candidates": cands, "n_positive": len(positive or []), "n_negative": len(negative or []),
    }
    return Scorecard(rows, picks, settings, gens)
