"""Real activations for the publish tests: a local checkpoint's hook outputs on code, accented prose and CJK.

    acts = activations_on_texts(real_models.path("gpt2"), ["blocks.1.hook_resid_post", "blocks.1.attn.hook_z"])
    acts["blocks.1.attn.hook_z"]        # [tokens, n_heads, d_head]: hook-shaped, as SAELens reads it
"""

from __future__ import annotations

import torch

TEXTS = ["def mean(xs):\n    return sum(xs) / len(xs)  # average",
         "The café's crème brûlée was naïve; 東京で会いましょう。 See you at 9 p.m."]


def activations_on_texts(model_dir, hooks) -> dict[str, torch.Tensor]:
    """{hook: [tokens, *hook dims]} of the model at `model_dir` (loaded as saesteer loads it) on TEXTS."""
    from saesteer.models import load_model

    model = load_model(str(model_dir), device="cpu")
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(TEXTS), names_filter=list(hooks))
    return {h: cache[h].flatten(0, 1).clone() for h in hooks}
