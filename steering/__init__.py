"""steering: interventions on SAE latents by feature ID, hooked into TransformerLens generation.

    from steering import steer, FeatureEdit, GenerationConfig
    with steer(model, sae, ["123:clamp=8", FeatureEdit(7, "add", 2.0, unit="max_act")],
               typical_max=store_max) as s:
        res = s.generate(["the ship"], GenerationConfig(max_new_tokens=20, seed=0))

Edits keep the SAE's reconstruction error (only the chosen latents change); positions (all,
prompt, generated, last, token indices) are exact under the KV cache and left padding; hooks are
removed on every exit path. Modules: spec (edit grammar, limits), config (generation / sweep
configs), inputs (the argument types: model, SAEs, typical max), resolve (edits checked and
turned into raw values), session (`steer`: the hooks), saelens_splices (a model with
SAELens SAEs spliced in),
interventions (the arithmetic), positions, generation (plain, or inside a session), comparison
(steered vs unsteered), evaluate (judge + offline scores), fluency (the one fluency measure),
sweeps (dose-response), search, baselines, methods (SAE steering vs baselines, a scorecard),
presets, store (feature-store link); the batched engine behind the API: engine, runner,
rowedits, sampling, textstream, chat. Imports go one way: generation never imports session.

Names are imported lazily, so `import steering.config` (the CLI's flags) does not load torch.
"""

from __future__ import annotations

from saes.lazy import lazy_exports

_EXPORTS = {
    # edits and limits
    "FeatureEdit": "spec", "VectorEdit": "spec", "Edit": "spec", "Positions": "spec", "SteerLimits": "spec",
    "SteeringError": "spec", "SteeringWarning": "spec", "parse_edit": "spec", "OPS": "spec", "POSITION_NAMES": "spec", "Trigger": "spec",
    # presets
    "Preset": "presets", "make_preset": "presets", "PresetMismatchError": "presets",
    # batched engine (the API's), chat prompts, sampling
    "BatchEngine": "engine", "SamplingParams": "sampling", "render_chat": "chat",
    # SAE steering vs baselines
    "compare_methods": "methods", "Scorecard": "methods",
    # configs
    "GenerationConfig": "config", "SweepConfig": "config", "CompareConfig": "config",
    # hooks
    "steer": "session", "SteeringSession": "session", "ResolvedEdit": "resolve", "resolve_edits": "resolve",
    "build_plan": "session", "hooks_attached": "session",
    # arithmetic
    "LatentEditor": "interventions", "current_activations": "interventions", "reference_edit": "interventions",
    # generation
    "generate": "generation", "Generation": "generation", "compare": "comparison", "Comparison": "comparison",
    # evaluation
    "SampleScores": "evaluate", "JudgeScorer": "evaluate", "OfflineScorer": "evaluate", "MethodResult": "evaluate",
    "perplexity": "evaluate", "score_generation": "evaluate", "harmonic_mean": "evaluate",
    "FluencyScore": "fluency", "fluency_of_generation": "fluency", "fluency_of_texts": "fluency",
    # sweeps
    "sweep": "sweeps", "sweep_edits": "sweeps", "SweepResult": "sweeps", "SweepPoint": "sweeps",
    "recommend_strength": "sweeps", "write_sweep_html": "sweeps", "write_sweep_json": "sweeps",
    "store_recommendation": "sweeps", "dose_response_figure": "sweeps", "target_margin": "sweeps",
    # finding features, baselines, store
    "contrast_features": "search", "label_search": "search", "FeatureCandidate": "search",
    "diff_of_means": "baselines", "SteeringVector": "baselines", "prompting_baseline": "baselines",
    "StoreLink": "store",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
