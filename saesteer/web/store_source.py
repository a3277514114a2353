"""The web app's view of a real feature store (`features.FeatureStore`) and of a loaded model + SAE.

`StoreCatalog` turns store records into the API's shapes (`schemas.py`); `ModelEngine` runs
"which features fire", steered generation and sweeps through `features` and `steering`.
`open_store_entries` is what `saesteer serve` calls: it opens the configured store files (and
their SAEs, when a model is given), names them, and shares one `ModelQueue` per model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

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

__all__ = ["StoreCatalog", "ModelEngine", "shades", "HEALTH_FLAGS", "MAIN_SCORE_METHODS"]

# A feature's "health" is the first of these store flags it carries, else "ok".
HEALTH_FLAGS = ("dead", "dense", "bos_only", "single_position")
# The score shown in lists and used by the score filter/sort: the first method a store has.
MAIN_SCORE_METHODS = ("detection", "fuzzing")
_SORTS = {"latent": "latent", "frequency": "freq", "n_fires": "n_fires", "max_act": "max_act", "mean_act": "mean_act",
          "level": "level", "label": "label"}
SEARCH_CAP = 1000  # most hits one search considers (pages are cut from these)
TOY_EXAMPLE_PROMPT = "the sailor"  # the steering page's starting prompt when the server runs the toy model


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


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _record_summary(rec, score: float | None) -> FeatureSummary:
    """A feature record's row in the list (the feature page's header)."""
    st = rec.stats
    return FeatureSummary(
        latent=rec.latent, label=rec.label.text if rec.label else None, score=_finite(score), frequency=_finite(st.freq),
        n_fires=st.n_fires, max_act=_finite(st.max_act), mean_act=_finite(st.mean_act),
        typical_max_act=_finite(st.typical_max_act), health=_health(st.flags), flags=list(st.flags),
        level=rec.level, parent=rec.parent.parent_latent if rec.parent else None,
        recommended_strength=_finite(rec.recommended_strength),
    )


def _label_info(rec) -> LabelInfo | None:
    if rec.label is None:
        return None
    p = rec.label.provenance
    return LabelInfo(
        text=rec.label.text, explanation=rec.label.explanation, created=rec.label.created_at,
        judge_model=p.judge_model if p else None, judge_kind=p.judge_kind if p else None,
        prompt_version=p.prompt_version if p else None, offline=bool(p and p.offline),
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
        self.score_method = self._find_score_method()
        self._embedder = False  # not looked for yet (see query_embedder)

    # -- identity -------------------------------------------------------------------------------
    def _find_score_method(self) -> str:
        for m in MAIN_SCORE_METHODS:
            if self.store.count_features({"score_method": m, "min_score": float("-inf")}) > 0:
                return m
        return MAIN_SCORE_METHODS[0]

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
            has_labels=self.store.count_features({"has_label": True}) > 0,
            tokens_seen=meta.get("n_rows"),
            score_method=self.score_method,
        )

    # -- lists ----------------------------------------------------------------------------------
    def _filter(self, q: FeatureQuery) -> dict:
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
            f["score_method"] = self.score_method
            f["min_score"] = q.min_score
        return f

    def _scores(self, latents: Sequence[int]) -> dict[int, float]:
        """The main score of the current label of each given feature (those that have one)."""
        if not latents:
            return {}
        return self.store.current_scores(latents, self.score_method)  # one query, not a whole record per row

    def _summary(self, s, score: float | None = None) -> FeatureSummary:
        return FeatureSummary(
            latent=int(s.latent),
            label=s.label,
            score=_finite(score),
            frequency=_finite(s.freq),
            n_fires=int(s.n_fires),
            max_act=_finite(s.max_act),
            mean_act=_finite(s.mean_act),
            typical_max_act=_finite(s.typical_max_act),
            health=_health(s.flags),
            flags=list(s.flags),
            level=s.level,
            parent=s.parent_latent,
            recommended_strength=_finite(s.recommended_strength),
        )

    def list_features(self, q: FeatureQuery) -> Page[FeatureSummary]:
        sort = f"score:{self.score_method}" if q.sort == "score" else _SORTS[q.sort]
        flt = self._filter(q)
        total = self.store.count_features(flt)
        rows = self.store.list_features(sort=sort, filter=flt, offset=q.offset, limit=q.limit, descending=q.descending)
        scores = self._scores([r.latent for r in rows])
        items = [self._summary(r, scores.get(r.latent)) for r in rows]
        nxt = q.offset + len(items)
        return Page[FeatureSummary](items=items, total=total, offset=q.offset, limit=q.limit,
                                    next_offset=nxt if nxt < total else None)

    def summaries(self, indices: Iterable[int], with_scores: bool = True) -> dict[int, FeatureSummary]:
        ids = [int(i) for i in dict.fromkeys(indices) if 0 <= int(i) < self.store.d_sae]
        if not ids:
            return {}
        rows = self.store.list_features(filter={"latents": ids}, limit=len(ids))
        scores = self._scores([r.latent for r in rows]) if with_scores else {}
        return {r.latent: self._summary(r, scores.get(r.latent)) for r in rows}

    # -- search by meaning ----------------------------------------------------------------------
    def query_embedder(self):
        """The embedder for the store's label vectors of a real model (`autointerp.semantic.store_embedder`),
        looked for once; None: full-text search."""
        if self._embedder is False:
            from autointerp.semantic import store_embedder

            self._embedder = store_embedder(self.store)
        return self._embedder

    def semantic(self, text: str, offset: int, limit: int) -> Page[FeatureSummary] | None:
        """Labels nearest `text` by meaning (output scores break near-ties); None without vectors."""
        emb = self.query_embedder()
        if emb is None:
            return None
        from autointerp.semantic import MIN_SIMILARITY, semantic_search

        hits = semantic_search(self.store, emb, text, limit=min(offset + limit, SEARCH_CAP), min_similarity=MIN_SIMILARITY)
        if not hits:
            return None
        page_hits = hits[offset:offset + limit]
        known = self.summaries(h.latent for h in page_hits)
        items = [known[h.latent].model_copy(update={"similarity": h.similarity, "output_score": h.output_score})
                 for h in page_hits if h.latent in known]
        nxt = offset + len(items)
        return Page[FeatureSummary](items=items, total=len(hits), offset=offset, limit=limit,
                                    next_offset=nxt if nxt < len(hits) and items else None)

    def search(self, text: str, offset: int, limit: int) -> Page[FeatureSummary]:
        """By meaning when the store has label vectors this server can match, else full text."""
        page = self.semantic(text, offset, limit)
        return page if page is not None else self.text_search(text, offset, limit)

    def text_search(self, text: str, offset: int, limit: int) -> Page[FeatureSummary]:
        want = min(offset + limit, SEARCH_CAP)
        hits = self.store.search(text, limit=want + (1 if want < SEARCH_CAP else 0))
        more = len(hits) > want
        hits = hits[:want]
        page_hits = hits[offset:offset + limit]
        known = self.summaries(h.latent for h in page_hits)
        items = [self._summary_or_hit(h, known.get(h.latent)) for h in page_hits]
        total = len(hits) + (1 if more else 0)
        nxt = offset + len(items)
        return Page[FeatureSummary](items=items, total=total, offset=offset, limit=limit,
                                    next_offset=nxt if (nxt < len(hits) or more) and items else None)

    @staticmethod
    def _summary_or_hit(hit, summary: FeatureSummary | None) -> FeatureSummary:
        snippet = {"snippet": hit.text, "snippet_parts": [SnippetPart(text=t, match=m) for t, m in hit.parts]}
        if summary is not None:
            return summary.model_copy(update=snippet)
        return FeatureSummary(latent=hit.latent, label=hit.label, frequency=_finite(hit.freq), **snippet)

    # -- the map --------------------------------------------------------------------------------
    def map_layouts(self) -> list[str]:
        """Stored 2-d layouts (`saesteer features map`), decoder ones first."""
        return sorted(self.store.feature_map_methods(), key=lambda k: (not k.startswith("decoder"), k))

    def map_points(self, layout: str) -> MapData | None:
        """Every laid-out latent with what the map colours by; None for an unknown layout."""
        if layout not in self.map_layouts():
            return None
        pts = self.store.feature_map(layout)
        ids = [i for i, _, _ in pts]
        rows = {r.latent: r for r in self.store.list_features(filter={"latents": ids}, limit=max(1, len(ids)))} if ids else {}
        main = self._scores(ids)
        from autointerp.semantic import output_scores

        outs = output_scores(self.store, ids)
        points = []
        for i, x, y in pts:
            r = rows.get(i)
            points.append(MapPoint(latent=i, x=float(x), y=float(y), label=r.label if r else None,
                                   level=r.level if r else None, health=_health(r.flags) if r else "ok",
                                   score=_finite(main.get(i)), output_score=_finite(outs.get(i)),
                                   frequency=_finite(r.freq) if r else None))
        info = self.store.meta.get(f"feature_map:{layout}") or {}
        return MapData(layout=layout, layouts=self.map_layouts(), source=str(info.get("source", "")),
                       method=str(info.get("method", "")), score_method=self.score_method, points=points)

    # -- one feature ----------------------------------------------------------------------------
    def feature(self, latent: int) -> FeatureDetail | None:
        from features import FeatureIndexError, FeatureNotWrittenError

        try:
            rec = self.store.feature(latent)
        except (FeatureIndexError, FeatureNotWrittenError):
            return None
        st = rec.stats
        ref = _finite(st.max_act) or 0.0
        score = next((float(s.value) for s in rec.scores if s.method == self.score_method), None)
        family = [rec.parent.parent_latent] if rec.parent else []
        family += [c.child_latent for c in rec.children]
        labels = self.store.labels(family) if family else {}
        stats = {k: (_finite(v) if isinstance(v, float) else v) for k, v in vars(st).items() if k != "flags"}
        bos = self.store.meta.get("bos_id")
        return FeatureDetail(
            store=self.name,
            summary=_record_summary(rec, score),
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
                              score=_finite(rec.parent.coact)) if rec.parent else None,
            children=[FeatureRef(latent=c.child_latent, label=labels.get(c.child_latent), score=_finite(c.coact)) for c in rec.children],
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
            kind=e.kind, quantile=_finite(e.quantile), centre=e.centre, shade=shades(acts, ref),
        )

    def typical_max(self, indices: Iterable[int]) -> dict[int, float]:
        return {i: s.typical_max_act for i, s in self.summaries(indices, with_scores=False).items() if s.typical_max_act}


class ModelEngine:
    """Model work for one store: which features fire, steered generation, sweeps (see `sources.Engine`).

    Called only from the model's queue thread. `limits` bound what `steering` accepts too."""

    def __init__(self, model: Any, sae: Any, catalog: StoreCatalog, limits: Any,
                 allow_model_mismatch: bool = False) -> None:
        self.model = model
        self.sae = sae
        self.catalog = catalog
        self.limits = limits
        self.allow_model_mismatch = allow_model_mismatch  # the operator accepted an SAE of another model

    @property
    def example_prompt(self) -> str:
        """What the steering page's prompt box starts with: a toy-world sentence for the toy model,
        nothing for other models (a toy prompt means nothing to them)."""
        from saes.identity import identity_of_model

        ident = identity_of_model(self.model)
        return TOY_EXAMPLE_PROMPT if ident is not None and ident.source == "toy" else ""

    # -- helpers --------------------------------------------------------------------------------
    def _steer_limits(self):
        from steering import SteerLimits

        return SteerLimits(max_abs_value=float(self.limits.max_abs_strength), max_multiple=float(self.limits.max_abs_multiple),
                           max_abs_scale=float(self.limits.max_abs_multiple))

    def _prepend_bos(self) -> bool:
        """The BOS the SAE was trained with (its cfg.json), else the model's default."""
        from saes.bos import prepend_bos_for

        return prepend_bos_for(self.model, [self.sae])

    def _gen_config(self, req):
        from steering import GenerationConfig

        greedy = req.temperature <= 0
        return GenerationConfig(
            max_new_tokens=req.max_new_tokens, max_new_tokens_cap=int(self.limits.max_new_tokens),
            do_sample=not greedy, temperature=1.0 if greedy else float(req.temperature), seed=int(req.seed),
        )

    @staticmethod
    def _feature_edit(e, value: float | None = None):
        from steering import FeatureEdit

        v = e.value if value is None else value
        return FeatureEdit(latent=e.latent, op=e.op, value=None if e.op == "ablate" else float(v),
                           unit=e.unit if e.op in ("add", "clamp") else "raw", positions=e.positions)

    # -- engine ---------------------------------------------------------------------------------
    def steer(self, req):
        from steering import compare

        from saesteer.web.schemas import SteerResult

        typical = self.catalog.typical_max(e.latent for e in req.edits)
        cmp = compare(self.model, self.sae, [self._feature_edit(e) for e in req.edits], [req.prompt],
                      self._gen_config(req), typical_max=typical, limits=self._steer_limits(),
                      allow_model_mismatch=self.allow_model_mismatch)
        return SteerResult(prompt=req.prompt, default=cmp.unsteered[0], steered=cmp.steered[0], edits=req.edits)

    # -- which features fire --------------------------------------------------------------------
    def fire(self, text: str, top_k: int):
        from features.text import features_on_text

        from saesteer.web.schemas import FeatureAct, FireResult, FiringFeature

        model = self.model
        bos = self._prepend_bos()
        n_ctx = getattr(model.cfg, "n_ctx", None)
        if n_ctx is not None:
            try:
                n = int(model.to_tokens(text, prepend_bos=bos, truncate=False).shape[1])
            except TypeError:  # a model whose to_tokens has no truncate flag
                n = len(model.tokenizer(text)["input_ids"]) + int(bos)
            if n > n_ctx:
                raise ValueError(f"the text is {n} tokens long, more than the model's context of {n_ctx}; shorten it")
        res = features_on_text(model, self.sae, text, top_n=int(top_k), prepend_bos=bos,
                               allow_model_mismatch=self.allow_model_mismatch)
        start = 1 if bos and len(res.tokens) > 1 else 0  # the BOS position: no meaning, huge norms
        toks = res.tokens[start:]
        acts_SF = res.acts_SF[start:]
        fired_F = (acts_SF > 0).sum(0)
        totals = sorted(((t.latent, float(acts_SF[:, t.latent].max())) for t in res.latents if int(fired_F[t.latent]) > 0),
                        key=lambda x: (-x[1], x[0]))[:50]
        known = self.catalog.summaries((i for i, _ in totals), with_scores=False)
        features = []
        token_shade = [0] * len(toks)
        for i, mx in totals:
            col = [float(a) for a in acts_SF[:, i]]
            s = known.get(i)
            sh = shades(col, (s.max_act if s and s.max_act else None) or mx)
            token_shade = [max(a, b) for a, b in zip(token_shade, sh)]
            features.append(FiringFeature(latent=i, label=s.label if s else None, max_act=mx,
                                          count=int(fired_F[i]), shade=sh, acts=col))
        labels = {i: s.label for i, s in known.items()}
        per_token = [[FeatureAct(latent=lat.latent, act=lat.act, label=labels.get(lat.latent)) for lat in t.latents] for t in toks]
        return FireResult(tokens=[t.token for t in toks], token_shade=token_shade, features=features, per_token=per_token)

    # -- sweeps ---------------------------------------------------------------------------------
    def sweep(self, req):
        from steering import SweepConfig, sweep

        from saesteer.web.schemas import SweepPoint, SweepResult

        e = req.edit
        if e.op not in ("add", "clamp"):
            raise ValueError(f"a sweep varies an add or clamp edit; got op {e.op!r}")
        typical = self.catalog.typical_max([e.latent])
        cfg = SweepConfig(strengths=list(req.values), op=e.op, unit=e.unit, positions=e.positions, perplexity=True)
        res = sweep(self.model, self.sae, e.latent, [req.prompt], FiringScorer(self.model, self.sae, e.latent), cfg,
                    gen_config=self._gen_config(req), typical_max=typical, limits=self._steer_limits(),
                    allow_model_mismatch=self.allow_model_mismatch)
        points = [SweepPoint(value=p.strength, concept=_finite(p.concept), fluency=_finite(p.fluency),
                             aggregate=_finite(p.aggregate), perplexity=_finite(p.perplexity),
                             text=p.examples[0] if p.examples else "") for p in res.points]
        return SweepResult(latent=e.latent, op=e.op, unit=e.unit, points=points, recommended=res.recommended,
                           verdict=res.verdict,
                           concept="share of the generated tokens on which the feature fires (re-read by the unsteered model)",
                           fluency=FLUENCY_DESCRIPTION)


FLUENCY_DESCRIPTION = ("how natural the unsteered model finds the continuation (its surprise beyond the model's own "
                       "uncertainty), times penalties for repetition and punctuation runs: about 1 for unsteered "
                       "text, 0 for degenerate text (steering.fluency)")


class FiringScorer:
    """A judge-free steering scorer: concept = share of the continuation's tokens on which `feature`
    fires when the unsteered model reads the continuation, in [0, 1] (fluency: `steering.fluency`,
    measured by the sweep itself)."""

    def __init__(self, model: Any, sae: Any, latent: int) -> None:
        self.model, self.sae, self.latent = model, sae, int(latent)

    def __call__(self, prompts, continuations):
        from steering.activations import mean_latent_activation
        from steering.evaluate import SampleScores

        out = []
        for text in continuations:
            if not text.strip():
                out.append(SampleScores(0.0))
                continue
            _, rate_F, _ = mean_latent_activation(self.model, self.sae, [text])
            out.append(SampleScores(float(rate_F[self.latent])))
        return out
