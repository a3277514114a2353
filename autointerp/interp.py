"""Explainers (examples -> label) and scorers (label + held-out examples -> balanced accuracy).

Two of each: LLM-backed ones that talk to a `Judge`, and offline ones built on token statistics
(`autointerp.offline`). All are async and deterministic given (seed, latent): item order, fuzzing
marks and batches are drawn from `latent_rng`, so a re-run sends byte-identical requests and is
served from the response cache.

Detection: the held-out activating examples (positives) and random non-activating contexts
(negatives), shuffled and shown without marks in batches; the judge answers, per context, whether
the labelled feature is present. Fuzzing: held-out activating examples, half with their true
activating tokens marked and half with as many randomly chosen non-activating tokens marked; the
judge answers whether the marks fit the label. Both give balanced accuracy,
(TP/P + TN/N) / 2: 0.5 is chance, 1.0 perfect.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from .examples import Example, ExampleSplit, active_positions, latent_rng
from .judge import Completion, Judge
from .offline import (OFFLINE_MODEL, OFFLINE_PROMPT_VERSION, explain_offline, label_tokens, predict_detection,
                      predict_fuzz)
from .prompts import (DETECT_PROMPT_VERSION, FUZZ_PROMPT_VERSION, LABEL_SCHEMA, PROMPT_VERSION, FuzzItem,
                      build_detection_messages, build_explain_messages, build_fuzz_messages, parse_binary_answers,
                      parse_label, shown_pieces)

__all__ = [
    "Usage",
    "Explanation",
    "Score",
    "LLMExplainer",
    "OfflineExplainer",
    "DetectionScorer",
    "FuzzingScorer",
    "detection_items",
    "fuzz_items",
    "balanced_accuracy",
]

LABEL_MAX_TOKENS = 64


@dataclass
class Usage:
    """What one latent's work cost (paid requests only)."""

    requests: int = 0
    cached: int = 0
    reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    # the judge settings of the first answer added that says (`Completion.settings_sent`): the provenance's
    # (`Judge.settings_of`)
    settings_sent: dict[str, Any] | None = None

    def add(self, c: Completion) -> None:
        self.settings_sent = self.settings_sent or c.settings_sent
        self.requests += c.requests
        self.cached += c.cached
        self.reasks += c.reasks
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        self.cost_usd = None if (self.cost_usd is None or c.cost_usd is None) else self.cost_usd + c.cost_usd

    def merge(self, other: "Usage") -> None:
        self.settings_sent = self.settings_sent or other.settings_sent
        self.requests += other.requests
        self.cached += other.cached
        self.reasks += other.reasks
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd = None if (self.cost_usd is None or other.cost_usd is None) else self.cost_usd + other.cost_usd

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["settings_sent"]  # not a cost: the provenance's judge settings
        if d["cost_usd"] is not None:
            d["cost_usd"] = round(d["cost_usd"], 8)
        return d


@dataclass(frozen=True)
class Explanation:
    label: str
    detail: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class Score:
    """A scorer's result for one label. `balanced_accuracy` is None without both classes."""

    name: str
    balanced_accuracy: float | None
    n_pos: int
    n_neg: int
    true_pos: int
    true_neg: int
    usage: Usage = field(default_factory=Usage)
    metric: str = "balanced_accuracy"  # what `value` is (simulation: "pearson", intruder: "accuracy", ...)
    measured: float | None = None  # the score when it is not a balanced accuracy
    prompt_version: str | None = None  # the judge prompt that produced it (None: no judge, e.g. offline)

    @property
    def value(self) -> float | None:
        """The score stored for the label (the balanced accuracy unless another metric says otherwise)."""
        return self.balanced_accuracy if self.metric == "balanced_accuracy" else self.measured

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["usage"] = self.usage.to_json()
        d["value"] = self.value
        return d


