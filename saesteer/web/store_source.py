"""The web app's view of a real feature store (`features.FeatureStore`): `StoreCatalog` turns
store records into the API's shapes (`schemas.py`). The model side (which features fire, steered
generation, sweeps) is `model_source.ModelEngine`; `launch.open_entries` opens both for `saesteer serve`.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

from features.imported_labels import label_source
from saesteer.web.schemas import (
    Example,
    FeatureDetail,
    FeatureRef,
    FeatureSummary,
    Histogram,
    LabelInfo,
    LogitEffects,
    MapData,
    MapPoint,
    Neighbour,
    Page,
    ScoreInfo,
    SnippetPart,
    StoreInfo,
    TokenEffect,
)
from saesteer.web.sources import FeatureQuery

__all__ = ["StoreCatalog", "shades", "finite", "HEALTH_FLAGS", "MAIN_SCORE_METHODS"]

# A feature's "health" is the first of these store flags it carries, else "ok".
HEALTH_FLAGS = ("dead", "dense", "bos_only", "single_position")
# The score shown in lists and used by the score filter/sort: the first method a store has.
MAIN_SCORE_METHODS = ("detection", "fuzzing")
_SORTS = {"latent": "latent", "frequency": "freq", "n_fires": "n_fires", "max_act": "max_act", "mean_act": "mean_act",
          "level": "level", "label": "label"}
SEARCH_CAP = 1000  # most hits one search shows (pages are cut from these); it asks for one more: are there more?


def _search_page(items: list, found: int, want: int, offset: int, limit: int) -> "Page[FeatureSummary]":
    """A page of a search that asked for `want + 1` hits and `found` came: a hit past `want` says that
    more match than were counted (`total` is then a lower bound, `total_exact` false), and there is a
    next page unless this one reached SEARCH_CAP (the rows past it are never shown)."""
    more = found > want
    total = min(found, want) + (1 if more else 0)
    nxt = offset + len(items)
    has_next = nxt < min(found, want) or (more and nxt < SEARCH_CAP)
    return Page[FeatureSummary](items=items, total=total, offset=offset, limit=limit, total_exact=not more,
                                next_offset=nxt if has_next and items else None)


def shades(acts: Sequence[float], ref: float | None) -> list[int]:
    """0..10 colour classes: activation relative to `ref` (the feature's max); any firing gets >= 1."""
    if not ref or not math.isfinite(ref) or ref <= 0:
        ref = max((a for a in acts if math.isfinite(a)), default=0.0)
    out = []
    for a in acts:
        if not math.isfinite(a) or a <= 0 or ref <= 0:
            out.append(0)
        else:
            out.append(max(1, min(10, round(10.0 * a / ref))))
    return out


def _health(flags: Iterable[str]) -> str:
    fl = set(flags)
    for h in HEALTH_FLAGS:
        if h in fl:
            return h
    return "ok"


def finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _label_info(rec) -> LabelInfo | None:
    if rec.label is None:
        return None
    p = rec.label.provenance
    source, source_url = label_source(p) or (None, None)
    return LabelInfo(
        text=rec.label.text, explanation=rec.label.explanation, created=rec.label.created_at,
        judge_model=p.judge_model if p else None, judge_kind=p.judge_kind if p else None,
        prompt_version=p.prompt_version if p else None, offline=bool(p and p.offline),
        source=source, source_url=source_url,
    )


def _histogram(rec) -> Histogram | None:
    """The activation histogram up to its last non-empty bin; log scale when one bin dwarfs the median."""
    counts = [int(c) for c in rec.histogram.counts]
    while counts and counts[-1] == 0:  # the bins run past the max activation
        counts.pop()
    if not counts:
        return None
    edges = [float(e) for e in rec.histogram.edges[: len(counts) + 1]]
    nonzero = sorted(c for c in counts if c > 0)
    return Histogram(edges=edges, counts=counts, log_scale=max(counts) > 30 * nonzero[len(nonzero) // 2])


def _logit_effects(rec) -> LogitEffects | None:
    if rec.logits is None:
        return None
    return LogitEffects(
        positive=[TokenEffect(token=t.token, token_id=t.token_id, value=float(t.value)) for t in rec.logits.promoted],
        negative=[TokenEffect(token=t.token, token_id=t.token_id, value=float(t.value)) for t in rec.logits.suppressed],
    )


class StoreCatalog:
    """Read side of one feature store for the web app (see `sources.Catalog`)."""

    def __init__(self, store: Any, name: str | None = None) -> None:
        self.store = store
        self.name = name or Path(store.path).stem
        self._embedder = False  # not looked for yet (see query_embedder)
        self._embedder_lock = threading.Lock()  # searches run in worker threads: the embedder loads once
        self._steering_link: Any = None  # steering.store.StoreLink, made on first use

    # -- identity -------------------------------------------------------------------------------
    @property
    def score_method(self) -> str:
        """The score shown as 'score': the first main method the store has scores of, read per request
        (a `saesteer label` beside the server may score it after start); a row per method at most."""
        return self.store.first_scored_method(MAIN_SCORE_METHODS) or MAIN_SCORE_METHODS[0]

    def live_info(self) -> dict[str, Any]:
        """What another process may change while the server runs, read cheaply (`sources.Catalog`)."""
        return {"has_labels": self.store.has_labels(), "score_method": self.score_method}

    def info(self) -> StoreInfo:
        meta = self.store.meta
        sae = meta.get("sae") or {}
        widths = sae.get("matryoshka_widths") or []
        n_written = self.store.count_features()
        recorded = self.store.recorded_model() if hasattr(self.store, "recorded_model") else None
        return StoreInfo(
            id="store",
            name=self.name,
            model=recorded.id if recorded is not None else sae.get("model_name"),
            hook=sae.get("hook_name"),
            architecture=sae.get("architecture"),
            d_sae=int(self.store.d_sae),
            n_features=n_written,
            levels=list(range(len(widths))) if len(widths) > 1 else [],
            tokens_seen=meta.get("n_rows"),
            **self.live_info(),
        )

    # -- lists ----------------------------------------------------------------------------------
    def _filter(self, q: FeatureQuery, score_method: str) -> dict:
        f: dict[str, Any] = {}
        if q.label:
            f["label_contains"] = q.label
        if q.min_freq is not None:
            f["min_freq"] = q.min_freq
        if q.max_freq is not None:
            f["max_freq"] = q.max_freq
        if q.level is not None:
            f["level"] = q.level
        if q.labelled is not None:
            f["has_label"] = q.labelled
        if q.health == "ok":
            f["exclude_flags"] = list(HEALTH_FLAGS)
        elif q.health:
            f["flags"] = [q.health]
        if q.min_score is not None:
            f["score_method"] = score_method
            f["min_score"] = q.min_score
        return f

    def _scores(self, latents: Sequence[int], score_method: str) -> dict[int, float]:
        """The main score of the current label of each given feature (those that have one)."""
        if not latents:
            return {}
        return self.store.current_scores(latents, score_method)  # one query, not a whole record per row

    def _summary(self, s, score: float | None = None) -> FeatureSummary:
        return FeatureSummary(
            latent=int(s.latent),
            label=s.label,
            score=finite(score),
            frequency=finite(s.freq),
            n_fires=int(s.n_fires),
            max_act=finite(s.max_act),
            mean_act=finite(s.mean_act),
            typical_max_act=finite(s.typical_max_act),
            health=_health(s.flags),
            flags=list(s.flags),
            level=s.level,
            parent=s.parent_latent,
            recommended_strength=finite(s.recommended_strength),
        )

    def list_features(self, q: FeatureQuery) -> Page[FeatureSummary]:
        method = self.score_method  # read once for the page
        sort = f"score:{method}" if q.sort == "score" else _SORTS[q.sort]
        flt = self._filter(q, method)
        total = self.store.count_features(flt)
        rows = self.store.list_features(sort=sort, filter=flt, offset=q.offset, limit=q.limit, descending=q.descending)
        scores = self._scores([r.latent for r in rows], method)
        items = [self._summary(r, scores.get(r.latent)) for r in rows]
        nxt = q.offset + len(items)
        return Page[FeatureSummary](items=items, total=total, offset=q.offset, limit=q.limit,
                                    next_offset=nxt if nxt < total else None)

    def summaries(self, indices: Iterable[int], with_scores: bool = True) -> dict[int, FeatureSummary]:
        ids = [int(i) for i in dict.fromkeys(indices) if 0 <= int(i) < self.store.d_sae]
        if not ids:
            return {}
        rows = self.store.list_features(filter={"latents": ids}, limit=len(ids))
        scores = self._scores([r.latent for r in rows], self.score_method) if with_scores else {}
        return {r.latent: self._summary(r, scores.get(r.latent)) for r in rows}

    # -- search by meaning ----------------------------------------------------------------------
    def query_embedder(self):
        """The embedder for the store's label vectors of a real model (`autointerp.semantic.store_embedder`),
        looked for once; None: full-text search."""
        if self._embedder is False:
            with self._embedder_lock:
                if self._embedder is False:  # another search may have loaded it while this one waited
                    from autointerp.semantic import store_embedder

                    self._embedder = store_embedder(self.store)
        return self._embedder

    def semantic(self, text: str, offset: int, limit: int) -> Page[FeatureSummary] | None:
        """Labels nearest `text` by meaning (output scores break near-ties); None without vectors."""
        emb = self.query_embedder()
        if emb is None:
            return None
        from autointerp.semantic import MIN_SIMILARITY, semantic_search

        want = min(offset + limit, SEARCH_CAP)
        hits = semantic_search(self.store, emb, text, limit=want + 1, min_similarity=MIN_SIMILARITY)
        if not hits:
            return None
        page_hits = hits[offset:want]
        known = self.summaries(h.latent for h in page_hits)
        items = [known[h.latent].model_copy(update={"similarity": h.similarity, "output_score": h.output_score})
                 for h in page_hits if h.latent in known]
        return _search_page(items, len(hits), want, offset, limit)

    def search(self, text: str, offset: int, limit: int) -> Page[FeatureSummary]:
        """By meaning when the store has label vectors this server can match, else full text."""
        page = self.semantic(text, offset, limit)
        return page if page is not None else self.text_search(text, offset, limit)

    def text_search(self, text: str, offset: int, limit: int) -> Page[FeatureSummary]:
        want = min(offset + limit, SEARCH_CAP)
        hits = self.store.search(text, limit=want + 1)
        page_hits = hits[offset:want]
        known = self.summaries(h.latent for h in page_hits)
        items = [self._summary_or_hit(h, known.get(h.latent)) for h in page_hits]
        return _search_page(items, len(hits), want, offset, limit)

    @staticmethod
    def _summary_or_hit(hit, summary: FeatureSummary | None) -> FeatureSummary:
        snippet = {"snippet": hit.text, "snippet_parts": [SnippetPart(text=t, match=m) for t, m in hit.parts]}
        if summary is not None:
            return summary.model_copy(update=snippet)
        return FeatureSummary(latent=hit.latent, label=hit.label, frequency=finite(hit.freq), **snippet)

    # -- the map --------------------------------------------------------------------------------
    def map_layouts(self) -> list[str]:
        """Stored 2-d layouts (`saesteer features map`), decoder ones first."""
        return sorted(self.store.feature_map_methods(), key=lambda k: (not k.startswith("decoder"), k))

    def map_points(self, layout: str) -> MapData | None:
        """Every laid-out latent with what the map colours by; None for an unknown layout."""
        layouts = self.map_layouts()
        if layout not in layouts:
            return None
        pts = self.store.feature_map(layout)
        ids = [i for i, _, _ in pts]
        rows = {r.latent: r for r in self.store.list_features(filter={"latents": ids}, limit=max(1, len(ids)))} if ids else {}
        method = self.score_method  # read once for the map, as for a page of the list
        main = self._scores(ids, method)
        from autointerp.semantic import output_scores

        outs = output_scores(self.store, ids)
        points = []
        for i, x, y in pts:
            r = rows.get(i)
            points.append(MapPoint(latent=i, x=float(x), y=float(y), label=r.label if r else None,
                                   level=r.level if r else None, health=_health(r.flags) if r else "ok",
                                   score=finite(main.get(i)), output_score=finite(outs.get(i)),
                                   frequency=finite(r.freq) if r else None))
        info = self.store.meta.get(f"feature_map:{layout}") or {}
        return MapData(layout=layout, layouts=layouts, source=str(info.get("source", "")),
                       method=str(info.get("method", "")), score_method=method, points=points)

    # -- one feature ----------------------------------------------------------------------------
    def feature(self, latent: int) -> FeatureDetail | None:
        from features import FeatureIndexError, FeatureNotWrittenError

        try:
            rec = self.store.feature(latent)
        except (FeatureIndexError, FeatureNotWrittenError):
            return None
        st = rec.stats
        ref = finite(st.max_act) or 0.0
        family = [rec.parent.parent_latent] if rec.parent else []
        family += [c.child_latent for c in rec.children]
        labels = self.store.labels(family) if family else {}
        stats = {k: (finite(v) if isinstance(v, float) else v) for k, v in vars(st).items() if k != "flags"}
        bos = self.store.meta.get("bos_id")
        return FeatureDetail(
            store=self.name,
            summary=self.summaries([latent])[rec.latent],  # the feature's row in the list, as the list shows it
            label=_label_info(rec),
            scores=[ScoreInfo(method=s.method, value=float(s.value), n_examples=s.n_examples, offline=s.offline,
                              created=s.created_at) for s in rec.scores],
            stats=stats,
            histogram=_histogram(rec),
            top_examples=[self._example(e, ref, bos) for e in rec.top_examples],
            quantile_examples=[self._example(e, ref, bos) for e in rec.quantile_examples],
            logit_effects=_logit_effects(rec),
            decoder_neighbours=[Neighbour(latent=n.latent, similarity=float(n.score), count=n.count, label=n.label)
                                for n in rec.decoder_neighbours],
            coact_neighbours=[Neighbour(latent=n.latent, similarity=float(n.score), count=n.count, label=n.label)
                              for n in rec.coact_neighbours],
            parent=FeatureRef(latent=rec.parent.parent_latent, label=labels.get(rec.parent.parent_latent),
                              score=finite(rec.parent.coact)) if rec.parent else None,
            children=[FeatureRef(latent=c.child_latent, label=labels.get(c.child_latent), score=finite(c.coact)) for c in rec.children],
        )

    @staticmethod
    def _example(e, ref: float, bos_id: int | None) -> Example:
        from features.records import without_start_bos

        e = without_start_bos(e, bos_id)  # the context's BOS is a marker, not text
        tokens = list(e.tokens)
        if tokens and not any(tokens):  # a store without vocabulary: show the ids
            tokens = [f"⟨{t}⟩" for t in e.token_ids]
        acts = [float(a) if math.isfinite(a) else 0.0 for a in e.acts]
        return Example(
            id=e.id, tokens=tokens, acts=acts, activation=float(e.activation), max_act=max(acts, default=0.0),
            kind=e.kind, quantile=finite(e.quantile), centre=e.centre, shade=shades(acts, ref),
        )

    def typical_max(self, latents: Iterable[int]) -> dict[int, float]:
        """Known typical max activations (finite, > 0), read as steering reads them (`StoreLink`, cached)."""
        if self._steering_link is None:
            from steering.store import StoreLink

            self._steering_link = StoreLink(self.store)
        link, latents = self._steering_link, [int(i) for i in latents]
        link.prefetch(latents)
        return {i: v for i in latents if (v := link.typical_max(i)) is not None}
