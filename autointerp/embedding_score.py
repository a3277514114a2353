"""Embedding scorer: is the label nearer (in an embedding space) to the contexts where the latent
fires than to those where it does not? (delphi's embedding score.)

Items: the held-out activating contexts (`detect_pos`) and silent ones (`detect_neg`), as text.
The score is the AUROC of cosine(label, context) for activating vs silent contexts: 0.5 is chance,
1.0 every activating context is nearer the label than every silent one. Needs an embedder
(`autointerp.embeddings`): a server's `/v1/embeddings`, a local sentence-transformers model, or
the offline hashing fallback (lexical overlap only).
"""

from __future__ import annotations

import asyncio

from .embeddings import Embedder
from .examples import ExampleSplit
from .interp import Score, Usage

__all__ = ["EmbeddingScorer", "auroc"]


def auroc(pos: list[float], neg: list[float]) -> float | None:
    """P(a random positive scores above a random negative), ties counting half; None without both."""
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


class EmbeddingScorer:
    name = "embedding"

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def batches(self, latent: int, label: str, split: ExampleSplit) -> list:
        return []  # no judge requests

    async def score(self, latent: int, label: str, detail: dict, split: ExampleSplit) -> Score:
        pos, neg = list(split.detect_pos), list(split.detect_neg)
        texts = [label] + ["".join(e.tokens) for e in pos + neg]
        vecs = await asyncio.to_thread(self.embedder.embed, texts)  # a local model computes: off the event loop
        sims = (vecs[1:] @ vecs[0]).tolist()
        a = auroc(sims[:len(pos)], sims[len(pos):])
        return Score(self.name, None, len(pos), len(neg), 0, 0, Usage(), metric="auroc",
                     measured=None if a is None else round(a, 6))
