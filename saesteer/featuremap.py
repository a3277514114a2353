"""The feature map: every live latent as a point in 2-d, near latents with similar directions (or
labels), stored in the feature store for the web app's map page.

    key = build_map(store, source="decoder", method="umap", sae=sae)      # -> "decoder-umap"
    store.feature_map(key)                                               # [(feature id, x, y)]

Sources: `decoder`, the SAE's decoder directions (unit rows of W_dec; the SAE must be the one the
store was built from), or `labels`, the stored label embeddings of one embedding model
(`autointerp.semantic.embed_labels`). Methods: `umap` (umap-learn, an optional dependency: `pip
install 'saesteer[map]'`; cosine metric, fixed seed; the first call in a process compiles numba
code, which takes from seconds to minutes on a slow CPU), or `pca` (the two leading principal
components; instant, for quick looks and tests). Coordinates are rescaled to [-1, 1]. Here in
`saesteer`: it loads an SAE beside a store, which only the face does.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["METHODS", "SOURCES", "layout_2d", "build_map"]

METHODS = ("umap", "pca")
INSTALL_MAP = "pip install 'saesteer[map]'"  # the extra (pyproject.toml) that brings umap-learn
SOURCES = ("decoder", "labels")


def _pca_2d(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    out = x @ vt[:2].T
    if out.shape[1] < 2:
        out = np.concatenate([out, np.zeros((out.shape[0], 2 - out.shape[1]))], 1)
    return out


def layout_2d(vectors: np.ndarray, method: str = "umap", *, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """[n, d] -> [n, 2], each axis rescaled to [-1, 1]."""
    if method not in METHODS:
        raise ValueError(f"unknown map method {method!r}; choose {' or '.join(METHODS)}")
    x = np.asarray(vectors, dtype=np.float32)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    if n < 4 or method == "pca":
        y = _pca_2d(x)
    else:
        try:
            import umap
        except ImportError:
            raise ValueError(f"the umap method needs umap-learn, an optional dependency: {INSTALL_MAP}; "
                             f"or use --method pca") from None
        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, n - 1), metric="cosine", random_state=seed,
                            init="random" if n < 16 else "spectral")
        y = reducer.fit_transform(x)
    y = np.asarray(y, dtype=np.float64)
    lo, hi = y.min(0), y.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return (2 * (y - lo) / span - 1).astype(np.float32)


def build_map(store: Any, *, source: str = "decoder", method: str = "umap", sae: Any = None,
              embed_model: str | None = None, seed: int = 0) -> str:
    """Compute a layout of the store's live latents and write it into the (writable) store;
    returns its key `<source>-<method>`."""
    if source not in SOURCES:
        raise ValueError(f"unknown map source {source!r}; choose {' or '.join(SOURCES)}")
    alive = [r.latent for r in store.list_features(sort="latent", filter={"alive_only": True}, limit=store.d_sae)]
    info: dict[str, Any] = {"source": source, "method": method, "seed": seed}
    if source == "decoder":
        if sae is None:
            raise ValueError("a decoder map needs the SAE (--sae DIR) the store was built from")
        store.check_sae(sae)
        w = sae.W_dec.detach().float().cpu().numpy()
        ids: Sequence[int] = alive
        vecs = w[list(ids)]
    else:
        models = store.embedding_models()
        model = embed_model or next((m for m in models if not m.startswith("offline/")), models[0] if models else None)
        if model is None:
            raise ValueError("the store has no label embeddings yet; run `saesteer label` (it embeds the labels) first")
        have, _, m = store.label_embeddings(model)
        keep = [k for k, i in enumerate(have) if i in set(alive)]
        ids, vecs = [have[k] for k in keep], m[keep]
        info["embed_model"] = model
    xy = layout_2d(vecs, method, seed=seed)
    key = f"{source}-{method}"
    info["n"] = len(ids)
    store.write_feature_map(key, [(int(i), float(p[0]), float(p[1])) for i, p in zip(ids, xy)], info)
    return key
