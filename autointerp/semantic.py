"""Semantic search over labels: label vectors stored in the feature store, queries embedded with
the same model, nearest labels first; output scores break near-ties.

    n = embed_labels(store, embedder)                # vectors for current labels that lack one
    hits = semantic_search(store, embedder, "sea")   # [SemanticHit(latent, similarity, rank_score, label)]

`store` is a `features.FeatureStore` (writable for `embed_labels`). A vector belongs to one label:
a relabelled latent gets a new vector on the next `embed_labels`. Ranking: cosine similarity, plus
`OUTPUT_WEIGHT * (output score - 0.5)` for latents with an output score (does steering with the
latent move text toward its label? see `autointerp.output_score`), so of two equally close labels
the one that steers as labelled comes first. Full-text search (`FeatureStore.search`) stays the
fallback wherever no vectors or no embedder are available.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .embeddings import Embedder
from .output_score import OUTPUT_METHOD

__all__ = ["SemanticHit", "embed_labels", "semantic_search", "output_scores", "store_embedder", "search_labels",
           "OUTPUT_WEIGHT", "OUTPUT_METHOD", "MIN_SIMILARITY"]

OUTPUT_WEIGHT = 0.1
MIN_SIMILARITY = 0.2  # a real embedding model's cosine below this is no match


@dataclass(frozen=True)
class SemanticHit:
    latent: int
    similarity: float  # cosine of label and query vectors
    rank_score: float  # what the results are ordered by
    label: str | None
    output_score: float | None


def _current_labels(store: Any) -> dict[int, tuple[int, str]]:
    """latent -> (label id, text) of every labelled latent."""
    out: dict[int, tuple[int, str]] = {}
    rows = store.list_features(sort="latent", filter={"has_label": True}, offset=0, limit=store.d_sae)
    for r in rows:
        lab = store.label(r.latent)
        if lab is not None:
            out[r.latent] = (lab.id, lab.text)
    return out


def embed_labels(store: Any, embedder: Embedder, *, batch: int = 256, progress: bool = False) -> int:
    """Embed the current label of every latent whose stored vector (for this embedder) is missing
    or belongs to an older label; returns how many were embedded. `progress`: a bar (stderr)."""
    from tqdm.auto import tqdm

    labels = _current_labels(store)
    ids, lids, _ = store.label_embeddings(embedder.name)
    have = dict(zip(ids, lids))
    todo = sorted(i for i, (lid, _) in labels.items() if have.get(i) != lid)
    with tqdm(total=len(todo), desc="embedding labels", unit="label", disable=not progress) as bar:
        for k in range(0, len(todo), batch):
            chunk = todo[k:k + batch]
            vecs = embedder.embed([labels[i][1] for i in chunk])
            store.write_label_embeddings(embedder.name, [(i, labels[i][0], v) for i, v in zip(chunk, vecs)])
            bar.update(len(chunk))
    return len(todo)


def output_scores(store: Any, latents: Sequence[int]) -> dict[int, float]:
    """The latest output score of each given latent that has one."""
    if not latents:
        return {}
    rows = store.list_features(filter={"latents": list(latents), "score_method": OUTPUT_METHOD, "min_score": float("-inf")},
                               limit=len(latents))
    out = {}
    for r in rows:
        for s in store.feature(r.latent).scores:
            if s.method == OUTPUT_METHOD:
                out[r.latent] = float(s.value)
                break
    return out


def semantic_search(store: Any, embedder: Embedder, query: str, limit: int = 20,
                    min_similarity: float = 0.0) -> list[SemanticHit]:
    """Latents whose labels are nearest `query` (see the module docstring); [] when the store has
    no vectors of this embedder."""
    ids, _, m = store.label_embeddings(embedder.name)
    if not ids or not query.strip():
        return []
    q = embedder.embed([query])[0]
    if q.shape[0] != m.shape[1]:
        raise ValueError(f"the query vector has {q.shape[0]} values but the stored {embedder.name} vectors {m.shape[1]}")
    sim = m @ q
    order = np.argsort(-sim, kind="stable")[: max(limit * 4, limit)]
    cand = [ids[j] for j in order if sim[j] > min_similarity]
    outs = output_scores(store, cand)
    labels = store.labels(cand)
    hits = []
    for j in order:
        if sim[j] <= min_similarity:
            continue
        i = ids[j]
        o = outs.get(i)
        rank = float(sim[j]) + (OUTPUT_WEIGHT * (o - 0.5) if o is not None else 0.0)
        hits.append(SemanticHit(i, round(float(sim[j]), 6), round(rank, 6), labels.get(i), o))
    hits.sort(key=lambda h: (-h.rank_score, h.latent))
    return hits[:limit]


def store_embedder(store: Any) -> Embedder | None:
    """An embedder for the store's label vectors of a real embedding model (the first one this
    machine can load), or None: the offline hashing vectors are lexical, and full-text search does
    that job better."""
    from .embeddings import embedder_for_name

    for m in store.embedding_models():
        if m.startswith("offline/"):
            continue
        try:
            emb = embedder_for_name(m)
        except Exception:  # a model that cannot load here: try the next one
            emb = None
        if emb is not None:
            return emb
    return None


def search_labels(store: Any, query: str, limit: int = 10, embedder: Embedder | None = None) -> list[dict]:
    """Steering candidates for a concept: by meaning (ranked with output scores) when the store has
    vectors a real model can match, else the store's full-text search; [{latent, label, score, by}]."""
    emb = embedder if embedder is not None else store_embedder(store)
    if emb is not None:
        hits = semantic_search(store, emb, query, limit, min_similarity=MIN_SIMILARITY)
        if hits:
            return [{"latent": h.latent, "label": h.label, "score": h.rank_score, "by": "meaning"} for h in hits]
    return [{"latent": h.latent, "label": h.label, "score": h.score, "by": "text"} for h in store.search(query, limit)]
