"""Synthetic latents for auto-interp tests: latent i fires on one trigger word.

`make_latents(n)` gives LatentExamples where latent i's trigger is TRIGGERS[i]: its top and
quantile examples are random word windows with the trigger inserted (activation on it, a weak
activation on the next token now and then), its random contexts never contain it. The right
label of latent i is therefore TRIGGERS[i], which the fake LLM of `judge_server` and the offline
explainer both find. Seeded and tiny.
"""

from __future__ import annotations

import random

from autointerp.examples import Example, LatentExamples

FILLER = ("the a of to in and with on at by from was is it this that there then when".split()
          + "man woman day night road house door hand time year way week light water".split())
TRIGGERS = ("ocean forest castle rocket kitchen violin tiger garden winter copper "
            "dragon harbor pencil mirror thunder candle desert island bridge market "
            "planet silver engine lantern meadow orchard glacier comet falcon wizard").split()


def _window(rng: random.Random, n: int, trigger: str | None, n_hits: int) -> tuple[list[str], list[float]]:
    """Word pieces as a word-level tokenizer's windows have them: a space before every word but the first."""
    toks = [rng.choice(FILLER) for _ in range(n)]
    acts = [0.0] * n
    if trigger is not None:
        for p in rng.sample(range(2, n - 2), n_hits):
            toks[p] = trigger
            acts[p] = round(rng.uniform(2.0, 9.0), 3)
            if rng.random() < 0.3:
                acts[p + 1] = round(rng.uniform(0.05, 0.3), 3)  # weak spill onto the next token
    return [t if i == 0 else " " + t for i, t in enumerate(toks)], acts


def make_latents(n: int, *, seed: int = 0, n_top: int = 12, n_quantile: int = 24, n_random: int = 20,
                 length: int = 24, injections: dict[int, tuple[str, ...]] | None = None) -> list[LatentExamples]:
    """`injections[latent]` = extra token strings planted (with zero activation) in every example
    of that latent, e.g. a prompt-injection attempt."""
    out = []
    for i in range(n):
        rng = random.Random(seed * 1000 + i)
        trig = TRIGGERS[i % len(TRIGGERS)]  # beyond 30 latents the triggers repeat
        extra = tuple((injections or {}).get(i, ()))

        def ex(kind: str, j: int, trigger: str | None, q: int | None = None) -> Example:
            toks, acts = _window(rng, length, trigger, rng.choice((1, 1, 2)))
            if extra:
                toks = toks[:3] + [" " + t for t in extra] + toks[3:]
                acts = acts[:3] + [0.0] * len(extra) + acts[3:]
            return Example(tuple(toks), tuple(acts), ref=f"{kind}:{i}:{j}", kind=kind, quantile=q)

        top = tuple(ex("top", j, trig) for j in range(n_top))
        quant = tuple(ex("quantile", j, trig, q=j % 4) for j in range(n_quantile))
        rand = tuple(ex("random", j, None) for j in range(n_random))
        out.append(LatentExamples(i, top, quant, rand))
    return out
