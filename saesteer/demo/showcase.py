"""The labelled features the summary shows: the best latents of some ground-truth concepts, then the
best detection scores."""

from __future__ import annotations

from typing import Any

from saesteer.demo.results import FeatureShowcase


SHOWCASE_CONCEPTS = ("colour", "mood", "question", "dialogue", "tense:past", "number", "speech", "plural",
                     "animal", "pos:verb", "name")


def pick_showcase(store, n: int, topic: str | None = None) -> list[FeatureShowcase]:
    """Labelled latents for the summary: first the best latent of some ground-truth concepts (a
    topic, colour, mood, questions, dialogue, ...; token F1 >= 0.3), then the best detection scores,
    distinct latents and labels."""
    if n <= 0:
        return []
    best: dict[str, Any] = {}
    for m in store.concept_matches():
        if m.concept not in best or m.f1 > best[m.concept].f1:
            best[m.concept] = m
    picks: list[tuple[int, str | None, float | None]] = []
    for concept in ((f"topic:{topic}",) if topic else ()) + SHOWCASE_CONCEPTS:
        m = best.get(concept)
        if m is not None and m.f1 >= 0.3 and all(m.latent != p[0] for p in picks):
            picks.append((m.latent, concept, m.f1))
    flt = {"alive_only": True, "has_label": True, "exclude_flags": ["dense", "bos_only"]}
    for r in store.list_features(sort="score:detection", filter=flt, limit=max(50, 8 * n)):
        picks.append((r.latent, None, None))
    out: list[FeatureShowcase] = []
    seen_ids: set[int] = set()
    seen_labels: set[str] = set()
    for latent, concept, f1 in picks:
        if len(out) >= n:
            break
        rec = store.feature(latent)
        label = rec.label.text if rec.label is not None else ""
        key = label.split("(")[0].strip()
        if latent in seen_ids or not key or key in seen_labels or "dense" in rec.stats.flags:
            continue
        seen_ids.add(latent)
        seen_labels.add(key)
        scores = {s.method: round(float(s.value), 3) for s in reversed(rec.scores)}  # newest wins
        exs = [_marked(e) for e in rec.top_examples[:3]]
        out.append(FeatureShowcase(latent, label, scores, float(rec.stats.freq), rec.level, exs, concept,
                                   None if f1 is None else round(f1, 3)))
    return out


def _marked(example, before: int = 8, after: int = 3) -> str:
    """An example window as text, the activating (centre) token in [[ ]], cropped around it."""
    from features.tokentext import mark_pieces, visible

    toks = list(example.tokens) if any(example.tokens) else [f" <{t}>" for t in example.token_ids]
    c = example.centre
    lo, hi = max(0, c - before), min(len(toks), c + after + 1)
    shown = [visible(t, n) for t, n in zip(toks[lo:hi], toks[lo + 1:hi] + [""])]  # n: the next piece shown
    text = mark_pieces(shown, [c - lo], "[[", "]]").strip()
    return ("... " if lo > 0 else "") + text + (" ..." if hi < len(toks) else "")

