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

from steering.config import CompareConfig, GenerationConfig
from steering.evaluate import MethodResult, Scorer, score_generation
from steering.generation import generate, with_sae_bos
from steering.resolve import check_latent_index
from steering.session import check_not_steered, steer
from steering.spec import FeatureEdit, SteeringError, plain_scalar
from steering.sweeps import SweepPoint, recommend_strength, sweep_edits

if TYPE_CHECKING:
    from saes.base import SAE
    from steering.inputs import Model


@dataclass
class MethodPick:
    """What a method chose on the development seed."""

    method: str
    strength: float | None = None
    latent: int | None = None
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


@dataclass
class _Comparison:
    """What every method shares: the model and SAE, the scorer, how methods pick and are tested
    (`cfg`), the dev sweep and the test-seed run. `rows` and `generations` collect the test-seed
    results in the order the methods ran."""

    model: Model
    sae: SAE
    scorer: Scorer
    cfg: CompareConfig
    prompts: Sequence[str]
    test_prompts: list[str]
    base_cfg: GenerationConfig  # the generation settings; the dev and test seeds come from `cfg`
    typical_max: Callable[[int], float | None] | None
    with_perplexity: bool
    allow_model_mismatch: bool
    progress: bool = False  # a progress bar (stderr) over each dev sweep's strengths
    rows: list[MethodResult] = field(default_factory=list)
    generations: dict[str, Any] = field(default_factory=dict)

    @property
    def dev_cfg(self) -> GenerationConfig:
        return dataclasses.replace(self.base_cfg, seed=self.cfg.dev_seed)

    @property
    def test_cfg(self) -> GenerationConfig:
        return dataclasses.replace(self.base_cfg, seed=self.cfg.test_seed)

    def test(self, method: str, make_edits, strength, score_prompts=None, gen_prompts=None) -> None:
        """Generate with `make_edits(strength)` (or unsteered) on the test seed and score it."""
        edits = make_edits(strength) if make_edits is not None else None
        ps = list(gen_prompts or self.test_prompts)
        if edits:
            sae = self.sae if any(isinstance(e, FeatureEdit) for e in edits) else None
            with steer(self.model, sae, edits, typical_max=self.typical_max,
                       allow_model_mismatch=self.allow_model_mismatch) as s:
                gen = s.generate(ps, self.test_cfg)
        else:
            gen = generate(self.model, ps, self.test_cfg)
        r = score_generation(method, self.model, ps, gen, self.scorer, with_perplexity=self.with_perplexity,
                             strength=strength, score_prompts=score_prompts)
        self.rows.append(r)
        self.generations[method] = gen

    def sweep(self, sae: SAE | None, make_edits, strengths: Sequence[float], typical_max=None
              ) -> tuple[list[SweepPoint], float, float]:
        """The dev-seed sweep over `strengths`, and the rule's pick from it: (points, strength, margin)."""
        pts = sweep_edits(self.model, sae, make_edits, list(strengths), self.prompts, self.scorer,
                          gen_config=self.dev_cfg, typical_max=typical_max, with_perplexity=False,
                          allow_model_mismatch=self.allow_model_mismatch, progress=self.progress)
        s, m = _pick(pts, self.cfg.rule, self.cfg.target_concept, self.cfg.min_fluency)
        return pts, s, m


def _check_compare_args(sae: SAE, prompts: Sequence[str], latents, has_sets: bool) -> None:
    """What the arguments alone refuse, before any generation."""
    if not prompts:
        raise SteeringError("give at least one prompt to steer (\"\" for unconditional generation)")
    if latents is None and not has_sets:
        raise SteeringError("give the SAE latents to steer with, or positive and negative prompts to find them by contrast")
    for f in () if latents is None else latents:  # `latents or ()` fails on a tensor of ids
        check_latent_index(_latent_id(f), sae, "sae")


