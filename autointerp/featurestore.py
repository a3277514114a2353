"""`LabelStore` over the SQLite feature store of `features` (the only place autointerp touches it).

    from autointerp.featurestore import FeatureStoreLabels
    labels = FeatureStoreLabels.open("toy.db")          # opens features.FeatureStore writable

Reading: latents are the store's alive latents (n_fires > 0); examples come from
`FeatureStore.examples(i)` (kinds top / quantile / negative; negative = random non-activating
contexts). Example refs are the store's `examples.id`, cited in the label provenance.

Writing: `FeatureStore.write_label` (label + provenance) then `write_scores` (scores tied to that
label, same provenance). These are two transactions in the store's API; the label's provenance
`extra` holds the full scores as well, so a label whose score rows were lost (a kill between the
two writes) is repaired from its provenance on the next run, without asking the judge again.

Failures: the store has no table for them yet, so they are appended to a JSON-lines file beside
it, `<store>.label-failures.jsonl` (one object per failure: latent, stage, reason, judge, time).

Resuming / relabelling: a latent counts as done when its current label comes from the same
judge kind and model, or from a human (human labels are never replaced unless `overwrite`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from saes.fileio import append_durably

from .examples import Example, LatentEvidence, LatentExamples
from .offline import readable_token
from .store import LabelFailure, LabelResult

__all__ = ["FeatureStoreLabels", "JUDGE_KIND", "failures_path"]

# our source names -> the store's judge kinds
JUDGE_KIND = {"openai": "openai", "anthropic": "anthropic", "transformers": "local", "offline": "offline"}
_KIND_SOURCE = {v: k for k, v in JUDGE_KIND.items()}
NEIGHBOURS = 4  # of each kind (decoder, co-firing) whose promoted tokens count as evidence
MIN_NEIGHBOUR_SIMILARITY = 0.2  # decoder cosine or co-firing Jaccard index below this: not a neighbour


def score_value(s: dict[str, Any]) -> float | None:
    """A stored score's value: "value" (written since scores other than balanced accuracies exist),
    else "balanced_accuracy" (older provenance)."""
    return s["value"] if "value" in s else s.get("balanced_accuracy")


def failures_path(store_path: str | os.PathLike) -> Path:
    p = Path(store_path)
    return p.with_name(p.name + ".label-failures.jsonl")


def _convert(ex: Any) -> Example:
    keep = [j for j, t in enumerate(ex.token_ids) if t >= 0]  # -1 = outside the context
    kind = {"negative": "random"}.get(ex.kind, ex.kind)
    acts = [ex.acts[j] for j in keep]  # negatives are silent throughout their window (all zeros)
    return Example(
        tuple(ex.tokens[j] for j in keep), tuple(acts),
        ref=str(ex.id), kind=kind, quantile=ex.quantile,
    )


class FeatureStoreLabels:
    """Auto-interp's view of a `features.FeatureStore` (see the module docstring)."""

    def __init__(self, store: Any) -> None:
        if getattr(store, "readonly", False):
            raise ValueError(f"{store.path} is open read-only; open it with FeatureStore.open(path, readonly=False)")
        self.store = store
        self.path = Path(store.path)
        self.failures_file = failures_path(self.path)
        self._ids: list[int] | None = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureStoreLabels":
        from features import FeatureStore

        return cls(FeatureStore.open(path, readonly=False))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "FeatureStoreLabels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------------
    def latents(self) -> list[int]:
        if self._ids is None:
            if not self.store.complete:
                raise ValueError(
                    f"{self.path}: the feature store build is not complete; finish it (re-run the same "
                    "`saesteer features build` command) before labelling"
                )
            rows = self.store.list_features(sort="freq", descending=True, filter={"alive_only": True}, offset=0,
                                            limit=self.store.d_sae)
            self._ids = [r.latent for r in rows]  # most frequent first (ties: lower id)
        return list(self._ids)

    def examples(self, latent: int) -> LatentExamples:
        from features.records import without_start_bos

        rec = self.store.feature(latent)
        bos = self.store.meta.get("bos_id")  # the judge does not see the context's BOS marker
        exs = [_convert(without_start_bos(e, bos)) for e in rec.top_examples + rec.quantile_examples + rec.negative_examples]
        max_act = max((e.max_act for e in exs), default=None)
        return LatentExamples(
            latent,
            tuple(e for e in exs if e.kind == "top"),
            tuple(e for e in exs if e.kind == "quantile"),
            tuple(e for e in exs if e.kind == "random"),
            max_act,
            self._evidence(rec),
        )

    def _evidence(self, rec: Any) -> LatentEvidence:
        """Logit effects and neighbours (with the tokens each neighbour promotes) of one latent."""
        if rec.logits is None:
            return LatentEvidence()
        near = [(n.latent, float(n.score)) for n in rec.decoder_neighbours[:NEIGHBOURS] + rec.coact_neighbours[:NEIGHBOURS]
                if n.score >= MIN_NEIGHBOUR_SIMILARITY and n.latent != rec.latent]
        theirs = self.store.promoted_tokens([i for i, _ in near], top=10)
        return LatentEvidence(
            promoted=tuple((t.token, float(t.value)) for t in rec.logits.promoted if readable_token(t.token)),
            suppressed=tuple((t.token, float(t.value)) for t in rec.logits.suppressed if readable_token(t.token)),
            neighbours=tuple((i, s, tuple(t.token for t in theirs.get(i, ()) if readable_token(t.token))) for i, s in near),
        )

    def labelled(self, source: str, judge_model: str) -> set[int]:
        """Latents whose current label is from this judge (or from a human); missing score rows of
        this judge's labels are restored from their provenance on the way."""
        kind = JUDGE_KIND[source]
        st = self.store
        alive = set(self.latents())
        with_label = [r.latent for r in st.list_features(sort="latent", filter={"has_label": True}, offset=0, limit=st.d_sae)]
        done: set[int] = set()
        ours: dict[int, Any] = {}
        for i in with_label:
            if i not in alive:
                continue
            lab = st.label(i)
            p = lab.provenance if lab is not None else None
            if p is None:
                continue
            if p.judge_kind == "human":
                done.add(i)
            elif p.judge_kind == kind and p.judge_model == judge_model:
                ours[i] = lab
                done.add(i)
        if ours:
            # which score methods each current label has rows for (rows of an older label of the
            # same latent, e.g. an offline one, do not count: they score another label)
            have = st.label_score_methods(lab.id for lab in ours.values())
            for i, lab in ours.items():
                if any(m not in have.get(lab.id, set()) for m in self._wanted_scores(lab)):
                    self._repair_scores(i, lab)
        return done

    @staticmethod
    def _wanted_scores(lab: Any) -> dict[str, dict]:
        scores = (lab.provenance.extra or {}).get("autointerp", {}).get("scores") or {}
        return {m: s for m, s in scores.items() if score_value(s) is not None}

    def _repair_scores(self, latent: int, lab: Any) -> None:
        wanted = self._wanted_scores(lab)
        have = {s.method for s in self.store.feature(latent).scores if s.label_id == lab.id}
        missing = [m for m in wanted if m not in have]
        if missing:
            self.store.write_scores(latent, [self._score_input(m, wanted[m]) for m in missing],
                                    provenance=lab.provenance, label_id=lab.id)

    # -- writing ------------------------------------------------------------------------------------
    @staticmethod
    def _score_input(method: str, s: dict[str, Any]):
        from features import ScoreInput

        # prompt_version: absent from the scores of older stores
        keys = ("n_pos", "n_neg", "true_pos", "true_neg", "metric", "prompt_version")
        return ScoreInput(method, float(score_value(s)), int(s["n_pos"]) + int(s["n_neg"]), {k: s[k] for k in keys if k in s})

    def write_result(self, r: LabelResult) -> None:
        from features import LabelProvenance

        pv = r.provenance
        ex = pv.get("examples", {})
        used: list[int] = []
        for role in ("explain", "detection_pos", "detection_neg", "fuzzing"):
            for ref in ex.get(role, []):
                if ref and int(ref) not in used:
                    used.append(int(ref))
        prov = LabelProvenance(
            judge_model=r.judge_model,
            judge_kind=JUDGE_KIND[r.source],
            prompt_version=r.prompt_version,
            examples_used=used,
            params={**{k: v for k, v in pv.get("judge", {}).items() if k not in ("source", "model")},
                    **pv.get("settings", {})},
            created_at=r.created,
            extra={"autointerp": {k: v for k, v in pv.items() if k != "settings"}},
        )
        label_id = self.store.write_label(r.latent, r.label, provenance=prov)
        scores = [self._score_input(m, s) for m, s in pv.get("scores", {}).items() if score_value(s) is not None]
        if scores:
            self.store.write_scores(r.latent, scores, provenance=prov, label_id=label_id)

    def write_failure(self, f: LabelFailure) -> None:
        line = json.dumps({"latent": f.latent, "stage": f.stage, "reason": f.reason, "source": f.source,
                           "judge_model": f.judge_model, "time": f.created}) + "\n"
        append_durably(self.failures_file, line.encode("utf-8"))

    def read_failures(self) -> list[dict[str, Any]]:
        if not self.failures_file.is_file():
            return []
        out = []
        for line in self.failures_file.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        return out
