"""A small real feature store with a model and SAE behind it, for the web app's tests.

A tiny random HookedTransformer (helpers.tiny_model) is run over a short word-level corpus; a
Matryoshka SAE (two levels) reads `blocks.0.hook_resid_post`; `features.build_feature_store`
builds the store with logit effects, then some latents get labels and scores, one of them a
script-injection payload (the browser test checks it renders as inert text).

    ws = build_web_store(tmp_path)
    ws.path, ws.model, ws.sae, ws.labels   # labels: {latent: text}
    build_web_store(tmp_path, model=load_model(checkpoint))   # the store over a model of one's own

Takes ~2 s after the ~7 s import of transformer_lens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

XSS_LABEL = '<script>window.__xss=1;alert("xss")</script><img src=x onerror="window.__xss=2">&amp; "quoted"'
HOOK = "blocks.0.hook_resid_post"


@dataclass
class WebStore:
    path: Path
    model: Any
    sae: Any
    labels: dict[int, str]
    xss_latent: int
    d_sae: int


def _corpus(n_contexts: int, length: int, seed: int) -> list[str]:
    from helpers.tiny_model import _FUNCTION, _TOPICS, _VERBS

    rng = random.Random(seed)
    texts = []
    for _ in range(n_contexts):
        words: list[str] = []
        while len(words) < length:
            topic = rng.choice(list(_TOPICS.values())).split()
            words += [rng.choice(_FUNCTION), rng.choice(topic), rng.choice(_VERBS), rng.choice(_FUNCTION), rng.choice(topic), "."]
        texts.append(" ".join(words[:length]))
    return texts


def build_web_store(
    directory: str | Path,
    *,
    d_sae: int = 48,
    n_contexts: int = 96,
    context_length: int = 24,
    seed: int = 0,
    name: str = "tiny",
    tokenizer=None,
    n_layers: int = 1,
    model=None,
    n_ctx: int = 64,
) -> WebStore:
    import torch

    from features import BuildConfig, FeatureStore, LabelProvenance, ScoreInput, TensorSource, build_feature_store
    from helpers.tiny_model import make_model, make_tokenizer
    from saes.registry import create_sae

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if model is not None:  # e.g. a checkpoint loaded by saesteer.models.load_model (a TransformerBridge)
        tok = model.tokenizer
    else:
        tok = tokenizer if tokenizer is not None else make_tokenizer()
        model = make_model(tok, n_layers=n_layers, d_model=32, n_ctx=n_ctx, n_heads=4, seed=seed,
                           model_name="tiny-test-model")
    texts = _corpus(n_contexts, context_length, seed)
    ids = model.to_tokens(texts, prepend_bos=True)[:, :context_length]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=HOOK)
    acts = cache[HOOK].reshape(-1, model.cfg.d_model).float()
    g = torch.Generator().manual_seed(seed)
    sae = create_sae(
        "matryoshka_batchtopk", model.cfg.d_model, d_sae, k=4, matryoshka_widths=[d_sae // 4, d_sae],
        metadata={"hook_name": HOOK, "model_name": "tiny-test-model"}, generator=g,
    )
    sae.eval()
    # Per-latent inference thresholds giving a spread of firing rates (from ~40% down to ~0.3%),
    # and two latents that never fire, so the store holds ok, dense and dead latents.
    with torch.no_grad():
        pre_RF = sae.pre_activations(acts)
        rates = torch.logspace(-0.4, -2.5, d_sae)
        rates = rates[torch.randperm(d_sae, generator=g)]
        thr_F = torch.stack([torch.quantile(pre_RF[:, f], 1 - float(rates[f])) for f in range(d_sae)]).clamp_min(1e-4)
        thr_F[-3:-1] = 1e6
        sae.threshold.copy_(thr_F)
    source = TensorSource(acts, ids, hook_name=HOOK, bos_id=tok.bos_token_id, name="web-test-corpus")
    cfg = BuildConfig(top_k=6, n_quantile=8, n_negative=4, negative_pool=64, window_before=8, window_after=3,
                      batch_rows=512, n_neighbours=4, checkpoint_rows=0)
    path = directory / f"{name}.db"
    build_feature_store(path, sae, source, cfg, model=model, progress=False)

    labels = {}
    with FeatureStore.open(path, readonly=False) as store:
        alive = [s.latent for s in store.list_features(sort="freq", filter={"alive_only": True}, limit=d_sae)]
        prov = LabelProvenance(judge_model="test-judge", judge_kind="human", prompt_version="web-test-1")
        topics = ["ocean words", "forest animals", "city traffic", "kitchen tools", "verbs of motion",
                  "punctuation: full stop", "function words", "sailing and ships"]
        for rank, i in enumerate(alive[: len(topics)]):
            labels[i] = topics[rank]
        xss = alive[len(topics)] if len(alive) > len(topics) else alive[-1]
        labels[xss] = XSS_LABEL
        for k, (i, text) in enumerate(sorted(labels.items())):
            lid = store.write_label(i, text, provenance=prov, explanation=f"explanation of latent {i}")
            store.write_scores(i, [ScoreInput("detection", 0.5 + 0.05 * (k % 10), 20), ScoreInput("fuzzing", 0.6, 20)],
                               provenance=prov, label_id=lid)
            if "ocean" in text:
                store.set_recommended_strength(i, 3.0, source="web-test", details={"op": "add"})
    return WebStore(path=path, model=model, sae=sae, labels=labels, xss_latent=xss, d_sae=d_sae)