def _candidate_features(model: Model, sae: SAE, latents: Sequence[int] | None, positive, negative, *,
                        has_sets: bool, n_candidates: int, typical_max, allow_model_mismatch: bool,
                        progress: bool = False) -> tuple[list[int], dict[int, float]]:
    """The candidate latents (given, or the top ones by contrast) and, where needed to scale
    strengths, each one's mean activation on the positive prompts. `progress`: the contrast's bar."""
    from steering.search import contrast_features

    mean_pos: dict[int, float] = {}
    if latents is None:
        ranked = contrast_features(model, sae, positive, negative, top=max(1, n_candidates),
                                   allow_model_mismatch=allow_model_mismatch, progress=progress)
        cands = [c.latent for c in ranked]
        mean_pos = {c.latent: max(float(c.mean_positive or 0.0), 1e-3) for c in ranked}
        return cands, mean_pos
    # each id once, as a number (a tensor is a dict key by identity); `_check_compare_args` checked the range
    cands = list(dict.fromkeys(map(_latent_id, latents)))
    if has_sets and (typical_max is None or any(not typical_max(f) for f in cands)):
        from steering.activations import mean_latent_activation

        mean_F, _, _ = mean_latent_activation(model, sae, positive)
        mean_pos = {f: max(float(mean_F[f]), 1e-3) for f in cands}
    return cands, mean_pos


def _latent_id(f: Any) -> int:
    """A latent id given to `compare_methods` (a tensor's `topk(...).indices` too); 3.7 is refused, not cut to 3."""
    f = plain_scalar(f)
    if isinstance(f, bool) or not isinstance(f, int):
        raise SteeringError(f"latents must be latent ids (integers), got {f!r}")
    return f


def _strength_unit(f: int, typical_max, mean_pos: dict[int, float]) -> tuple[str, float]:
    """(unit, scale) of latent `f`'s strengths: multiples of its typical max when known, else of
    its mean activation on the positive prompts."""
    tmax = typical_max(f) if typical_max is not None else None
    if tmax:
        return "max_act", 1.0
    if f in mean_pos:
        return "raw", mean_pos[f]
    raise SteeringError(f"latent {f} has no known typical max activation (pass a feature store), so its "
                        f"strengths cannot be scaled; or give positive/negative prompts")


def _best_sae_feature(run: _Comparison, cands: list[int], mean_pos: dict[int, float], say) -> MethodPick:
    """Sweep each candidate latent on the dev seed; the (latent, strength) with the best margin wins."""
    op, positions, sae_strengths = run.cfg.op, run.cfg.positions, run.cfg.sae_strengths
    best: MethodPick | None = None
    for f in cands:
        unit, scale = _strength_unit(f, run.typical_max, mean_pos)

        def make(s, f=f, unit=unit, scale=scale):
            return [FeatureEdit(f, op, s * scale, unit=unit, positions=positions)] if s else None

        say(f"SAE latent {f}: sweeping {len(sae_strengths)} strengths on the dev seed")
        pts, s, m = run.sweep(run.sae, make, sae_strengths, typical_max=run.typical_max)
        if best is None or m > (best.margin if best.margin is not None else -math.inf):
            best = MethodPick("SAE feature", s * scale, f, unit, m, pts, cands)
    assert best is not None
    return best


def _run_sae_feature(run: _Comparison, cands: list[int], mean_pos: dict[int, float], say) -> MethodPick:
    """Pick the best SAE latent and strength on the dev seed, then score it on the test seed."""
    best = _best_sae_feature(run, cands, mean_pos, say)

    def sae_edit(s):
        return [FeatureEdit(best.latent, run.cfg.op, s, unit=best.unit, positions=run.cfg.positions)] if s else None  # type: ignore[arg-type]

    say(f"SAE latent {best.latent} at {best.strength:g} ({best.unit}): test seed")
    run.test("SAE feature", sae_edit, best.strength)
    return best


def _run_diff_of_means(run: _Comparison, hook: str, positive, negative, say) -> MethodPick:
    from steering.baselines import diff_of_means

    vec = diff_of_means(run.model, hook, positive, negative)
    vector_strengths = run.cfg.vector_strengths

    def vec_edit(s):
        return [vec.edit(s, positions=run.cfg.positions)] if s else None

    say(f"difference of means: sweeping {len(vector_strengths)} strengths on the dev seed")
    pts, s, m = run.sweep(None, vec_edit, vector_strengths)
    pick = MethodPick("diff-of-means", s, None, "x difference", m, pts)
    run.test("diff-of-means", vec_edit, s)
    return pick


