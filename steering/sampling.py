"""Choosing the next token of each row of a batch, each row with its own settings and seed.

Shape key: B rows, V vocabulary, L top alternatives reported.

Every row carries `SamplingParams` (temperature, top-k, top-p, penalties, logit bias, how many
log-probabilities to report) and its own random stream (`random.Random(seed)`): a row's tokens
depend only on its logits and its seed, never on which other rows share the batch, so a request
gives the same text alone or batched, streamed or not (up to floating-point differences in the
model's forward between batch shapes).

Sampling is inverse-CDF: one uniform number u per row and step from the row's stream, the token is
the first whose cumulative probability exceeds u (tokens of probability 0 are never chosen).
Temperature 0 is greedy (the most likely token; the stream is not advanced).

Log-probabilities are those of the model's next-token distribution as the row sees it (steering
included) at temperature 1, before penalties, logit bias, top-k and top-p.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from steering.spec import SteeringError

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How one row chooses its tokens."""

    max_new_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None  # None: a fresh random seed
    frequency_penalty: float = 0.0  # subtracted per earlier occurrence of the token in the output
    presence_penalty: float = 0.0  # subtracted once if the token occurred in the output
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None: none; n: the chosen token's and the n most likely
    stop: tuple[str, ...] = ()  # stop strings (not part of the returned text)
    stop_token_ids: tuple[int, ...] = ()  # e.g. end-of-text (not part of the returned text)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SteeringError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature < math.inf):
            raise SteeringError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise SteeringError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            raise SteeringError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise SteeringError(f"{name} must be a finite number, got {v!r}")
        if self.logprobs is not None and not (0 <= self.logprobs <= MAX_LOGPROBS):
            raise SteeringError(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {self.logprobs!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty)


class Choice(NamedTuple):
    """The token chosen for one row, with its log-probability and the top alternatives."""

    token: int
    logprob: float | None
    top: list[tuple[int, float]] | None


class RowRandom:
    """A row's random stream: `seed`, or a fresh one (reported back, so a run can be repeated)."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**63)
        self.rng = random.Random(self.seed)

    def uniform(self) -> float:
        return self.rng.random()


def choose(logits_BV: Tensor, params: Sequence[SamplingParams], streams: Sequence[RowRandom],
           counts_BV: Tensor | None = None) -> list[Choice]:
    """The next token of every row (see the module docstring). `counts_BV`: how often each token
    occurred in each row's output so far (needed only when a row uses penalties)."""
    B, V = logits_BV.shape
    logits = logits_BV.float()
    want_lp = [p.logprobs is not None for p in params]
    logp_BV = torch.log_softmax(logits, dim=-1) if any(want_lp) else None
    adj = logits
    if any(p.penalised for p in params) and counts_BV is not None:
        freq = logits.new_tensor([p.frequency_penalty for p in params]).unsqueeze(1)
        pres = logits.new_tensor([p.presence_penalty for p in params]).unsqueeze(1)
        c = counts_BV.to(logits.dtype)
        adj = adj - freq * c - pres * (c > 0).to(logits.dtype)
    if any(p.logit_bias for p in params):
        bias = torch.zeros_like(adj)
        for b, p in enumerate(params):
            for tok, v in p.logit_bias:
                if 0 <= tok < V:
                    bias[b, tok] = v
        adj = adj + bias
    greedy = [p.greedy for p in params]
    tokens = [0] * B
    if any(greedy):
        arg = adj.argmax(-1).tolist()
        for b in range(B):
            if greedy[b]:
                tokens[b] = arg[b]
    sampled = [b for b in range(B) if not greedy[b]]
    if sampled:
        rows = torch.tensor(sampled, device=adj.device)
        sub = adj.index_select(0, rows) if len(sampled) < B else adj
        temp = sub.new_tensor([params[b].temperature for b in sampled]).unsqueeze(1)
        sub = sub / temp
        if any(params[b].top_k is not None or params[b].top_p < 1 for b in sampled):
            sub = _top_k_top_p(sub, [params[b].top_k for b in sampled], [params[b].top_p for b in sampled])
        probs = torch.softmax(sub, dim=-1)
        cdf = probs.cumsum(-1)
        u = cdf.new_tensor([streams[b].uniform() for b in sampled]).unsqueeze(1) * cdf[:, -1:]
        idx = torch.searchsorted(cdf, u, right=True).squeeze(1)
        # u * total can round up to the total: take the last token with any probability instead
        last_nz = (probs > 0).to(torch.int64).cumsum(-1).argmax(-1)
        idx = torch.minimum(idx, last_nz).tolist()
        for j, b in enumerate(sampled):
            tokens[b] = idx[j]
    out = []
    for b in range(B):
        if logp_BV is None or not want_lp[b]:
            out.append(Choice(tokens[b], None, None))
            continue
        n = params[b].logprobs or 0
        top = None
        if n:
            v, i = logp_BV[b].topk(min(n, V))
            top = list(zip(i.tolist(), v.tolist()))
        out.append(Choice(tokens[b], float(logp_BV[b, tokens[b]]), top))
    return out


def _top_k_top_p(logits_BV: Tensor, ks: Sequence[int | None], ps: Sequence[float]) -> Tensor:
    """Logits with everything outside each row's top-k / nucleus set to -inf."""
    sorted_BV, order_BV = logits_BV.sort(dim=-1, descending=True)
    V = logits_BV.shape[-1]
    keep_BV = torch.ones_like(sorted_BV, dtype=torch.bool)
    ranks = torch.arange(V, device=logits_BV.device)
    k_B = logits_BV.new_tensor([float(k if k is not None else V) for k in ks]).unsqueeze(1)
    keep_BV &= ranks.unsqueeze(0) < k_B
    p_B = logits_BV.new_tensor(list(ps)).unsqueeze(1)
    probs = torch.softmax(sorted_BV.masked_fill(~keep_BV, -math.inf), dim=-1)
    before = probs.cumsum(-1) - probs  # mass of the tokens ranked above
    keep_BV &= before < p_B  # the most likely token always stays
    mask_BV = torch.zeros_like(keep_BV).scatter(1, order_BV, keep_BV)
    return logits_BV.masked_fill(~mask_BV, -math.inf)
