"""Label many latents: explain, score, write; concurrently, resumably, within a budget.

    report = label_latents(store, judge, LabelConfig(...))      # judge=None: offline labeller

Per latent: read its examples, split them (explanation set / held-out scoring sets), ask the
explainer for a label, run the scorers on it, and write label + scores + provenance in one store
transaction. A latent whose judge calls fail (a permanent error, retries exhausted, answers still
invalid after the re-asks) gets a failure record with its stage and reason, and the run goes on;
a server refusing the credentials stops the run at once: `CredentialsRejected` is raised once its
workers have stopped (every other request would be refused the same way).

Resuming: latents that already hold a label from the same (source, judge model) are skipped
(unless `overwrite`); every answer the judge gave is in the response cache, so re-running a
killed run re-sends only the requests that had no answer yet.

Budget: when the next request could overrun `--budget`, that latent is abandoned (nothing is
written for it), no new latent starts, and the run ends with `stopped="budget"`. Labels already
written are complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Awaitable, Sequence

from .accounting import BudgetExceeded, estimate_message_tokens
from .concept import ConceptExplainer, Lexicon, load_lexicon
from .embedding_score import EmbeddingScorer
from .embeddings import Embedder
from .intruder import IntruderScorer
from .simulation import SimulationScorer
from .config import LabelConfig, parse_latents
from .examples import ExampleSplit, LatentExamples, crop_example, split_examples
from .interp import (LABEL_MAX_TOKENS, DetectionScorer, FuzzingScorer, LLMExplainer, OfflineExplainer, Score, Usage,
                     answers_max_tokens)
from .judge import CredentialsRejected, Judge, JudgeError
from .store import LabelFailure, LabelResult, LabelStore
from .syncrun import run_coroutine_sync

__all__ = ["Labeller", "RunReport", "DryRunEstimate", "label_latents", "label_latents_async", "estimate_run",
           "select_latents"]


class _StageError(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


async def _stage(stage: str, work: Awaitable[Any]) -> Any:
    """`work`, its judge's failure recorded as `stage`'s; a refused key is no stage's failure."""
    try:
        return await work
    except CredentialsRejected:
        raise
    except JudgeError as e:
        raise _StageError(stage, e.reason) from None


class Labeller:
    """An explainer and its scorers with the example-selection settings: labels one latent."""

    def __init__(self, judge: Judge | None, cfg: LabelConfig, *, lexicon: Lexicon | None = None,
                 embedder: Embedder | None = None) -> None:
        self.judge = judge
        self.cfg = cfg
        self.explainer = make_explainer(judge, cfg, lexicon)
        self.scorers: list[Any] = []
        for name in cfg.scorers:
            if name == "detection":
                self.scorers.append(DetectionScorer(judge, batch_size=cfg.scoring_batch_size, seed=cfg.seed))
            elif name == "fuzzing":
                self.scorers.append(FuzzingScorer(judge, batch_size=cfg.scoring_batch_size, seed=cfg.seed,
                                                  mark_threshold=cfg.mark_threshold))
            elif name == "simulation":
                self.scorers.append(SimulationScorer(judge, batch_size=cfg.scoring_batch_size, seed=cfg.seed))
            elif name == "intruder":
                self.scorers.append(IntruderScorer(judge, seed=cfg.seed))
            elif name == "embedding":
                if embedder is None:
                    from .embeddings import EmbedConfig, make_embedder

                    embedder = make_embedder(EmbedConfig())
                self.scorers.append(EmbeddingScorer(embedder))

    @property
    def source(self) -> str:
        return self.explainer.source

    @property
    def model(self) -> str:
        return self.explainer.model

    def split(self, lex: LatentExamples) -> ExampleSplit:
        c = self.cfg
        cropped = LatentExamples(
            lex.latent,
            tuple(crop_example(e, c.max_example_tokens) for e in lex.top),
            tuple(crop_example(e, c.max_example_tokens) for e in lex.quantile),
            tuple(crop_example(e, c.max_example_tokens) for e in lex.random),
            lex.max_act,
            lex.evidence,
        )
        return split_examples(cropped, n_explain_top=c.n_explain_top, n_explain_quantile=c.n_explain_quantile,
                              n_detect=c.n_detect, n_fuzz=c.n_fuzz, seed=c.seed)

    async def label(self, lex: LatentExamples) -> LabelResult:
        """Label + scores for one latent. Raises _StageError (recorded), BudgetExceeded or CredentialsRejected."""
        split = self.split(lex)
        if not split.explain:
            raise _StageError("examples", "no activating examples in the store (dead latent?)")
        expl = await _stage("explain", self.explainer.explain(lex.latent, split))
        results = await asyncio.gather(
            *(_stage(s.name, s.score(lex.latent, expl.label, expl.detail, split)) for s in self.scorers),
            return_exceptions=True,
        )
        for r in results:  # budget and credentials first: an abandoned latent is not a failed one
            if isinstance(r, (BudgetExceeded, CredentialsRejected)):
                raise r
        for r in results:
            if isinstance(r, BaseException):
                raise r
        scores: list[Score] = list(results)  # type: ignore[arg-type]
        usage = Usage()
        usage.merge(expl.usage)
        for s in scores:
            usage.merge(s.usage)
        c = self.cfg
        provenance: dict[str, Any] = {
            "judge": {"source": self.source, "model": self.model,
                      # the settings the label's answer was asked with (a cached one: its first run's)
                      **(self.judge.settings_of(expl.usage) if self.judge
                         else {"temperature": None})},
            "prompt_version": self.explainer.prompt_version,
            "examples": {
                "explain": [e.ref for e in split.explain],
                "detection_pos": [e.ref for e in split.detect_pos],
                "detection_neg": [e.ref for e in split.detect_neg],
                "fuzzing": [e.ref for e in split.fuzz],
            },
            "scores": {s.name: s.to_json() for s in scores},
            "detail": expl.detail,
            "usage": usage.to_json(),
            "settings": {
                "seed": c.seed, "mark_threshold": c.mark_threshold, "max_example_tokens": c.max_example_tokens,
                "n_explain_top": c.n_explain_top, "n_explain_quantile": c.n_explain_quantile,
                "n_detect": c.n_detect, "n_fuzz": c.n_fuzz, "scoring_batch_size": c.scoring_batch_size,
            },
        }
        return LabelResult(
            latent=lex.latent, label=expl.label, source=self.source, judge_model=self.model,
            prompt_version=self.explainer.prompt_version,
            scores={s.name: s.value for s in scores}, provenance=provenance,
        )


