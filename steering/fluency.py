"""Fluency of generated text: one definition for every sweep (CLI, web app, demo), for any model.

    scores = fluency_of_generation(model, generation)     # one FluencyScore per row
    scores = fluency_of_texts(model, prompts, texts)      # the same for texts you already have
    scores[0].fluency                                     # in [0, 1]

A continuation's fluency is the product of three factors, each in [0, 1]:

- surprise (needs the *unsteered* model): excess = mean over the continuation's tokens of
  (negative log-likelihood - entropy of the model's prediction), in nats per token. For text the
  model samples itself the expected log-loss equals the entropy, so unsteered text has excess
  about 0 whatever the model and the domain; text the model finds unlikely (garbled, off the
  rails) drifts above. How far an unsteered sample strays by chance depends on the model and the
  length: the standard error of the mean is se = sqrt(sum of the predictions' variances of
  log-probability) / tokens, so excess up to SURPRISE_ALLOWANCE_SE standard errors is free:
  factor = exp(-max(0, excess - SURPRISE_ALLOWANCE_SE * se)).
- repetition: models give repetition a *low* perplexity, so it is penalised on its own:
  rep = 1 - distinct bigrams / bigrams (seq-rep-2, Welleck et al. 2019) over units, where a unit is
  a run of letters or digits, a run of one repeated other visible character, or one CJK/kana
  character (scripts without spaces); a run that is one string repeated ("oceanoceanocean") counts
  once per repeat. factor = 1 up to REPEAT_OK, falling linearly to 0 at REPEAT_BAD ("the the the
  the": rep 0.67, factor 0).
- characters: the share of visible characters that are letters or digits (any script);
  factor = min(1, share / WORD_CHARS_OK). Punctuation and underscore runs ("(______") score 0;
  prose (about 0.95) and code (0.7-0.8) score 1.

A continuation with no visible character scores 0. The constants were set on the toy model's and
on prose and code samples (tests/test_steering_fluency.py); `FluencyScore` keeps every factor so a
low score says why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from saes.bos import prompt_tokens
from steering.spec import SteeringError

if TYPE_CHECKING:
    from steering.generation import Generation
    from steering.inputs import Model

SURPRISE_ALLOWANCE_SE = 2.0  # excess surprise within this many standard errors counts as sampling noise
REPEAT_OK = 0.3  # seq-rep-2 at or below this is ordinary text
REPEAT_BAD = 0.6  # seq-rep-2 at or above this is degenerate
WORD_CHARS_OK = 0.5  # share of letters/digits among visible characters that counts as text

# scripts written without spaces between words (CJK ideographs, kana): each character is a unit
_NO_SPACES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# such a character, a run of other letters/digits, or a run of one repeated other visible character
# ("-----" in code is one unit)
_UNITS = re.compile(rf"[{_NO_SPACES}]|[^\W_{_NO_SPACES}]+|([^\w\s]|_)\1*")
_PERIODIC = re.compile(r"(.+?)\1{2,}")  # a run that is one shorter string three or more times


@dataclass(frozen=True)
class FluencyScore:
    """One continuation's fluency and the three factors it is the product of."""

    fluency: float
    surprise: float  # exp(-max(0, excess - SURPRISE_ALLOWANCE_SE * se))
    repetition: float  # from seq-rep-2
    characters: float  # from the share of letters/digits
    excess_nats: float | None  # mean (nll - entropy) per token under the unsteered model; None: no tokens
    excess_se: float | None  # its standard error for text the model samples itself
    nll_sum: float = 0.0  # summed negative log-likelihood of the scored tokens (for perplexity)
    n_tokens: int = 0