def balanced_accuracy(name: str, truth: Sequence[bool], pred: Sequence[bool], usage: Usage | None = None,
                      prompt_version: str | None = None) -> Score:
    assert len(truth) == len(pred), "one prediction per item"
    n_pos = sum(1 for t in truth if t)
    n_neg = len(truth) - n_pos
    tp = sum(1 for t, p in zip(truth, pred) if t and p)
    tn = sum(1 for t, p in zip(truth, pred) if not t and not p)
    ba = None
    if n_pos and n_neg:
        ba = round(0.5 * (tp / n_pos + tn / n_neg), 6)
    return Score(name, ba, n_pos, n_neg, tp, tn, usage or Usage(), prompt_version=prompt_version)


# ------------------------------------------------------------------------------------------------
# explainers


class LLMExplainer:
    """Asks the judge for a short label of the examples (activating tokens marked)."""

    def __init__(self, judge: Judge, *, mark_threshold: float = 0.3, max_tokens: int = LABEL_MAX_TOKENS) -> None:
        self.judge = judge
        self.mark_threshold = mark_threshold
        self.max_tokens = max_tokens
        self.model = judge.model
        self.source = judge.kind
        self.prompt_version = PROMPT_VERSION

    def messages(self, split: ExampleSplit) -> list[dict[str, str]]:
        return build_explain_messages(split.explain, self.mark_threshold, [t for t, v in split.evidence.promoted if v > 0])

    async def explain(self, latent: int, split: ExampleSplit) -> Explanation:
        c = await self.judge.complete(self.messages(split), LABEL_SCHEMA, validate=parse_label,
                                      max_tokens=self.max_tokens)
        u = Usage()
        u.add(c)
        return Explanation(c.value, {}, u)


class OfflineExplainer:
    """Labels from token statistics; no LLM, no cost (see `autointerp.offline`)."""

    model = OFFLINE_MODEL
    source = "offline"
    prompt_version = OFFLINE_PROMPT_VERSION

    def __init__(self, *, mark_threshold: float = 0.3, context_window: int = 4, max_tokens: int = 3) -> None:
        self.mark_threshold = mark_threshold
        self.context_window = context_window
        self.max_tokens = max_tokens

    async def explain(self, latent: int, split: ExampleSplit) -> Explanation:
        e = explain_offline(split.explain, split.background, mark_threshold=self.mark_threshold,
                            context_window=self.context_window, max_tokens=self.max_tokens)
        detail = {"tokens": list(e.tokens), "context": list(e.context), "weights": e.weights, "coverage": e.coverage,
                  "token_set": list(e.token_set)}
        return Explanation(e.label, detail, Usage())


# ------------------------------------------------------------------------------------------------
# scoring items


def detection_items(split: ExampleSplit, latent: int, seed: int) -> list[tuple[Example, bool]]:
    items = [(e, True) for e in split.detect_pos] + [(e, False) for e in split.detect_neg]
    latent_rng(seed, latent, "detection").shuffle(items)
    return items


def fuzz_items(split: ExampleSplit, latent: int, seed: int, mark_threshold: float) -> list[FuzzItem]:
    """Half the examples keep their true marks, the other half get as many random non-activating
    positions marked (examples too small for a wrong marking keep true marks). Marks go only where
    a prompt shows them (`prompts.shown_pieces`: not on the bytes of a character cut at the window's
    edge, not on a blank piece): a wrong marking shown without marks would be judged 0 and counted
    right for nothing; an example whose true marks all fall there is left out."""
    rng = latent_rng(seed, latent, "fuzzing")
    exs = list(split.fuzz)
    rng.shuffle(exs)
    out = []
    n_wrong = len(exs) // 2
    for i, ex in enumerate(exs):
        shown, gone = shown_pieces(ex.tokens)  # marks only where the judge can see them
        true_pos = [j for j in active_positions(ex, mark_threshold) if j not in gone]
        if not true_pos:
            continue
        others = [j for j, a in enumerate(ex.acts) if a <= 0 and j not in gone and shown[j].strip()]
        if i < n_wrong and len(others) >= len(true_pos):
            out.append(FuzzItem(ex, tuple(sorted(rng.sample(others, len(true_pos)))), False))
        else:
            out.append(FuzzItem(ex, tuple(true_pos), True))
    rng.shuffle(out)
    return out