def make_explainer(judge: Judge | None, cfg: LabelConfig, lexicon: Lexicon | None = None):
    """The explainer `cfg.explainer` names: offline (judge None) concept phrases or token lists; with
    a judge, examples plus logit effects, or the contrastive variant."""
    if judge is None:
        if cfg.explainer == "contrastive":
            raise ValueError("LabelConfig.explainer contrastive needs a judge (--judge-model); offline, use auto or tokens")
        if cfg.explainer == "tokens":
            return OfflineExplainer(mark_threshold=cfg.mark_threshold)
        return ConceptExplainer(lexicon=lexicon, mark_threshold=cfg.mark_threshold)
    if cfg.explainer == "tokens":
        raise ValueError("LabelConfig.explainer tokens is the offline token-list labeller; with a judge use auto or contrastive")
    from .contrastive import ContrastiveExplainer

    if cfg.explainer == "contrastive":
        return ContrastiveExplainer(judge, mark_threshold=cfg.mark_threshold)
    return LLMExplainer(judge, mark_threshold=cfg.mark_threshold)


def store_lexicon(store: LabelStore, cfg: LabelConfig) -> Lexicon | None:
    """The lexicon `cfg.lexicon` names; 'auto' is the toy world's for a store of the toy model."""
    toy = False
    if cfg.lexicon == "auto":
        recorded = getattr(getattr(store, "store", None), "recorded_model", None)
        ident = recorded() if callable(recorded) else None
        toy = ident is not None and getattr(ident, "source", None) == "toy"
    return load_lexicon(cfg.lexicon, toy_store=toy)


@dataclass
class RunReport:
    judge: str
    requested: int = 0  # latents selected
    skipped: int = 0  # already labelled by this judge
    labelled: int = 0
    failed: list[LabelFailure] = field(default_factory=list)
    abandoned: int = 0  # stopped by the budget before finishing
    stopped: str | None = None  # "budget" (the budget ended the run) or "failures" (too many failures in a row)
    usage: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        u = self.usage
        parts = [f"{self.labelled} labelled", f"{len(self.failed)} failed", f"{self.skipped} already labelled"]
        left = self.requested - self.skipped - self.labelled - len(self.failed)
        if self.stopped == "budget":
            parts.append(f"stopped by the budget with {left} left")
        elif self.stopped == "failures":
            parts.append(f"stopped after too many failures in a row with {left} left")
        s = f"{self.judge}: " + ", ".join(parts) + f" in {self.elapsed_s:.1f} s"
        if u:
            cached_in = u.get("cached_prompt_tokens", 0)
            s += (f"; requests: {u.get('paid_calls', 0)} paid, {u.get('cached_calls', 0)} cached, "
                  f"{u.get('retries', 0)} retries; tokens: {u.get('prompt_tokens', 0):,} in"
                  + (f" ({cached_in:,} from the provider's prompt cache)" if cached_in else "")
                  + f" + {u.get('completion_tokens', 0):,} out")
            if u.get("cost_usd") is not None:
                s += f"; cost ${u['cost_usd']:.4f}" + (f" ({u['cost_source']})" if u.get("cost_source") else "")
        return s