def units(text: str) -> list[str]:
    """The units repetition is counted over: runs of letters/digits, runs of one other character,
    single CJK/kana characters. A run that repeats one string ("oceanoceanocean", "hahaha": a
    token generated over and over without spaces) counts as that string, once per repeat."""
    out: list[str] = []
    for m in _UNITS.finditer(text.lower()):
        unit = m.group(0)
        rep = _PERIODIC.fullmatch(unit) if unit[0].isalnum() else None
        out.extend([rep.group(1)] * (len(unit) // len(rep.group(1))) if rep else [unit])
    return out


def repeated_bigram_share(text: str) -> float:
    """seq-rep-2: 1 - distinct unit bigrams / unit bigrams (0 with fewer than two bigrams)."""
    u = units(text)
    bigrams = list(zip(u, u[1:]))
    if len(bigrams) < 2:
        return 0.0
    return 1.0 - len(set(bigrams)) / len(bigrams)


def word_char_share(text: str) -> float:
    """Share of visible (non-space) characters that are letters or digits (0 for no visible character)."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return 0.0
    return sum(c.isalnum() for c in visible) / len(visible)


def repetition_factor(text: str) -> float:
    rep = repeated_bigram_share(text)
    return min(1.0, max(0.0, (REPEAT_BAD - rep) / (REPEAT_BAD - REPEAT_OK)))


def characters_factor(text: str) -> float:
    return min(1.0, word_char_share(text) / WORD_CHARS_OK)


def surprise_factor(excess_nats: float | None, excess_se: float = 0.0) -> float:
    if excess_nats is None:
        return 0.0
    return math.exp(-max(0.0, excess_nats - SURPRISE_ALLOWANCE_SE * excess_se))


def _combine(text: str, excess: float | None, se: float | None, nll_sum: float, n: int) -> FluencyScore:
    s = surprise_factor(excess, se or 0.0)
    if not text.strip():
        return FluencyScore(0.0, s, 0.0, 0.0, excess, se, nll_sum, n)
    r, c = repetition_factor(text), characters_factor(text)
    return FluencyScore(s * r * c, s, r, c, excess, se, nll_sum, n)


@torch.no_grad()
def _token_stats(model: Model, tokens_BT: torch.Tensor, starts: Sequence[int],
                 mask_BT: torch.Tensor | None = None) -> list[tuple[float, float, float, int]]:
    """Per row: (summed nll, summed entropy, summed variance of log-probability, scored tokens) of
    the tokens from `starts[b]` on, up to and including the first end-of-text token, under `model`
    as it is now. `mask_BT`: 0 at left pads. Given tokens, a TransformerBridge reads no
    `padding_side`: without the mask it attended a padded row's pads and shifted its positions."""
    if mask_BT is None:
        logits_BTV = model(tokens_BT, padding_side="left")
    else:
        logits_BTV = model(tokens_BT, attention_mask=mask_BT)
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    out = []
    for b, start in enumerate(starts):
        if start >= tokens_BT.shape[1] or start < 1:
            out.append((0.0, 0.0, 0.0, 0))
            continue
        target_T = tokens_BT[b, start:]
        keep_T = torch.ones_like(target_T, dtype=torch.bool)
        if eos is not None:
            is_eos = target_T == eos
            keep_T &= ~((is_eos.cumsum(0) - is_eos.long()) > 0)  # strictly after the first EOS
        nll_T, ent_T, var_T = _position_stats(logits_BTV[b, start - 1 : -1], target_T)
        out.append((float(nll_T[keep_T].sum()), float(ent_T[keep_T].sum()), float(var_T[keep_T].sum()),
                    int(keep_T.sum())))
    return out


# positions whose float32 log-softmax is taken at once (~16 MB): a row of a long generation at Gemma's
# 262k vocabulary is ~0.5 GB per float32 [positions, vocab] tensor, and the formulas make four of them
_STATS_CHUNK_ELEMS = 1 << 22


def _position_stats(logits_TV: torch.Tensor, target_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per position: negative log-likelihood of its target, entropy and variance of log-probability
    (varentropy) of its prediction, a few positions at a time."""
    T, V = logits_TV.shape
    step = max(1, _STATS_CHUNK_ELEMS // V)
    nll_T, ent_T, var_T = (torch.empty(T, device=logits_TV.device) for _ in range(3))
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        logp_tV = torch.log_softmax(logits_TV[t0:t1].float(), dim=-1)
        nll_T[t0:t1] = -logp_tV.gather(-1, target_T[t0:t1].unsqueeze(-1)).squeeze(-1)
        plogp_tV = logp_tV.exp() * logp_tV
        ent_t = -plogp_tV.sum(-1)
        ent_T[t0:t1] = ent_t
        var_T[t0:t1] = ((plogp_tV * logp_tV).sum(-1) - ent_t * ent_t).clamp(min=0)
    return nll_T, ent_T, var_T


def _from_stats(texts: Sequence[str], stats: Sequence[tuple[float, float, float, int]]) -> list[FluencyScore]:
    out = []
    for text, (nll, ent, var, n) in zip(texts, stats):
        excess = (nll - ent) / n if n else None
        se = math.sqrt(var) / n if n else None
        out.append(_combine(text, excess, se, nll, n))
    return out


def fluency_of_generation(model: Model, generation: Generation) -> list[FluencyScore]:
    """Fluency of each row of a `steering.generation.Generation`, scored by `model` as it is now:
    call it outside `steer` so the surprise is the unsteered model's."""
    tokens_BT = generation.tokens
    P = int(generation.prompt_len)
    if tokens_BT.shape[1] <= P:
        raise SteeringError("the generation has no new tokens to score")
    lengths = generation.prompt_lengths
    if lengths is None or min(lengths) == P:  # no row padded
        return _from_stats(generation.texts, _token_stats(model, tokens_BT, [P] * int(tokens_BT.shape[0])))
    from steering.generation import positions_follow_mask

    if not positions_follow_mask(model):  # it would number a padded row's positions from its first pad: rows alone
        stats = [s for b, n in enumerate(lengths) for s in _token_stats(model, tokens_BT[b:b + 1, P - n:], [n])]
        return _from_stats(generation.texts, stats)
    mask_BT = torch.ones(tokens_BT.shape, dtype=torch.long, device=tokens_BT.device)
    for b, n in enumerate(lengths):
        mask_BT[b, : P - n] = 0
    return _from_stats(generation.texts, _token_stats(model, tokens_BT, [P] * int(tokens_BT.shape[0]), mask_BT))


def fluency_of_texts(model: Model, prompts: Sequence[str], texts: Sequence[str],
                     reply_ids: Sequence[Sequence[int]] | None = None) -> list[FluencyScore]:
    """Fluency of continuations `texts` of `prompts` (one prompt per text), scored by `model`
    (the unsteered model). A text is the continuation as `generate` gives it: with its own leading
    space or line break. Its tokens are `reply_ids` where given (the ids generated), else those of
    prompt + text after the prompt's (`reply_tokens`)."""
    if len(prompts) != len(texts) or (reply_ids is not None and len(reply_ids) != len(texts)):
        given = "" if reply_ids is None else f" and {len(reply_ids)} reply_ids"
        raise SteeringError(f"{len(prompts)} prompts for {len(texts)} texts{given}; give one prompt per text")
    out = []
    for k, (prompt, text) in enumerate(zip(prompts, texts)):
        if not text.strip():
            out.append(_combine(text, None, None, 0.0, 0))
            continue
        tokens, start = reply_tokens(model, prompt, text, None if reply_ids is None else reply_ids[k])
        stats = _token_stats(model, tokens, [start])
        out.extend(_from_stats([text], stats))
    return out


def reply_tokens(model: Model, prompt: str, text: str, ids: Sequence[int] | None = None) -> tuple[torch.Tensor, int]:
    """([1, S] tokens, where the reply starts): the prompt's tokens (one BOS: `saes.bos`), then the
    reply's: `ids` where given, else the tokens of prompt + text after the prompt's. The reply is
    never tokenized on its own: a SentencePiece tokenizer would start it with its dummy-prefix "▁",
    a token the model never generated. Where the joined text's tokens merge across the boundary
    (prompt "a " + reply "b" is "▁a", "▁b"), the reply starts at the first token that differs from
    the prompt's; on a model that prepends no BOS, where that is the first token (prompt "h" + reply
    "e sea" is "he", " sea"), from the second: the first token has nothing before it to be scored on."""
    head = prompt_tokens(model, prompt) if prompt else model.to_tokens("")
    if not prompt and head.shape[1] == 0:
        raise SteeringError("the model adds no BOS token and the prompt is empty: nothing to condition on")
    if ids is not None:
        tail = torch.as_tensor([list(map(int, ids))], dtype=head.dtype, device=head.device)
        return torch.cat([head, tail], dim=1), int(head.shape[1])
    whole = prompt_tokens(model, prompt + text)
    h, w = head[0].tolist(), whole[0].tolist()
    same = next((i for i, (a, b) in enumerate(zip(h, w)) if a != b), min(len(h), len(w)))
    return whole, max(same, 1)


def pooled_perplexity(scores: Sequence[FluencyScore]) -> float | None:
    """exp(summed nll / scored tokens) over all rows (None when no token was scored)."""
    n = sum(s.n_tokens for s in scores)
    if not n:
        return None
    return math.exp(sum(s.nll_sum for s in scores) / n)
