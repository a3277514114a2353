"""2-d layouts of the latents for the web app's map (table `feature_map`, added to older stores when
opened for writing; `saesteer.featuremap` computes them)."""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import numpy as np

from features.store.base import StoreBase


class StoreFeatureMaps(StoreBase):
    """Write and read the map layouts, one per method."""

    def write_feature_map(self, method: str, rows: Iterable[tuple[int, float, float]], info: Mapping[str, Any]) -> None:
        """Replace the 2-d layout `method` (latent, x, y) and record how it was made (meta feature_map:<method>)."""
        data = [(method, self._check_latent(i), float(x), float(y)) for i, x, y in rows]
        if any(not (np.isfinite(x) and np.isfinite(y)) for _, _, x, y in data):
            raise ValueError("map coordinates must be finite")
        with self.transaction() as c:
            c.execute("DELETE FROM feature_map WHERE method = ?", (method,))
            c.executemany("INSERT INTO feature_map(method, latent, x, y) VALUES (?, ?, ?, ?)", data)
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (f"feature_map:{method}", json.dumps(dict(info))))
        self.refresh()

    def feature_map(self, method: str) -> list[tuple[int, float, float]]:
        with self._read() as c:
            if not self._has_table(c, "feature_map"):
                return []
            return [tuple(r) for r in c.execute("SELECT latent, x, y FROM feature_map WHERE method = ? ORDER BY latent",
                                                (method,))]

    def feature_map_methods(self) -> list[str]:
        with self._read() as c:
            if not self._has_table(c, "feature_map"):
                return []
            return [r[0] for r in c.execute("SELECT DISTINCT method FROM feature_map ORDER BY method")]