async def _gather_all(coros) -> list:
    """Await all; if any failed, raise the first failure (after the others have finished, so no
    request of an abandoned latent is still running behind the caller's back)."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


async def _judged_answers(judge: Judge, requests: list[tuple[list[dict], int]]) -> tuple[list[bool], Usage]:
    """Ask `judge` every (messages, n) request for n yes/no answers: all answers in order, and the usage."""
    done = await _gather_all(
        judge.complete(messages, validate=lambda v, n=n: parse_binary_answers(v, n), max_tokens=answers_max_tokens(n))
        for messages, n in requests
    )
    usage = Usage()
    pred: list[bool] = []
    for c in done:
        usage.add(c)
        pred.extend(c.value)
    return pred, usage


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# ------------------------------------------------------------------------------------------------
# scorers


class DetectionScorer:
    """Detection balanced accuracy, by a judge (`judge` given) or offline (`judge=None`)."""

    name = "detection"

    def __init__(self, judge: Judge | None, *, batch_size: int = 10, seed: int = 0) -> None:
        self.judge = judge
        self.batch_size = batch_size
        self.seed = seed

    def batches(self, latent: int, label: str, split: ExampleSplit) -> list[tuple[list[dict], list[bool]]]:
        items = detection_items(split, latent, self.seed)
        return [
            (build_detection_messages(label, [e for e, _ in b]), [t for _, t in b])
            for b in _batches(items, self.batch_size)
        ]

    async def score(self, latent: int, label: str, detail: dict, split: ExampleSplit) -> Score:
        items = detection_items(split, latent, self.seed)
        truth = [t for _, t in items]
        if self.judge is None:
            pred = predict_detection(label_tokens(label, detail), [e for e, _ in items])
            return balanced_accuracy(self.name, truth, pred)
        pred, usage = await _judged_answers(
            self.judge, [(build_detection_messages(label, [e for e, _ in b]), len(b)) for b in _batches(items, self.batch_size)])
        return balanced_accuracy(self.name, truth, pred, usage, DETECT_PROMPT_VERSION)


class FuzzingScorer:
    """Fuzzing balanced accuracy, by a judge (`judge` given) or offline (`judge=None`)."""

    name = "fuzzing"

    def __init__(self, judge: Judge | None, *, batch_size: int = 10, seed: int = 0, mark_threshold: float = 0.3) -> None:
        self.judge = judge
        self.batch_size = batch_size
        self.seed = seed
        self.mark_threshold = mark_threshold

    def batches(self, latent: int, label: str, split: ExampleSplit) -> list[tuple[list[dict], list[bool]]]:
        items = fuzz_items(split, latent, self.seed, self.mark_threshold)
        return [(build_fuzz_messages(label, b), [it.correct for it in b]) for b in _batches(items, self.batch_size)]

    async def score(self, latent: int, label: str, detail: dict, split: ExampleSplit) -> Score:
        items = fuzz_items(split, latent, self.seed, self.mark_threshold)
        truth = [it.correct for it in items]
        if self.judge is None:
            pred = predict_fuzz(label_tokens(label, detail), [(it.example, it.marked) for it in items])
            return balanced_accuracy(self.name, truth, pred)
        pred, usage = await _judged_answers(
            self.judge, [(build_fuzz_messages(label, b), len(b)) for b in _batches(items, self.batch_size)])
        return balanced_accuracy(self.name, truth, pred, usage, FUZZ_PROMPT_VERSION)


def answers_max_tokens(n: int) -> int:
    """Output budget of a 0/1 answers reply for n items (generous: some models add spaces)."""
    return 16 + 4 * n
