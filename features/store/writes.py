"""Writing what auto-interp and steering learn about latents: labels (with their provenance),
scores, a recommended steering strength, concept matches. Each write is one transaction."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable, Mapping

import numpy as np

from features.records import ConceptMatch, LabelProvenance, ScoreInput, utc_now
from features.store.base import StoreBase
from features.store.reads import current_label


class StoreWrites(StoreBase):
    """Labels, scores, recommended strengths and concept matches."""

    def _insert_provenance(self, c: sqlite3.Connection, p: LabelProvenance) -> int:
        created = p.created_at or utc_now()
        cur = c.execute(
            "INSERT INTO label_provenance(judge_model, judge_kind, offline, prompt_version, examples_used, params, "
            "created_at, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (p.judge_model, p.judge_kind, int(p.offline), p.prompt_version, json.dumps([int(x) for x in p.examples_used]),
             json.dumps(p.params, sort_keys=True), created, json.dumps(p.extra, sort_keys=True)),
        )
        return int(cur.lastrowid)

    def write_label(self, latent: int, label: str, *, provenance: LabelProvenance, explanation: str | None = None) -> int:
        """Record a new current label for a latent (older ones stay as history); returns its id."""
        i = self._check_latent(latent)
        if not isinstance(label, str) or not label.strip():
            raise ValueError("label must be a non-empty string")
        if not isinstance(provenance, LabelProvenance):
            raise TypeError("provenance must be a LabelProvenance (judge model, kind, prompt version, examples used)")
        with self.transaction() as c:
            self._check_written(c, i)
            pid = self._insert_provenance(c, provenance)
            lid = int(c.execute(
                "INSERT INTO labels(latent, label, explanation, provenance_id, created_at) VALUES (?, ?, ?, ?, ?)",
                (i, label, explanation, pid, provenance.created_at or utc_now()),
            ).lastrowid)
            c.execute("UPDATE feature_fts SET label = ? WHERE rowid = ?", (label, i))
        return lid

    def write_scores(
        self,
        latent: int,
        scores: Mapping[str, float] | Iterable[ScoreInput],
        *,
        provenance: LabelProvenance | None = None,
        label_id: int | None | str = "current",
    ) -> list[int]:
        """Record scores (method -> value, or ScoreInput items) for a latent. By default they
        belong to its current label; pass label_id=None for label-free scores."""
        i = self._check_latent(latent)
        items = [ScoreInput(k, float(v)) for k, v in scores.items()] if isinstance(scores, Mapping) else list(scores)
        for s in items:
            if not isinstance(s, ScoreInput):
                raise TypeError(f"scores must be a mapping or ScoreInput items, got {type(s).__name__}")
            if s.value != s.value:
                raise ValueError(f"score {s.method} is NaN")
        ids = []
        with self.transaction() as c:
            self._check_written(c, i)
            if label_id == "current":
                cur = current_label(c, i)
                label_id = cur.id if cur else None
            elif label_id is not None:
                ok = c.execute("SELECT 1 FROM labels WHERE id = ? AND latent = ?", (label_id, i)).fetchone()
                if not ok:
                    raise ValueError(f"label {label_id} does not belong to feature {i}")
            pid = self._insert_provenance(c, provenance) if provenance is not None else None
            now = provenance.created_at if provenance and provenance.created_at else utc_now()
            for s in items:
                ids.append(int(c.execute(
                    "INSERT INTO scores(latent, label_id, method, value, n_examples, details, provenance_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (i, label_id, s.method, float(s.value), s.n_examples,
                     json.dumps(s.details, sort_keys=True) if s.details is not None else None, pid, now),
                ).lastrowid))
        return ids

    def set_recommended_strength(self, latent: int, strength: float | None, *, source: str,
                                 details: dict[str, Any] | None = None) -> None:
        """Steering's calibrated strength for a latent (None clears it); `source` says how it was found."""
        i = self._check_latent(latent)
        if strength is not None and not np.isfinite(float(strength)):
            raise ValueError(f"strength must be finite, got {strength}")
        with self.transaction() as c:
            self._check_written(c, i)
            c.execute(
                "UPDATE features SET recommended_strength = ?, strength_source = ?, strength_details = ?, "
                "strength_updated_at = ? WHERE latent = ?",
                (None if strength is None else float(strength), source, json.dumps(details or {}, sort_keys=True), utc_now(), i),
            )

    def write_concept_matches(self, matches: Iterable[ConceptMatch], source: str | None = None) -> None:
        """Replace the stored matches of every concept present in `matches`."""
        matches = list(matches)
        with self.transaction() as c:
            for concept in {m.concept for m in matches}:
                c.execute("DELETE FROM concept_matches WHERE concept = ?", (concept,))
            c.executemany(
                "INSERT INTO concept_matches(concept, rank, latent, f1, precision, recall, source) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(m.concept, m.rank, m.latent, m.f1, m.precision, m.recall, source) for m in matches],
            )
