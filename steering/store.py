"""The feature store as steering sees it: typical max activations, label search, and where the
recommended strength of a sweep goes. Duck-typed over `features.FeatureStore` (steering does not
import the features package):

    from features import FeatureStore
    store = StoreLink(FeatureStore.open("toy.db", readonly=False))
    with steer(model, sae, ["123:clamp=2x"], typical_max=store.typical_max): ...
    label_search(store.search, "ocean")
    store_recommendation(store.record_strength, sweep_result)

The store's `recommended_strength` is kept in one unit: multiples of the feature's
`typical_max_act`, for the op in `strength_details["op"]` (raw value and the curve in the details).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from steering.spec import SteeringError

if TYPE_CHECKING:
    from features.records import SearchHit  # steering never imports features at run time
    from features.store import FeatureStore

STRENGTH_SOURCE = "steering-sweep"


class StoreLink:
    """Steering's view of one feature store (caches typical max activations)."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self._tmax: dict[int, float | None] = {}

    def prefetch(self, features: Iterable[int]) -> None:
        ids = [int(f) for f in features if int(f) not in self._tmax]
        if not ids:
            return
        rows = self.store.list_features(filter={"latents": ids}, limit=len(ids))
        found = {r.latent: r.typical_max_act for r in rows}
        for f in ids:
            v = found.get(f)
            self._tmax[f] = float(v) if v is not None and math.isfinite(v) and v > 0 else None

    def typical_max(self, latent: int) -> float | None:
        """The feature's typical max activation from the store (None if the store has none)."""
        if latent not in self._tmax:
            self.prefetch([latent])
        return self._tmax.get(latent)

    def search(self, query: str, limit: int = 10) -> list[SearchHit]:
        """Full-text search over labels and examples (`SearchHit`s: latent, score, label)."""
        return self.store.search(query, limit)

    def recommended(self, latent: int):
        """(recommended strength in x-max units, its source, None) or None when the store has none."""
        rows = self.store.list_features(filter={"latents": [int(latent)]}, limit=1)
        if not rows or rows[0].recommended_strength is None:
            return None
        return float(rows[0].recommended_strength), self.store.feature(int(latent)).strength_source, None

    # -- presets ---------------------------------------------------------------------------
    def preset(self, name: str):
        """The `steering.presets.Preset` saved under `name` in this store (SteeringError if none)."""
        from steering.presets import Preset, check_preset_name

        record = self.store.preset_record(check_preset_name(name))
        if record is None:
            names = self.store.preset_names()
            known = f"presets here: {', '.join(names)}" if names else "it has no presets (save one with `saesteer preset save`)"
            raise SteeringError(f"no preset named {name!r} in the feature store {self.store.path}; {known}")
        return Preset.from_json(record)

    def presets(self) -> list[str]:
        return self.store.preset_names()

    def save_preset(self, preset: Any, *, overwrite: bool = False) -> None:
        self.store.save_preset(preset.name, preset.to_json(), overwrite=overwrite)

    def record_strength(self, latent: int, strength: float | None, unit: str, info: dict[str, Any]) -> None:
        """Store a sweep's recommended strength as a multiple of the typical max activation (None:
        the sweep found no strength that works; stored as such, with the sweep in the details)."""
        if strength is None:
            multiple = None
        elif unit == "max_act":
            multiple = float(strength)
        else:
            tmax = self.typical_max(latent)
            if tmax is None:
                raise SteeringError(
                    f"latent {latent}: the store has no typical max activation, so a raw strength cannot be stored "
                    f"as a multiple of it; sweep with unit=max_act after building the store's statistics"
                )
            multiple = float(strength) / tmax
        details = {"unit": "max_act", **{k: v for k, v in info.items()}}
        self.store.set_recommended_strength(int(latent), multiple, source=STRENGTH_SOURCE, details=details)
