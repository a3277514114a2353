"""Reading one latent or a few: its whole record, its examples, labels and scores, the tokens it
promotes. Every multi-query read runs in one read transaction."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable

import numpy as np

from features.records import (
    Correlated,
    Example,
    FeatureRecord,
    FeatureStats,
    Histogram,
    Label,
    LabelProvenance,
    LogitEffects,
    Neighbour,
    ParentLink,
    Score,
    TokenEffect,
)
from features.store.base import StoreBase
from features.store.schema import EXAMPLE_SELECT, FEATURE_COLUMNS, latest_label_sql
from features.tokentext import align_pieces, pieces_from_offsets


class StoreReads(StoreBase):
    """Per-latent reads of the store."""

    def feature(self, latent: int) -> FeatureRecord:
        """Everything about one latent. Out of range: FeatureIndexError naming the valid range."""
        i = self._check_latent(latent)
        with self._read() as c:
            row = self._check_written(c, i)
            r = dict(zip(FEATURE_COLUMNS + ("recommended_strength", "strength_source"), row))
            flags = tuple(r["flags"].split()) if r["flags"] else ()
            stats = FeatureStats(
                n_fires=r["n_fires"], freq=r["freq"], mean_act=r["mean_act"], std_act=r["std_act"], max_act=r["max_act"],
                sum_act=r["sum_act"], typical_max_act=r["typical_max_act"], q50=r["q50"], q90=r["q90"], q99=r["q99"],
                min_pos=r["min_pos"], max_pos=r["max_pos"], bos_fires=r["bos_fires"], decoder_norm=r["decoder_norm"],
                flags=flags,
            )
            h = c.execute("SELECT bin_width, counts FROM histograms WHERE latent = ?", (i,)).fetchone()
            hist = Histogram(h[0], json.loads(h[1])) if h else Histogram(0.0, [])
            ex = c.execute(
                f"SELECT {EXAMPLE_SELECT}, {self._offsets_column} FROM examples WHERE latent = ? ORDER BY kind, rank",
                (i,),
            ).fetchall()
            logit_rows = c.execute(
                "SELECT kind, token_id, value FROM logit_effects WHERE latent = ? ORDER BY kind, rank", (i,)
            ).fetchall()
            nb = c.execute(
                f"SELECT n.kind, n.other_latent, n.score, n.count, {latest_label_sql('n.other_latent')} "
                "FROM neighbours n WHERE n.latent = ? ORDER BY n.kind, n.rank", (i,),
            ).fetchall()
            children = c.execute(
                "SELECT latent, parent_coact, parent_cos, parent_method FROM features WHERE parent_latent = ? ORDER BY latent", (i,)
            ).fetchall()
            corr = c.execute(
                f"SELECT k.other_latent, k.pearson, k.cossim, {latest_label_sql('k.other_latent')} "
                "FROM correlations k WHERE k.latent = ? ORDER BY k.rank", (i,),
            ).fetchall() if self._has_table(c, "correlations") else []  # stores built before it have none
            label = current_label(c, i)
            scores = label_scores(c, i, label.id if label else None)
        examples = [self._example(e) for e in ex]
        logits = None
        if self._has_logit_effects():
            prom = [TokenEffect(t, self.token_str(t), v) for k, t, v in logit_rows if k == "promoted"]
            supp = [TokenEffect(t, self.token_str(t), v) for k, t, v in logit_rows if k == "suppressed"]
            logits = LogitEffects(prom, supp)
        parent = None
        if r["parent_latent"] is not None:
            parent = ParentLink(r["parent_latent"], i, r["parent_coact"], r["parent_cos"], r["parent_method"])
        return FeatureRecord(
            latent=i,
            stats=stats,
            histogram=hist,
            top_examples=[e for e in examples if e.kind == "top"],
            quantile_examples=[e for e in examples if e.kind == "quantile"],
            negative_examples=[e for e in examples if e.kind == "negative"],
            logits=logits,
            decoder_neighbours=[Neighbour(o, s, cnt, lab) for k, o, s, cnt, lab in nb if k == "decoder"],
            coact_neighbours=[Neighbour(o, s, cnt, lab) for k, o, s, cnt, lab in nb if k == "coact"],
            level=r["level"],
            parent=parent,
            children=[ParentLink(i, cid, pc, pcos, m) for cid, pc, pcos, m in children],
            label=label,
            scores=scores,
            recommended_strength=r["recommended_strength"],
            strength_source=r["strength_source"],
            correlated=[Correlated(o, p, cs, lab) for o, p, cs, lab in corr],
        )

    def _example(self, e) -> Example:
        ids = np.frombuffer(e[9], dtype="<i4").tolist()
        text, offsets = e[11], e[12]
        if text is not None and offsets is not None:
            tokens = pieces_from_offsets(text, np.frombuffer(offsets, dtype="<i4").tolist())
        elif text is not None:  # a store written before the offsets were kept
            tokens = align_pieces(text, [self.token_str(t) for t in ids])
        else:  # built without a tokenizer
            tokens = [self.token_str(t) for t in ids]
        return Example(
            id=e[0], latent=e[1], kind=e[2], rank=e[3], activation=e[4], quantile=e[5], seq_index=e[6],
            position=e[7], centre=e[8], token_ids=ids, tokens=tokens,
            acts=np.frombuffer(e[10], dtype="<f4").tolist(), text=text,
        )

    def examples(self, latent: int, kind: str | None = None) -> list[Example]:
        """The stored examples of a latent (optionally one kind), ordered by kind and rank."""
        i = self._check_latent(latent)
        with self._read() as c:
            self._check_written(c, i)
            q = f"SELECT {EXAMPLE_SELECT}, {self._offsets_column} FROM examples WHERE latent = ?"
            args: list[Any] = [i]
            if kind is not None:
                q += " AND kind = ?"
                args.append(kind)
            rows = c.execute(q + " ORDER BY kind, rank", args).fetchall()
        return [self._example(e) for e in rows]

    def _has_logit_effects(self) -> bool:
        """Whether the store holds logit effects to show: not those of a hook_z SAE built before they
        went through the layer's W_O (its z-space rows read as residual directions: wrong tokens;
        `features build --overwrite` computes them right)."""
        method = self.meta.get("logit_method")
        hook = str((self.meta.get("sae") or {}).get("hook_name") or "")
        return bool(method) and not (hook.endswith("attn.hook_z") and "W_O" not in method)

    def promoted_tokens(self, latents: Iterable[int], top: int = 10) -> dict[int, list[TokenEffect]]:
        """The `top` tokens each given latent promotes most (logit effects), best first; {} when the
        store has no logit effects."""
        latents = [self._check_latent(i) for i in dict.fromkeys(latents)]
        if not latents or not self._has_logit_effects():
            return {}
        out: dict[int, list[TokenEffect]] = {i: [] for i in latents}
        with self._read() as c:
            for k in range(0, len(latents), 500):
                chunk = latents[k:k + 500]
                rows = c.execute(
                    f"SELECT latent, token_id, value FROM logit_effects WHERE kind = 'promoted' AND rank < ? "
                    f"AND latent IN ({','.join('?' * len(chunk))}) ORDER BY latent, rank", [int(top), *chunk],
                ).fetchall()
                for f, t, v in rows:
                    out[f].append(TokenEffect(t, self.token_str(t), v))
        return out

    def label(self, latent: int) -> Label | None:
        """The current label of a latent (None when unlabelled)."""
        i = self._check_latent(latent)
        with self._read() as c:
            self._check_written(c, i)
            return current_label(c, i)

    def has_labels(self) -> bool:
        """Whether any latent has a label: one row read (the web app asks on every request)."""
        with self._read() as c:
            return c.execute("SELECT 1 FROM labels LIMIT 1").fetchone() is not None

    def first_scored_method(self, methods: Iterable[str]) -> str | None:
        """The first of `methods` that any score is of (None: none is): a row each at most."""
        with self._read() as c:
            for m in methods:
                if c.execute("SELECT 1 FROM scores WHERE method = ? LIMIT 1", (m,)).fetchone() is not None:
                    return m
        return None

    def label_score_methods(self, label_ids: Iterable[int]) -> dict[int, set[str]]:
        """Label id -> the score methods that have rows tied to that label."""
        ids = [int(i) for i in label_ids]
        out: dict[int, set[str]] = {i: set() for i in ids}
        with self._read() as c:
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                q = f"SELECT DISTINCT label_id, method FROM scores WHERE label_id IN ({','.join('?' * len(chunk))})"
                for label_id, method in c.execute(q, chunk).fetchall():
                    out[label_id].add(method)
        return out

    def labels(self, latents: Iterable[int]) -> dict[int, str]:
        """Current label text of each given latent that has one."""
        latents = [self._check_latent(i) for i in latents]
        if not latents:
            return {}
        out: dict[int, str] = {}
        with self._read() as c:
            for k in range(0, len(latents), 500):
                chunk = latents[k:k + 500]
                q = (f"SELECT l.latent, l.label FROM labels l WHERE l.latent IN ({','.join('?' * len(chunk))}) "
                     f"AND l.id = (SELECT MAX(id) FROM labels m WHERE m.latent = l.latent)")
                out.update(dict(c.execute(q, chunk).fetchall()))
        return out

    def current_scores(self, latents: Iterable[int], method: str) -> dict[int, float]:
        """The latest `method` score of each given latent's current label (or a label-free one),
        for those that have one: what `feature(i).scores` would show first, in one query per 500
        latents instead of a whole record per latent."""
        latents = [self._check_latent(i) for i in latents]
        out: dict[int, float] = {}
        with self._read() as c:
            for k in range(0, len(latents), 500):
                chunk = latents[k:k + 500]
                q = ("SELECT f.latent, (SELECT s.value FROM scores s WHERE s.latent = f.latent AND s.method = ? AND "
                     "(s.label_id IS NULL OR s.label_id = (SELECT MAX(l.id) FROM labels l WHERE l.latent = f.latent)) "
                     f"ORDER BY s.id DESC LIMIT 1) FROM features f WHERE f.latent IN ({','.join('?' * len(chunk))})")
                out.update((i, float(v)) for i, v in c.execute(q, [method, *chunk]) if v is not None)
        return out


def current_label(c: sqlite3.Connection, i: int) -> Label | None:
    """Latent `i`'s current label (its newest) with its provenance; None when unlabelled."""
    row = c.execute(
        "SELECT l.id, l.label, l.explanation, l.created_at, l.provenance_id, p.judge_model, p.judge_kind, "
        "p.prompt_version, p.examples_used, p.params, p.created_at, p.extra FROM labels l "
        "LEFT JOIN label_provenance p ON p.id = l.provenance_id WHERE l.latent = ? ORDER BY l.id DESC LIMIT 1",
        (i,),
    ).fetchone()
    if row is None:
        return None
    prov = None
    if row[4] is not None:
        prov = LabelProvenance(row[5], row[6], row[7], json.loads(row[8]), json.loads(row[9]), row[10], json.loads(row[11]))
    return Label(row[0], i, row[1], row[2], row[3], prov, row[4])

def label_scores(c: sqlite3.Connection, i: int, label_id: int | None) -> list[Score]:
    """Latent `i`'s scores of label `label_id` and its label-free ones, newest first."""
    rows = c.execute(
        "SELECT s.id, s.label_id, s.method, s.value, s.n_examples, s.details, s.created_at, s.provenance_id, p.offline "
        "FROM scores s LEFT JOIN label_provenance p ON p.id = s.provenance_id "
        "WHERE s.latent = ? AND (s.label_id IS ? OR s.label_id IS NULL) ORDER BY s.id DESC",
        (i, label_id),
    ).fetchall()
    return [
        Score(r[0], i, r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None, r[6], r[7],
              None if r[8] is None else bool(r[8]))
        for r in rows
    ]
