"""Token and cost accounting, and the budget that stops a run cleanly.

Prices are USD per million tokens, input and output, per model: a small built-in table of
list prices (check them; they change) that `Prices.for_model(..., input_per_mtok=...,
output_per_mtok=...)` overrides. Local servers and local models cost nothing unless given a price.

The budget is checked *before* each request by reserving an upper bound of its cost: the prompt
counted as one token per UTF-8 byte (no tokenizer makes more tokens than bytes) plus the chat
framing (learnt from the server's reports: the largest excess it ever reported over the bytes)
plus the full `max_tokens` of output. When the answer arrives the reservation is replaced by the
usage the server reports (by a server that reports none, by the bound: `Judge._bound_usage`;
prompt tokens its prompt cache served at the cached-input price, prompt tokens Anthropic wrote to its cache at
1.25 or 2 times the input price), and the cost by the one the provider
reported where its reply carries one (OpenRouter's `usage.cost`: what it billed), else by the prices; a
request that cost more than its tokens at the plain input and output prices (a provider billing over the prices
given, Anthropic's cache writes) scales every later USD bound by the largest such ratio, and by at least the
rate of the cache writes seen (`_over_plain_prices`). A request whose bound could overrun the budget is not
sent: it waits for the requests in flight to settle, and if it still does not fit `BudgetExceeded` is raised,
the runner abandons that latent (nothing written) and stops starting new ones. So the spending
never crosses the budget as long as the server honours `max_tokens` (and the requests sent before the first
that cost more than the prices' bound cost no more than it). Cached answers cost nothing
and are never refused. (`estimate_message_tokens`, chars / 3.5, is the typical count that dry-run
estimates use; it is not a bound.)
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Prices",
    "Budget",
    "Ledger",
    "BudgetExceeded",
    "estimate_tokens",
    "estimate_message_tokens",
    "prompt_token_bound",
    "KNOWN_PRICES",
]

# USD per 1M tokens (input, output, cached input): list prices of some common judge models as of 2025;
# override with --judge-price-input / --judge-price-output / --judge-price-cached-input when they differ.
# Cached input is what OpenAI bills for prompt tokens its prompt cache served
# (usage.prompt_tokens_details.cached_tokens; DeepSeek's prompt_cache_hit_tokens, Anthropic's cache_read_input_tokens).
KNOWN_PRICES: dict[str, tuple[float, float, float]] = {
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "gpt-4o": (2.50, 10.00, 1.25),
    "gpt-4.1": (2.00, 8.00, 0.50),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),
}


# Anthropic bills prompt tokens it writes to its prompt cache above the input price: a write kept 5 minutes
# (the default TTL) at 1.25 times it, one kept 1 hour at 2 times (usage.cache_creation.ephemeral_5m_input_tokens /
# ephemeral_1h_input_tokens; of a bare cache_creation_input_tokens, the 5-minute rate)
CACHE_WRITE_5M_PER_INPUT = 1.25
CACHE_WRITE_1H_PER_INPUT = 2.0


class BudgetExceeded(RuntimeError):
    """Sending the next request could overrun the budget; nothing was sent."""


def estimate_tokens(text: str) -> int:
    """A rough, deliberately high token count for English-like text (no tokenizer needed):
    one token per 3.5 characters, at least one per whitespace-separated word."""
    if not text:
        return 0
    return max(math.ceil(len(text) / 3.5), len(text.split()))


def estimate_message_tokens(messages: list[dict]) -> int:
    """Estimated prompt tokens of a chat request (content plus ~4 tokens of framing per message)."""
    return sum(estimate_tokens(str(m.get("content") or "")) + 4 for m in messages) + 3


FRAMING_TOKENS_PER_MESSAGE = 8  # role markers and separators of one chat message (typical: 3-5)
FRAMING_TOKENS_PER_REQUEST = 16  # start-of-reply tokens and a short default system preamble


def prompt_token_bound(messages: list[dict], extra_framing: int = 0) -> int:
    """An upper bound of a chat request's prompt tokens: one per UTF-8 byte of every message
    (a token is at least one byte in byte-level BPE; byte-fallback tokenizers do no worse), plus
    framing per message and per request, plus `extra_framing` (what a server was seen to add)."""
    content = sum(len(str(m.get("content") or "").encode("utf-8")) for m in messages)
    return content + FRAMING_TOKENS_PER_MESSAGE * len(messages) + FRAMING_TOKENS_PER_REQUEST + max(0, extra_framing)


@dataclass(frozen=True)
class Prices:
    """USD per million input / output tokens for one model; None = unknown. Prompt tokens a provider's
    prompt cache served cost `cached_input_per_mtok` (None: the input price, an upper bound); those it wrote
    to the cache, the input price times CACHE_WRITE_5M_PER_INPUT or CACHE_WRITE_1H_PER_INPUT."""

    model: str
    input_per_mtok: float | None
    output_per_mtok: float | None
    cached_input_per_mtok: float | None = None

    @classmethod
    def for_model(
        cls, model: str, input_per_mtok: float | None = None, output_per_mtok: float | None = None,
        local: bool = False, cached_input_per_mtok: float | None = None,
    ) -> "Prices":
        known = KNOWN_PRICES.get(model)
        if known is None:
            # dated names such as gpt-4o-mini-2024-07-18
            for name in sorted(KNOWN_PRICES, key=len, reverse=True):
                if model.startswith(name + "-") and re.fullmatch(r"[\d-]+", model[len(name) + 1:]):
                    known = KNOWN_PRICES[name]
                    break
        if known is None and local:
            known = (0.0, 0.0, 0.0)
        return cls(
            model,
            input_per_mtok if input_per_mtok is not None else (known[0] if known else None),
            output_per_mtok if output_per_mtok is not None else (known[1] if known else None),
            # the cached-input price given (--judge-price-cached-input), else: a price given for input holds
            # for cached input too (the table's discount is for its own price)
            cached_input_per_mtok if cached_input_per_mtok is not None
            else None if (input_per_mtok is not None or not known) else known[2],
        )

    @property
    def known(self) -> bool:
        return self.input_per_mtok is not None and self.output_per_mtok is not None

    def describe(self) -> str:
        """The prices an estimate used, as a report says them."""
        cached = self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        return (f"${self.input_per_mtok:g} input, ${cached:g} cached input, ${self.output_per_mtok:g} output per 1M "
                "tokens" if self.known else "no price known")

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0,
             cache_write_5m_tokens: int = 0, cache_write_1h_tokens: int = 0) -> float | None:
        """USD of one request; of `prompt_tokens`, `cached_prompt_tokens` were served by the prompt cache and
        `cache_write_5m_tokens` / `cache_write_1h_tokens` written to it (kept 5 minutes / 1 hour)."""
        if not self.known:
            return None
        left = int(prompt_tokens)
        cached, left = _part(cached_prompt_tokens, left)
        written_1h, left = _part(cache_write_1h_tokens, left)
        written_5m, left = _part(cache_write_5m_tokens, left)
        cached_price = self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        written = written_5m * CACHE_WRITE_5M_PER_INPUT + written_1h * CACHE_WRITE_1H_PER_INPUT
        return ((left + written) * self.input_per_mtok + cached * cached_price
                + completion_tokens * self.output_per_mtok) / 1e6


def _over_plain_prices(cost: float | None, plain: float | None, cache_write_5m_tokens: int,
                       cache_write_1h_tokens: int) -> float:
    """How many times its tokens at the plain input and output prices (`plain`) a request cost, as the one rule
    that scales later USD bounds (a bound prices every prompt token at the input price): the whole request's
    ratio (a provider billing over the prices given), and at least the rate of a cache write it made, since a
    later prompt may be all written (a request's cheap cache reads and plain tokens dilute its ratio)."""
    ratio = cost / plain if cost is not None and plain else 1.0
    if cache_write_1h_tokens > 0:
        ratio = max(ratio, CACHE_WRITE_1H_PER_INPUT)
    elif cache_write_5m_tokens > 0:
        ratio = max(ratio, CACHE_WRITE_5M_PER_INPUT)
    return ratio


def _part(tokens: int, of: int) -> tuple[int, int]:
    """`tokens` (at least 0, at most `of`) and what is left of `of` without them."""
    part = min(max(0, int(tokens)), max(0, of))
    return part, of - part


_BUDGET_RE = re.compile(
    r"^\s*(?P<dollar>\$)?\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<mult>[kKmM])?\s*(?P<unit>usd|\$|dollars?|tokens?|tok)?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Budget:
    """A spending limit in USD or in tokens (prompt + completion, paid requests only)."""

    amount: float
    unit: Literal["usd", "tokens"]

    def __post_init__(self) -> None:
        if not (self.amount >= 0 and math.isfinite(self.amount)):
            raise ValueError(f"budget: amount must be a finite number >= 0, got {self.amount}")
        if self.unit not in ("usd", "tokens"):
            raise ValueError(f"budget: unit must be 'usd' or 'tokens', got {self.unit!r}")

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """'$2', '2usd', '2.5 USD', '200000 tokens', '200k tokens', '1.5M tok'."""
        m = _BUDGET_RE.match(text)
        unit_word = (m.group("unit") or "").lower() if m else ""
        if not m or (not m.group("dollar") and not unit_word):
            raise ValueError(
                f"budget: cannot read {text!r}; write an amount with its unit, e.g. '2usd', '$2' "
                "or '200000tokens' ('200k tokens' works too)"
            )
        value = float(m.group("num")) * {"": 1, "k": 1e3, "m": 1e6}[(m.group("mult") or "").lower()]
        is_usd = bool(m.group("dollar")) or unit_word in ("usd", "$", "dollar", "dollars")
        return cls(value, "usd" if is_usd else "tokens")

    def __str__(self) -> str:
        return f"${self.amount:g}" if self.unit == "usd" else f"{self.amount:,.0f} tokens"


@dataclass
class _Counters:
    paid_calls: int = 0
    cached_calls: int = 0
    retries: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, served by the provider's prompt cache
    completion_tokens: int = 0
    cost_usd: float = 0.0
    reported_cost_calls: int = 0  # paid calls whose cost the provider reported (OpenRouter's usage.cost)
    cost_known: bool = True


@dataclass
class Reservation:
    tokens: int
    usd: float
    open: bool = True


@dataclass
class Ledger:
    """Running totals of one run (or of one Judge's life) and the budget check."""

    prices: Prices
    budget: Budget | None = None
    totals: _Counters = field(default_factory=_Counters)
    _reserved_tokens: int = 0
    _reserved_usd: float = 0.0
    # how much more than the plain prices a request may cost: the largest `_over_plain_prices` of a settled
    # request; a USD bound is priced times this, so it holds with prices too low and with cache writes
    _billed_over_priced: float = 1.0
    exhausted: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._in_run = False  # within `run`
        if self.budget is not None:
            self._check_priced(self.budget)

    def _check_priced(self, budget: Budget) -> None:
        if budget.unit == "usd" and not self.prices.known:
            raise ValueError(
                f"budget {budget} is in USD but the price of model {self.prices.model!r} is unknown; "
                "give its prices, JudgeConfig.price_input and price_output (--judge-price-input, --judge-price-output: "
                "USD per million tokens), or a budget in tokens (e.g. 200000tokens)"
            )

    @contextmanager
    def run(self, budget: Budget | None) -> Iterator[Callable[[], dict]]:
        """One run on a ledger that may live longer (a judge reused from cell to cell of a notebook):
        within the block, the run's own spending also stays within `budget` (the ledger's own budget,
        if any, still holds), and the block gets `usage()`, the summary of the run's calls alone."""
        with self._lock:
            if self._in_run:  # both would share one budget and one count, and the first to end would
                # leave the other's budget as the judge's own for good
                raise RuntimeError("this judge is already in a labelling run (label_latents), whose budget and usage "
                                   "are its own; give a concurrent run a judge of its own (make_judge again; the "
                                   "two may share a cache file) or await one run after the other")
            self._in_run = True
        try:
            with self._one_run(budget) as usage:
                yield usage
        finally:
            self._in_run = False

    @contextmanager
    def _one_run(self, budget: Budget | None) -> Iterator[Callable[[], dict]]:
        before = dataclasses.replace(self.totals)
        own, own_exhausted = self.budget, self.exhausted
        if budget is not None:
            self._check_priced(budget)
            spent = self.spent_tokens if budget.unit == "tokens" else self.totals.cost_usd
            if own is not None and own.unit != budget.unit:
                raise ValueError(f"the run's budget {budget} and the judge's own budget {own} are in different "
                                 f"units; give both in USD or both in tokens")
            if own is None or spent + budget.amount < own.amount:
                self.budget, self.exhausted = Budget(spent + budget.amount, budget.unit), False
        shown = budget or own
        try:
            yield lambda: {**self.summary(since=before), "budget": str(shown) if shown else None}
        finally:
            if self.budget is not own:  # the run's budget ran out, not the judge's
                self.budget, self.exhausted = own, own_exhausted

    @property
    def spent_tokens(self) -> int:
        return self.totals.prompt_tokens + self.totals.completion_tokens

    @property
    def reserved(self) -> bool:
        """Whether requests in flight still hold reservations (they may settle below them)."""
        with self._lock:
            return self._reserved_tokens > 0 or self._reserved_usd > 0

    def fits(self, est_prompt_tokens: int, max_output_tokens: int) -> bool:
        """Whether this request would fit once every request in flight settled at nothing."""
        if self.budget is None:
            return True
        with self._lock:
            if self.budget.unit == "tokens":
                return self.spent_tokens + int(est_prompt_tokens) + int(max_output_tokens) <= self.budget.amount
            usd = self._usd_bound(est_prompt_tokens, max_output_tokens)
            return self.totals.cost_usd + usd <= self.budget.amount + 1e-12

    def reserve(self, est_prompt_tokens: int, max_output_tokens: int) -> Reservation:
        """Reserve a request's upper bound, or raise BudgetExceeded (and mark the budget exhausted)."""
        r = self.try_reserve(est_prompt_tokens, max_output_tokens)
        if r is None:
            with self._lock:
                self.exhausted = True
            raise BudgetExceeded(
                f"budget {self.budget} reached (spent {self.spent_tokens:,} tokens"
                + (f", ${self.totals.cost_usd:.4f}" if self.cost_is_known() else "")
                + ")"
            )
        return r

    def try_reserve(self, est_prompt_tokens: int, max_output_tokens: int) -> Reservation | None:
        """Reserve a request's upper bound if it fits beside what is spent and reserved, else None."""
        tokens = int(est_prompt_tokens) + int(max_output_tokens)
        with self._lock:
            usd = self._usd_bound(est_prompt_tokens, max_output_tokens)
            if self.budget is not None:
                if self.budget.unit == "tokens":
                    over = self.spent_tokens + self._reserved_tokens + tokens > self.budget.amount
                else:
                    over = self.totals.cost_usd + self._reserved_usd + usd > self.budget.amount + 1e-12
                if over:
                    return None
            self._reserved_tokens += tokens
            self._reserved_usd += usd
        return Reservation(tokens, usd)

    def _usd_bound(self, est_prompt_tokens: int, max_output_tokens: int) -> float:
        return (self.prices.cost(est_prompt_tokens, max_output_tokens) or 0.0) * self._billed_over_priced

    def release(self, r: Reservation) -> None:
        with self._lock:
            if r.open:
                r.open = False
                self._reserved_tokens -= r.tokens
                self._reserved_usd -= r.usd

    def settle(self, r: Reservation, prompt_tokens: int, completion_tokens: int,
               cached_prompt_tokens: int = 0, reported_cost: float | None = None,
               cache_write_5m_tokens: int = 0, cache_write_1h_tokens: int = 0) -> float | None:
        """Turn a reservation into real usage; returns the cost: the one the provider reported (what it
        billed), else priced by `prices` (None if the price is unknown)."""
        priced = self.prices.cost(prompt_tokens, completion_tokens, cached_prompt_tokens,
                                  cache_write_5m_tokens, cache_write_1h_tokens)
        cost = priced if reported_cost is None else reported_cost
        over = _over_plain_prices(cost, self.prices.cost(prompt_tokens, completion_tokens),
                                  cache_write_5m_tokens, cache_write_1h_tokens)
        with self._lock:
            self._billed_over_priced = max(self._billed_over_priced, over)
            if r.open:
                r.open = False
                self._reserved_tokens -= r.tokens
                self._reserved_usd -= r.usd
            t = self.totals
            t.paid_calls += 1
            t.prompt_tokens += int(prompt_tokens)
            t.cached_prompt_tokens += _part(cached_prompt_tokens, int(prompt_tokens))[0]  # as `Prices.cost` counts them
            t.completion_tokens += int(completion_tokens)
            t.reported_cost_calls += reported_cost is not None
            if cost is None:
                t.cost_known = False
            else:
                t.cost_usd += cost
        return cost

    def cost_is_known(self, t: _Counters | None = None) -> bool:
        """Whether `t` (default: the totals) has a cost to show: every paid call priced, or its cost reported."""
        t = self.totals if t is None else t
        return t.cost_known and (self.prices.known or t.reported_cost_calls > 0)

    def _cost_source(self, t: _Counters) -> str:
        """Where the cost came from: the provider's own figure, our prices, or both (some replies carried one)."""
        if t.paid_calls and t.reported_cost_calls == t.paid_calls:
            return "as the provider reported it"
        if t.reported_cost_calls:
            return (f"as the provider reported it for {t.reported_cost_calls:,} of {t.paid_calls:,} requests, "
                    f"estimated for the rest at {self.prices.describe()}")
        return f"estimated at {self.prices.describe()}"

    def count(self, *, cached: int = 0, retries: int = 0, failed: int = 0) -> None:
        with self._lock:
            self.totals.cached_calls += cached
            self.totals.retries += retries
            self.totals.failed_calls += failed

    def summary(self, since: _Counters | None = None) -> dict:
        """Totals (of the calls after `since`, a copy of `totals` taken earlier, when given)."""
        t = self.totals
        if since is not None:
            t = _Counters(*(getattr(t, f.name) - getattr(since, f.name) for f in dataclasses.fields(_Counters)
                            if f.name != "cost_known"), cost_known=t.cost_known)
        known = self.cost_is_known(t)
        return {
            "paid_calls": t.paid_calls,
            "cached_calls": t.cached_calls,
            "retries": t.retries,
            "failed_calls": t.failed_calls,
            "prompt_tokens": t.prompt_tokens,
            "cached_prompt_tokens": t.cached_prompt_tokens,
            "completion_tokens": t.completion_tokens,
            "cost_usd": round(t.cost_usd, 6) if known else None,
            "cost_source": self._cost_source(t) if known else None,
            "budget": str(self.budget) if self.budget else None,
            "budget_exhausted": self.exhausted,
        }
