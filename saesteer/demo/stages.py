"""The demo's middle stages, each resumable on its own: the activation cache, the SAE's training,
the feature store (with the toy world's ground-truth concepts) and the labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saesteer.demo.config import DemoConfig, DemoError, DemoPaths, holdout_rows, run_config


def stage_cache(cfg: DemoConfig, paths: DemoPaths, model, progress: bool, info: dict, say) -> Any:
    """The training cache (the toy world's train split) and, apart from it, the held-out rows of the
    training run (its validation split): training passes over its cache several times, and held-out
    rows taken from that cache's stream would be trained on from the second pass on."""
    from saesteer.models import model_id, model_info
    from training.cache import build_cache
    from training.cache_config import CacheConfig
    from training.manifest import CacheMismatchError
    from training.text import TextConfig

    def cache(out: Path, text: TextConfig, tokens: int):
        cc = CacheConfig(out=str(out), hooks=[cfg.hook], max_tokens=tokens)
        return build_cache(model, text, cc, model_id=model_id(model), model_revision=model_info(model).revision,
                           progress=progress, log=say)

    held = TextConfig(dataset="toy", split="validation")
    L = held.context_length
    try:
        res = cache(paths.cache, TextConfig(dataset="toy"), cfg.cache_tokens)
        # whole contexts, BOS not cached: enough of them for the held-out rows
        held_res = cache(paths.heldout_cache, held, -(-holdout_rows(cfg) // (L - 1)) * L)
    except CacheMismatchError as e:
        raise DemoError(f"{e}\n(the demo's cache settings changed: run `saesteer demo --fresh` to start over)") from None
    if res.shards_written == 0 and held_res.shards_written == 0:
        info["status"] = "reused"
    info["note"] = (f"{res.manifest.total_rows:,} activation rows of {cfg.hook}, "
                    f"{held_res.manifest.total_rows:,} held out (validation text)")
    return res


def stage_train(cfg: DemoConfig, paths: DemoPaths, model, progress: bool, info: dict, say) -> tuple[str, Path, dict, dict]:
    from training.config import config_differences
    from training.reader import CacheReader
    from training.heldout import heldout_contexts
    from training.sources import cache_provenance, text_config_from_manifest, text_documents_read
    from training.text import TextConfig
    from training.evaluate import ModelEval
    from training.run import train
    from training.trainer import ConfigMismatchError

    run_cfg = run_config(cfg, progress)
    name = run_cfg.saes[0].name
    sae_dir = paths.run / "saes" / name
    metrics_file = paths.run / "metrics.json"
    if metrics_file.is_file() and (sae_dir / "cfg.json").is_file():
        m = json.loads(metrics_file.read_text(encoding="utf-8"))
        saved = m.get("config") or {}
        same = not config_differences(saved, json.loads(json.dumps(run_cfg.to_dict())))  # log/eval/... may differ
        apart = (m.get("data") or {}).get("holdout_trained_on") is False  # older demos held out rows of the cache
        tokens = (saved.get("train") or {}).get("total_tokens")
        if same and apart and tokens == cfg.train_tokens and not m.get("stopped_early"):
            info["status"] = "reused"
            info["note"] = f"{name}, {m['tokens_trained']:,} tokens"
            return name, sae_dir, m["saes"][name], _train_info(m)
    reader = CacheReader(paths.cache, cfg.batch_size, hook=cfg.hook, seed=cfg.seed, epochs=None)
    heldout = CacheReader(paths.heldout_cache, cfg.batch_size, hook=cfg.hook, seed=cfg.seed, epochs=1)
    prov = cache_provenance(reader.manifest, paths.cache, cfg.hook)
    prov.update(holdout_cache=str(paths.heldout_cache), holdout_trained_on=False)  # never read by the training stream
    model_eval = None
    if cfg.ce_contexts:
        held = heldout_contexts(text_config_from_manifest(reader.manifest), TextConfig(dataset="toy", split="validation"),
                                model.tokenizer, cfg.ce_contexts, train_docs=text_documents_read(reader.manifest))
        keep = tuple(int(i) for i in reader.manifest.settings.get("excluded_token_ids") or ())
        model_eval = ModelEval(model, cfg.hook, held.tokens_NL, keep)
        prov["ce_eval_data"] = held.provenance()
    passes = cfg.train_tokens / max(1, reader.manifest.total_rows)
    say(f"{name}: d_in {model.cfg.d_model}, d_sae {cfg.d_sae}, k {cfg.k}; {cfg.train_tokens:,} tokens "
        f"({passes:.1f} passes over the cache), batch {cfg.batch_size}; {run_cfg.train.holdout_tokens:,} held-out rows "
        f"from {paths.heldout_cache.name}")
    from saesteer import stopsignals
    from training.run import RunStopped

    try:
        result = train(run_cfg, reader, paths.run, model_eval=model_eval, provenance=prov,
                       stop_signals=stopsignals.deferred, holdout=heldout)
    except RunStopped as e:  # its step is checkpointed: the CLI says the demo's ON_STOP
        raise stopsignals.Stopped(e.signum) from None
    except ConfigMismatchError as e:
        raise DemoError(f"{e}\n(the demo's training settings changed: run `saesteer demo --fresh` to start over)") from None
    m = result.metrics
    info["note"] = f"{name}, {m['tokens_trained']:,} tokens" + (" (resumed)" if result.resumed_from else "")
    return name, result.sae_dirs.get(name, sae_dir), m["saes"][name], _train_info(m)


def _train_info(m: dict) -> dict:
    return {k: m.get(k) for k in ("tokens_trained", "steps", "tokens_per_second", "train_seconds", "wall_seconds",
                                  "step_method", "stopped_early")}


def stage_features(cfg: DemoConfig, paths: DemoPaths, model, sae, sae_dir: Path, progress: bool, info: dict,
                    say) -> tuple[dict, int, dict]:
    from features import BuildConfig, CacheSource, FeatureStore, StoreMismatchError, build_feature_store
    from saesteer import stopsignals

    source = CacheSource(paths.cache, hook=cfg.hook)
    # as `features build`: a stop saves the pass state, which the rerun resumes from
    build = dict(model=model, sae_path=str(sae_dir), progress=progress, stop_signals=stopsignals.deferred)
    try:
        res = build_feature_store(paths.store, sae, source, BuildConfig(), **build)
    except StoreMismatchError:
        say(f"{paths.store} was built from another SAE or cache; rebuilding it (its labels go with it)")
        res = build_feature_store(paths.store, sae, source, BuildConfig(), overwrite=True, **build)
    if res.already_complete:
        info["status"] = "reused"
    with FeatureStore.open(paths.store, readonly=False) as store:
        concepts = _concept_matches(store, sae, source, say)
    s = res.summary
    info["note"] = (f"{s.get('alive', 0):,} alive latents, {s.get('dead', 0):,} never fire on the cache, "
                    f"{s.get('dense', 0):,} dense")
    return dict(res.summary), int(res.n_rows), concepts


CONCEPT_SOURCE = "toyworld.concept_masks"


def _concept_matches(store, sae, source, say) -> dict:
    """Toy-world ground truth: for every concept tag, the latents that detect it best (token F1),
    written to the store's concept_matches (computed once per store)."""
    import toyworld

    names = list(toyworld.CONCEPTS)
    have = store.concept_matches()
    if not have:
        from features.concepts import concept_f1_over_source

        say("matching latents to the toy world's ground-truth concepts (token F1)")
        scores = concept_f1_over_source(sae, source, lambda ids: toyworld.concept_masks(ids, names), names)
        best = scores.best_per_concept(min_positives=20)
        store.write_concept_matches([m for c in best for m in scores.top(c.concept, 3)], source=CONCEPT_SOURCE)
        have = store.concept_matches()
    best = {}
    for m in have:
        if m.concept not in best or m.f1 > best[m.concept]["f1"]:
            best[m.concept] = {"latent": m.latent, "f1": round(m.f1, 4)}
    f1s = sorted(v["f1"] for v in best.values())
    return {
        "concepts": len(f1s),
        "f1_at_least_0.5": sum(f >= 0.5 for f in f1s),
        "f1_at_least_0.8": sum(f >= 0.8 for f in f1s),
        "median_best_f1": f1s[len(f1s) // 2] if f1s else None,
        "best": best,
    }


def stage_label(cfg: DemoConfig, paths: DemoPaths, judge_cfg, progress: bool, info: dict, say) -> tuple[str, int]:
    from autointerp.cache import cache_beside
    from autointerp.config import JudgeConfig, LabelConfig, make_judge, resolve_backend
    from autointerp.featurestore import FeatureStoreLabels
    from autointerp.runner import label_latents

    from features.store import writer_lock

    with writer_lock(paths.store):  # as `saesteer label` takes it: one of the two is refused, naming the other
        judge_cfg = judge_cfg or JudgeConfig()
        backend, model_name = resolve_backend(judge_cfg)
        judge = make_judge(judge_cfg, cache_path=cache_beside(paths.store))
        limit = cfg.label_limit if cfg.label_limit is not None else (None if judge is None else 100)
        say(f"judge: {backend}" + (f" ({model_name})" if model_name else " (concept phrases from the contexts, logit effects and neighbours; no LLM)")
            + ("" if limit is None else f"; the {limit} most frequent latents"))
        with FeatureStoreLabels.open(paths.store) as st:
            # also fine under Jupyter's running event loop: label_latents then runs in a worker thread
            report = label_latents(st, judge, LabelConfig(seed=cfg.seed, limit=limit), progress=progress)
            n_labelled = st.store.count_features({"has_label": True})
            from autointerp.embeddings import EmbedConfig, make_embedder
            from autointerp.semantic import embed_labels

            embedder = make_embedder(EmbedConfig())  # a local model when installed: the web app searches by meaning
            say(f"label embeddings: {embed_labels(st.store, embedder)} new ({embedder.name})")
    if report.labelled == 0 and not report.failed:
        info["status"] = "reused"
    info["note"] = report.summary()
    if report.failed:
        say(f"warning: {len(report.failed)} latents could not be labelled (see {paths.store}.label-failures.jsonl)")
    return report.judge, n_labelled


