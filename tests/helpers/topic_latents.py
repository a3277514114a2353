"""Synthetic latents with a known concept, lexical or contextual, for the concept explainer tests.

Documents of two settings mix the setting's words with function words. The contextual latent
fires on every token of ocean documents, strongly on the function words (so they are what its
examples mark) and weakly on the ocean words, and writes ocean words (its logit effects); the
lexical latent fires on prepositions wherever they are.

    lex = contextual_latent(seed=0)      # LatentExamples with evidence (promoted ocean words)
    lex = lexical_latent(seed=0)
"""

from __future__ import annotations

import random

from autointerp.examples import Example, LatentEvidence, LatentExamples

OCEAN = ("gull", "gulls", "shell", "shells", "net", "nets", "sailor", "diver", "boat", "reef", "whale")
FOREST = ("fox", "owl", "tree", "trees", "leaf", "ranger", "mushroom", "acorn", "bear", "river")
FUNCTION = ("the", "a", "is", "was", "and", "many", "two")
PREPOSITIONS = ("in", "on", "by", "near", "under")


def _doc(rng: random.Random, setting: tuple[str, ...], n: int = 24, preps: bool = False) -> list[str]:
    out = []
    for _ in range(n):
        r = rng.random()
        if preps and r < 0.2:
            out.append(rng.choice(PREPOSITIONS))
        elif r < 0.55:
            out.append(rng.choice(FUNCTION))
        else:
            out.append(rng.choice(setting))
    return out


def _example(words: list[str], acts: list[float], ref: str, kind: str, q: int | None = None) -> Example:
    return Example(tuple(w if i == 0 else " " + w for i, w in enumerate(words)), tuple(acts), ref, kind, q)


def contextual_latent(seed: int = 0, latent: int = 0) -> LatentExamples:
    rng = random.Random(seed)

    def active(kind: str, j: int, q: int | None = None) -> Example:
        words = _doc(rng, OCEAN)
        # strong on function words, weak (below the marking threshold) on the setting's words
        acts = [round(rng.uniform(3.0, 5.0) if w in FUNCTION else rng.uniform(0.2, 0.8), 3) for w in words]
        return _example(words, acts, f"{kind}:{j}", kind, q)

    top = tuple(active("top", j) for j in range(12))
    quant = tuple(active("quantile", j, j % 4) for j in range(24))
    rand = tuple(_example(_doc(rng, FOREST), [0.0] * 24, f"random:{j}", "random") for j in range(20))
    evidence = LatentEvidence(promoted=(("gulls", 2.0), ("shells", 1.8), ("nets", 1.7), ("<pad>", 1.6), ("whale", 1.5)),
                              suppressed=(("owl", -1.0),))
    return LatentExamples(latent, top, quant, rand, evidence=evidence)


def lexical_latent(seed: int = 0, latent: int = 1) -> LatentExamples:
    rng = random.Random(seed + 100)

    def active(kind: str, j: int, q: int | None = None) -> Example:
        words = _doc(rng, OCEAN if j % 2 else FOREST, preps=True)
        acts = [round(rng.uniform(1.0, 5.0), 3) if w in PREPOSITIONS else 0.0 for w in words]
        return _example(words, acts, f"{kind}:{j}", kind, q)

    top = tuple(active("top", j) for j in range(12))
    quant = tuple(active("quantile", j, j % 4) for j in range(24))
    rand = tuple(_example(_doc(rng, FOREST if j % 2 else OCEAN), [0.0] * 24, f"random:{j}", "random") for j in range(20))
    evidence = LatentEvidence(promoted=(("the", 1.0), ("a", 0.9), ("river", 0.5)))
    return LatentExamples(latent, top, quant, rand, evidence=evidence)
