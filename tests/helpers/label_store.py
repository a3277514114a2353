"""A real feature store (built by `features.build_feature_store`) whose latents have known meanings.

Latent i of a hand-made ReLU SAE fires exactly on the token TRIGGERS[i] (its encoder reads a
one-hot "activation" of the token; the strength varies per occurrence), so the right label of
latent i is TRIGGERS[i]. Optional `plant` strings are put into the corpus around triggers (e.g. a
prompt-injection sentence) just before triggers, so they show up in the store's example windows
as dataset text.

    path, triggers = build_trigger_store(tmp_path / "toy.db", n_latents=8)
"""

from __future__ import annotations

import random
from pathlib import Path

from .label_data import FILLER, TRIGGERS


class _WordTokenizer:
    """Just what the build needs from a tokenizer: len() and batch_decode of single ids."""

    def __init__(self, words: list[str]) -> None:
        self.words = words

    def __len__(self) -> int:
        return len(self.words)

    def batch_decode(self, ids, **kw) -> list[str]:
        return [" ".join(self.words[i] for i in seq) for seq in ids]

    def decode(self, ids, **kw) -> str:
        return " ".join(self.words[i] for i in ids)


def build_trigger_store(
    path: str | Path,
    *,
    n_latents: int = 8,
    n_contexts: int = 160,
    context_length: int = 48,
    seed: int = 0,
    plant: dict[int, list[str]] | None = None,
    plant_rate: float = 0.5,
    overwrite: bool = False,
) -> tuple[Path, list[str]]:
    """Build the store at `path`; returns (path, triggers). `plant[i]` = words inserted right
    right before some occurrences of latent i's trigger (with zero activation). `overwrite`: rebuild
    a store already at `path` (the build's --overwrite)."""
    import torch

    from features import BuildConfig, TensorSource, build_feature_store
    from saes.registry import create_sae

    triggers = TRIGGERS[:n_latents]
    words = list(FILLER) + list(triggers)
    for extra in (plant or {}).values():
        for w in extra:
            if w not in words:
                words.append(w)
    index = {w: i for i, w in enumerate(words)}
    rng = random.Random(seed)
    ctx: list[list[int]] = []
    for c in range(n_contexts):
        toks = [rng.choice(FILLER) for _ in range(context_length)]
        for _ in range(rng.choice((1, 2, 3))):
            latent = rng.randrange(n_latents)
            extra = (plant or {}).get(latent) or []
            p = rng.randrange(len(extra) + 1, context_length - 6)
            toks[p] = triggers[latent]
            if extra and rng.random() < plant_rate:
                toks[p - len(extra): p] = extra
        ctx.append([index[t] for t in toks[:context_length]])
    ctx_CL = torch.tensor(ctx, dtype=torch.int64)
    V = len(words)
    gen = torch.Generator().manual_seed(seed)
    mag_CL = 1.0 + 4.0 * torch.rand(ctx_CL.shape, generator=gen)
    acts_RD = torch.zeros(ctx_CL.numel(), V)
    acts_RD[torch.arange(ctx_CL.numel()), ctx_CL.reshape(-1)] = mag_CL.reshape(-1)
    sae = create_sae("standard", V, n_latents, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.W_enc.zero_()
        for i, t in enumerate(triggers):
            sae.W_enc[index[t], i] = 1.0
        sae.b_enc.fill_(-0.5)
    source = TensorSource(acts_RD, ctx_CL, name="trigger-corpus")
    cfg = BuildConfig(top_k=10, n_quantile=24, n_negative=20, negative_pool=256, window_before=12, window_after=4,
                      batch_rows=1024, n_neighbours=3, checkpoint_rows=0)
    build_feature_store(path, sae, source, cfg, tokenizer=_WordTokenizer(words), progress=False, overwrite=overwrite)
    return Path(path), list(triggers)