def select_latents(store: LabelStore, cfg: LabelConfig) -> list[int]:
    """The latents to label: `cfg.latents` (default: every latent that fires), and with `cfg.limit`
    only the most frequent that many of them; most frequent first, so a budget or an interrupted
    run has spent itself on the latents that matter most."""
    ids = store.latents()
    if cfg.latents is not None:
        have = set(ids)
        wanted = parse_latents(cfg.latents)
        missing = [i for i in wanted if i not in have]
        if missing:
            raise ValueError(
                f"latents {missing[:10]}{'...' if len(missing) > 10 else ''} cannot be labelled: they are dead "
                f"(never fire, so have no examples) or not in the store ({len(ids)} latents can be labelled)"
            )
        keep = set(wanted)
        ids = [i for i in ids if i in keep]
    if cfg.limit is not None:
        ids = ids[: cfg.limit]
    return ids


class _LabelRun:
    """One labelling run's shared state: the queue of latents its workers take from, the report
    they fill in, the progress bar, and the stop signal (budget spent, too many failures in a row, or a
    key the server refused)."""

    def __init__(self, store: LabelStore, labeller: Labeller, cfg: LabelConfig, report: RunReport,
                 todo: Sequence[int], ledger, bar) -> None:
        self.store, self.labeller, self.cfg, self.report = store, labeller, cfg, report
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        for i in todo:
            self.queue.put_nowait(i)
        self.stop = asyncio.Event()
        self.ledger = ledger
        self.bar = bar
        self.internal_errors = 0
        self.streak = 0  # latents failed in a row
        self.refused: CredentialsRejected | None = None  # the server refused the key: raised once all stopped

    def postfix(self) -> None:
        if self.ledger is not None:
            t = self.ledger.totals
            pf = {"failed": len(self.report.failed), "tok": t.prompt_tokens + t.completion_tokens, "cached": t.cached_calls}
            if self.ledger.cost_is_known():
                pf["$"] = f"{t.cost_usd:.4f}"
            self.bar.set_postfix(pf, refresh=False)

    def failed(self, f: LabelFailure) -> None:
        self.store.write_failure(f)
        self.report.failed.append(f)
        self.streak += 1
        limit = self.cfg.max_consecutive_failures
        if limit and self.streak >= limit and not self.stop.is_set():
            self.report.stopped = "failures"
            self.stop.set()

    async def worker(self) -> None:
        labeller, report = self.labeller, self.report
        while not self.stop.is_set():
            try:
                latent = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                result = await labeller.label(self.store.examples(latent))
            except BudgetExceeded:
                report.abandoned += 1
                report.stopped = "budget"
                self.stop.set()
                return
            except CredentialsRejected as e:
                self.refused = e
                self.stop.set()
                return
            except _StageError as e:
                self.failed(LabelFailure(latent, e.stage, e.reason, labeller.source, labeller.model))
            except Exception as e:  # a bug or a broken store row: record it, keep going
                self.internal_errors += 1
                if self.internal_errors == 1:
                    traceback.print_exc(file=sys.stderr)
                self.failed(LabelFailure(latent, "internal", f"{type(e).__name__}: {e}", labeller.source, labeller.model))
            else:
                self.store.write_result(result)
                report.labelled += 1
                self.streak = 0
            self.bar.update(1)
            self.postfix()