def _settings(run: _Comparison, *, hook, cue, cands, positive, negative) -> dict[str, Any]:
    """The scorecard's record of how the comparison was run."""
    cfg = run.cfg
    return {
        "op": cfg.op, "positions": cfg.positions if isinstance(cfg.positions, str) else list(cfg.positions),
        "sae_strengths": list(cfg.sae_strengths), "vector_strengths": list(cfg.vector_strengths),
        "target_concept": cfg.target_concept, "min_fluency": cfg.min_fluency, "rule": cfg.rule,
        "dev_seed": cfg.dev_seed, "test_seed": cfg.test_seed, "n_prompts": len(run.prompts),
        "n_test_prompts": len(run.test_prompts), "max_new_tokens": run.base_cfg.max_new_tokens,
        "temperature": run.base_cfg.temperature, "hook": hook,
        "cue": cue if isinstance(cue, str) else (None if cue is None else "function"),
        "candidates": cands, "n_positive": len(positive or []), "n_negative": len(negative or []),
    }


def compare_methods(
    model: Model,
    sae: SAE,
    scorer: Scorer,
    *,
    prompts: Sequence[str],
    config: CompareConfig | None = None,
    positive: Sequence[str] | None = None,
    negative: Sequence[str] | None = None,
    cue: str | Callable[[str], str] | None = None,
    latents: Sequence[int] | None = None,
    gen_config: GenerationConfig | None = None,
    test_prompts: Sequence[str] | None = None,
    typical_max: Callable[[int], float | None] | None = None,
    with_perplexity: bool = True,
    allow_model_mismatch: bool = False,
    say: Callable[[str], None] | None = None,
    progress: bool = False,
) -> Scorecard:
    """See the module docstring; `config` says how methods pick and are tested (strengths, targets,
    seeds; `CompareConfig()` by default). `latents` skips the contrast search; `positive`/`negative`
    are needed for the contrast search and for difference of means (without them that method is
    left out); `cue` enables prompting. `test_prompts` (default `prompts`) are scored on the test seed.
    `say` is told each step as it starts; `progress` draws bars (stderr) over the contrast search's
    prompts and each dev sweep (the names `evals.run.evaluate_saes` uses)."""
    from saes.interop import as_sae
    from steering.baselines import check_prompting_fits, prompting_baseline
    from steering.resolve import check_models, sae_hook_name

    sae = as_sae(sae)  # a sae_lens.SAE object: converted to ours
    check_not_steered(model, "steering.compare_methods")
    check_models(model, sae, allow_model_mismatch)
    has_sets = bool(positive) and bool(negative)
    _check_compare_args(sae, prompts, latents, has_sets)
    cfg = config or CompareConfig()
    # every method, the unsteered and the prompted ones too, reads the prompts with the SAE's BOS: the
    # dev sweeps take it (steering.sweeps), so the test generations must, or a pick is scored on
    # other tokens than it was picked on
    base_cfg = with_sae_bos(gen_config or GenerationConfig(max_new_tokens=32, do_sample=True, stop_at_eos=False), sae)
    run = _Comparison(model, sae, scorer, cfg, prompts, list(test_prompts or prompts), base_cfg, typical_max,
                      with_perplexity, allow_model_mismatch, progress)
    if cue is not None:  # generated last: an overlong cue + prompt is said before the other methods run
        check_prompting_fits(model, run.test_prompts, cue, base_cfg)
    say = say or (lambda msg: None)
    hook = sae_hook_name(sae)
    picks: dict[str, MethodPick] = {}

    say("unsteered")
    run.test("unsteered", None, None)
    cands, mean_pos = _candidate_features(model, sae, latents, positive, negative, has_sets=has_sets,
                                          n_candidates=cfg.candidates, typical_max=typical_max,
                                          allow_model_mismatch=allow_model_mismatch, progress=progress)
    picks["SAE feature"] = _run_sae_feature(run, cands, mean_pos, say)
    if has_sets:
        picks["diff-of-means"] = _run_diff_of_means(run, hook, positive, negative, say)
    if cue is not None:
        say("prompting: test seed")
        run.test("prompting", None, None, score_prompts=run.test_prompts,
                 gen_prompts=prompting_baseline(run.test_prompts, cue))
        picks["prompting"] = MethodPick("prompting")
    settings = _settings(run, hook=hook, cue=cue, cands=cands, positive=positive, negative=negative)
    return Scorecard(run.rows, picks, settings, run.generations)
