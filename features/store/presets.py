"""Steering presets kept in the store (table `presets`, made on the first save: stores from older
versions have none); `steering.presets` makes and reads the records."""

from __future__ import annotations

import json
from typing import Any, Mapping

from features.records import utc_now
from features.store.base import StoreBase
from features.store.errors import StoreError, StoreMismatchError


class StorePresets(StoreBase):
    """Save, read, list and delete named steering presets."""

    def save_preset(self, name: str, record: Mapping[str, Any], *, overwrite: bool = False) -> None:
        """Keep a steering preset (a JSON record, `steering.presets.Preset.to_json()`) under `name`.
        A preset made for another SAE (`record["sae_fingerprint"]`) is refused (StoreMismatchError);
        an existing name is refused unless `overwrite`."""
        fp = record.get("sae_fingerprint")
        if fp != self.sae_fingerprint:
            raise StoreMismatchError(
                f"preset {name!r} was made for the SAE with weights hash {str(fp)[:12]}, but {self.path} describes "
                f"the SAE with hash {self.sae_fingerprint[:12]}; a feature id means nothing in another SAE: save the "
                f"preset again from this store's SAE"
            )
        text = json.dumps(dict(record), sort_keys=True, allow_nan=False)
        now = utc_now()
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS presets (name TEXT PRIMARY KEY, record TEXT NOT NULL, "
                      "created_at TEXT NOT NULL, updated_at TEXT NOT NULL)")
            old = c.execute("SELECT created_at FROM presets WHERE name = ?", (name,)).fetchone()
            if old is not None and not overwrite:
                raise StoreError(f"{self.path} already has a preset named {name!r}; pick another name or overwrite it")
            c.execute("INSERT OR REPLACE INTO presets(name, record, created_at, updated_at) VALUES (?, ?, ?, ?)",
                      (name, text, old[0] if old else now, now))

    def preset_record(self, name: str) -> dict[str, Any] | None:
        """The preset saved under `name` (None if there is none)."""
        with self._read() as c:
            if not self._has_table(c, "presets"):
                return None
            row = c.execute("SELECT record FROM presets WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def preset_names(self) -> list[str]:
        with self._read() as c:
            if not self._has_table(c, "presets"):
                return []
            return [r[0] for r in c.execute("SELECT name FROM presets ORDER BY name")]

    def delete_preset(self, name: str) -> bool:
        """Remove a preset; False if there was none by that name."""
        with self.transaction() as c:
            if not self._has_table(c, "presets"):
                return False
            return c.execute("DELETE FROM presets WHERE name = ?", (name,)).rowcount > 0
