"""Label embeddings (table `label_embeddings`, added to older stores when opened for writing): one
vector per latent and embedding model, for search by meaning (`autointerp.semantic`)."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from features.store.base import StoreBase
from features.store.errors import StoreError


class StoreLabelEmbeddings(StoreBase):
    """Write and read the label vectors of an embedding model."""

    def write_label_embeddings(self, model: str, rows: Iterable[tuple[int, int | None, Any]]) -> int:
        """Store (latent, label id, vector) rows of one embedding model, replacing those latents' old ones."""
        data = []
        for latent, lid, vec in rows:
            v = np.asarray(vec, dtype="<f4").ravel()
            if not np.all(np.isfinite(v)):
                raise ValueError(f"embedding of latent {latent} has non-finite values")
            data.append((model, self._check_latent(latent), lid, int(v.size), v.tobytes()))
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO label_embeddings(model, latent, label_id, dim, vector) "
                          "VALUES (?, ?, ?, ?, ?)", data)
        return len(data)

    def label_embeddings(self, model: str) -> tuple[list[int], list[int | None], np.ndarray]:
        """(latents, label ids, vectors [n, dim]) stored for `model`; empty when none."""
        with self._read() as c:
            if not self._has_table(c, "label_embeddings"):
                return [], [], np.zeros((0, 0), dtype=np.float32)
            rows = c.execute("SELECT latent, label_id, dim, vector FROM label_embeddings WHERE model = ? "
                             "ORDER BY latent", (model,)).fetchall()
        if not rows:
            return [], [], np.zeros((0, 0), dtype=np.float32)
        dims = {r[2] for r in rows}
        if len(dims) != 1:
            raise StoreError(f"{self.path}: label embeddings of {model!r} have several widths {sorted(dims)}; re-embed them")
        m = np.stack([np.frombuffer(r[3], dtype="<f4") for r in rows])
        return [r[0] for r in rows], [r[1] for r in rows], m

    def embedding_models(self) -> list[str]:
        """Embedding models with stored label vectors, the most vectors first."""
        with self._read() as c:
            if not self._has_table(c, "label_embeddings"):
                return []
            return [r[0] for r in c.execute("SELECT model, COUNT(*) n FROM label_embeddings GROUP BY model "
                                            "ORDER BY n DESC, model")]
