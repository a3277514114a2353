"""Fixtures for the steering tests: a tiny random HookedTransformer and random SAEs on its hooks.

    from helpers.steering_fixtures import tiny_model, random_sae
    model = tiny_model()                                   # cached per process (read-only use!)
    sae = random_sae(model, "jumprelu", hook="blocks.1.hook_resid_post", d_sae=128, seed=0)
"""

from __future__ import annotations

import functools

import torch

import saes
from helpers.threads import torch_threads  # noqa: F401 (re-exported for the steering tests)

PROMPTS = ["the sea and the ship", "a tree", "the whale sees the harbor at the shore", "bread"]


@functools.lru_cache(maxsize=4)
def tiny_model(n_layers: int = 2, d_model: int = 64, n_ctx: int = 64, seed: int = 0):
    """A seeded random 2-layer model over the tiny word vocabulary (shared: do not mutate)."""
    from helpers.tiny_model import make_model, make_tokenizer

    return make_model(make_tokenizer(), n_layers=n_layers, d_model=d_model, n_ctx=n_ctx, seed=seed)


def random_sae(model, arch: str = "jumprelu", hook: str = "blocks.1.hook_resid_post", d_sae: int = 128,
               seed: int = 0, k: int = 8, threshold: float = 0.05, d_in: int | None = None):
    """A random SAE reading `hook` (d_in = d_model unless given) with non-trivial biases/thresholds."""
    g = torch.Generator().manual_seed(seed)
    kw = {}
    if arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        kw["k"] = k
    if arch == "matryoshka_batchtopk":
        kw["matryoshka_widths"] = [d_sae // 4, d_sae]
    sae = saes.create_sae(arch, d_in or model.cfg.d_model, d_sae, generator=g, **kw)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=g)
        sae.b_dec.normal_(0, 0.05, generator=g)
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(threshold)
    sae.cfg.metadata["hook_name"] = hook
    return sae


def hook_activations(model, tokens, hook: str):
    """Activations at `hook` of a forward on `tokens` (left padded), whatever hooks are active."""
    got = {}

    def grab(x, hook):
        got["x"] = x.detach().clone()

    with model.hooks(fwd_hooks=[(hook, grab)]):
        model(tokens, padding_side="left")
    return got["x"]