async def label_latents_async(
    store: LabelStore, judge: Judge | None, cfg: LabelConfig, *, progress: bool = True,
    latents: Sequence[int] | None = None, embedder: Embedder | None = None,
) -> RunReport:
    labeller = Labeller(judge, cfg, lexicon=store_lexicon(store, cfg) if judge is None else None, embedder=embedder)
    t0 = time.perf_counter()
    ids = list(latents) if latents is not None else select_latents(store, cfg)
    report = RunReport(judge=f"{labeller.source}:{labeller.model}", requested=len(ids))
    done = set() if cfg.overwrite else store.labelled(labeller.source, labeller.model)
    todo = [i for i in ids if i not in done]
    report.skipped = len(ids) - len(todo)
    ledger = judge.ledger if judge is not None else None

    from tqdm.auto import tqdm

    # cfg.budget holds for this run (also on a judge made without one, as in a notebook), and the
    # report's usage is this run's, not the judge's earlier calls'
    with ledger.run(cfg.budget_value()) if ledger is not None else contextlib.nullcontext() as usage:
        bar = tqdm(total=len(todo), unit="latent", desc="labelling", disable=not progress, dynamic_ncols=True)
        run = _LabelRun(store, labeller, cfg, report, todo, ledger, bar)
        n_workers = judge.concurrency if judge is not None else 1
        try:
            await asyncio.gather(*(run.worker() for _ in range(max(1, min(n_workers, len(todo))))))
        finally:
            bar.close()
        if run.refused is not None:
            raise run.refused
        if usage is not None:
            report.usage = usage()
    report.elapsed_s = time.perf_counter() - t0
    return report


def label_latents(store: LabelStore, judge: Judge | None, cfg: LabelConfig, *, progress: bool = True,
                  latents: Sequence[int] | None = None, embedder: Embedder | None = None) -> RunReport:
    """Synchronous entry point (runs its own event loop; closes the judge's HTTP clients). Called
    where an event loop already runs (Jupyter, an async server), it runs in a worker thread with a
    loop of its own and blocks until done; there, `await label_latents_async(...)` blocks nothing."""

    async def main() -> RunReport:
        try:
            return await label_latents_async(store, judge, cfg, progress=progress, latents=latents, embedder=embedder)
        finally:
            if judge is not None:
                await judge.aclose()

    return run_coroutine_sync(main)


# ------------------------------------------------------------------------------------------------
# dry run


class _NoEmbedder:
    """Stands in for an embedder where none is called (a dry run counts judge requests only)."""

    name = "none"

    def embed(self, texts):
        raise AssertionError("a dry run embeds nothing")


@dataclass
class DryRunEstimate:
    judge: str
    latents: int  # to label (after skipping labelled ones)
    sampled: int  # latents whose prompts were built to estimate (the rest extrapolated)
    calls: int
    cached_explain_calls: int  # explain requests already answered in the cache (sampled, extrapolated)
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None

    def summary(self) -> str:
        cost = "unknown (no price for this model)" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        return (
            f"dry run, {self.judge}: {self.latents} latents to label -> about {self.calls:,} requests "
            f"({self.cached_explain_calls:,} explain requests already cached), ~{self.prompt_tokens:,} prompt + "
            f"~{self.completion_tokens:,} completion tokens, cost ~{cost} (no retries or re-asks counted; "
            f"estimated from {self.sampled} latents)"
        )


def estimate_run(store: LabelStore, judge: Judge | None, cfg: LabelConfig, *, sample: int = 200) -> DryRunEstimate:
    """Requests, tokens and cost the run would take, without sending anything. Scoring prompts
    are built with a placeholder label of typical length (the real one is not known yet)."""
    labeller = Labeller(judge, cfg, embedder=_NoEmbedder() if "embedding" in cfg.scorers else None)
    ids = select_latents(store, cfg)
    done = set() if cfg.overwrite else store.labelled(labeller.source, labeller.model)
    todo = [i for i in ids if i not in done]
    name = f"{labeller.source}:{labeller.model}"
    if judge is None or not todo:
        return DryRunEstimate(name, len(todo), 0, 0, 0, 0, 0, 0.0)
    step = max(1, math.ceil(len(todo) / sample))
    picked = todo[::step]
    calls = cached = pt = ct = 0
    placeholder = "words about a placeholder concept here"
    for latent in picked:
        split = labeller.split(store.examples(latent))
        if not split.explain:
            continue
        msgs = labeller.explainer.messages(split)
        calls += 1
        if judge.is_cached(msgs, LABEL_MAX_TOKENS):
            cached += 1  # answered already: costs nothing
        else:
            pt += estimate_message_tokens(msgs)
            ct += 16
        for scorer in labeller.scorers:
            for m, truth in scorer.batches(latent, placeholder, split):
                calls += 1
                pt += estimate_message_tokens(m)
                ct += min(answers_max_tokens(len(truth)), 6 + 2 * len(truth))
    ct += (calls - cached) * judge.reasoning_tokens  # room given to think: a reasoning model may spend all of it
    scale = len(todo) / max(1, len(picked))
    calls, cached, pt, ct = (int(round(x * scale)) for x in (calls, cached, pt, ct))
    cost = judge.ledger.prices.cost(pt, ct)
    return DryRunEstimate(name, len(todo), len(picked), calls, cached, pt, ct, cost)
