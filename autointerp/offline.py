"""Offline explainer and scorers: labels and scores from token statistics, no LLM.

Explainer. For one latent, count the tokens at its activating positions (the marked positions of
its top and quantile examples) and the tokens in a small window around them, and compare with the
background frequency of tokens in random contexts where it does not fire. A token's weight is its
contribution to the KL divergence of the activating distribution from the background,
`p_act(t) * log(p_act(t) / p_bg(t))` (additively smoothed background), so tokens both frequent
at activations and rare elsewhere come first. The label lists the top activating tokens and,
when they explain little of the activations (a latent that fires on many different tokens in one
kind of context), the top context tokens:

    ocean / wave / ship          ('ocean' ... are over-represented where the latent fires)
    fish / sea (near: ocean)     (the context adds what the firing tokens share)

Scorers. Detection predicts that a context activates the latent when it contains one of the
label's tokens; fuzzing predicts that marks are correct when most marked tokens are label tokens.
They read the explanation's structured `detail` when there is one, and the label's words
otherwise, so they can score any label (weakly, for free-text labels).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .examples import Example, active_positions

__all__ = ["OFFLINE_MODEL", "OFFLINE_PROMPT_VERSION", "OfflineExplanation", "explain_offline",
           "label_tokens", "predict_detection", "predict_fuzz", "norm_token"]

OFFLINE_MODEL = "offline/token-stats"
OFFLINE_PROMPT_VERSION = "offline-v1"


def readable_token(t: str) -> bool:
    """A token that reads as text on its own: not part of a character cut in two (one byte of a CJK
    letter or an emoji), which tells a judge or a label nothing. Such a token decodes alone to U+FFFD
    and is shown as U+FFFD and its escaped bytes (`features.tokentext.label_of_bytes`); a piece of a
    window cut inside a character ends in U+FFFD. Text that only spells an escape ("\\x9f" in code)
    reads as itself."""
    return "\ufffd" not in t


def norm_token(t: str) -> str:
    """Case- and space-insensitive form of a token ("Ġocean", " Ocean" -> "ocean")."""
    t = t.replace("\u0120", " ").replace("\u2581", " ")
    return t.strip().lower()


@dataclass(frozen=True)
class OfflineExplanation:
    label: str
    tokens: tuple[str, ...]  # over-represented tokens at activating positions (best first)
    context: tuple[str, ...]  # over-represented tokens near them
    weights: dict[str, float]  # token -> weight (activating tokens)
    coverage: float  # fraction of activating positions whose token is in `tokens`
    token_set: tuple[str, ...] = ()  # every over-represented activating token (what the scorers test)


def _weights(fg: Counter, n_fg: int, bg: Counter, n_bg: int, vocab: int, alpha: float = 0.5) -> dict[str, float]:
    out = {}
    for t, c in fg.items():
        p = c / n_fg
        q = (bg.get(t, 0) + alpha) / (n_bg + alpha * vocab)
        w = p * math.log(p / q)
        if w > 0:
            out[t] = w
    return out


@dataclass
class _TokenCounts:
    """Normalised-token counts: at activating positions (`act`), near them (`ctx`), in the
    background (`bg`: the background contexts and the non-activating positions of the examples);
    `*_docs` count examples, `n_*` positions."""

    act: Counter[str] = field(default_factory=Counter)
    act_docs: Counter[str] = field(default_factory=Counter)
    ctx: Counter[str] = field(default_factory=Counter)
    ctx_docs: Counter[str] = field(default_factory=Counter)
    bg: Counter[str] = field(default_factory=Counter)
    n_act: int = 0
    n_ctx: int = 0


def _count_tokens(examples: Sequence[Example], background: Sequence[Example], mark_threshold: float,
                  context_window: int) -> _TokenCounts:
    c = _TokenCounts()
    for ex in examples:
        pos = active_positions(ex, mark_threshold)
        marked = set(pos)
        near: set[int] = set()
        for p in pos:
            near.update(range(max(0, p - context_window), min(len(ex.tokens), p + context_window + 1)))
        near -= marked
        seen_a, seen_c = set(), set()
        for i, tok in enumerate(ex.tokens):
            t = norm_token(tok)
            if not t:
                continue
            if i in marked:
                c.act[t] += 1
                c.n_act += 1
                seen_a.add(t)
            else:
                if i in near:
                    c.ctx[t] += 1
                    c.n_ctx += 1
                    seen_c.add(t)
                if ex.acts[i] <= 0:
                    c.bg[t] += 1
        c.act_docs.update(seen_a)
        c.ctx_docs.update(seen_c)
    for ex in background:
        c.bg.update(t for t in map(norm_token, ex.tokens) if t)
    return c


def _label_text(tokens: tuple[str, ...], context: tuple[str, ...], max_label_chars: int) -> str:
    label = " / ".join(tokens) if tokens else "(various)"
    if context:
        label += " (near: " + " / ".join(context) + ")"
    if len(label) > max_label_chars:
        label = label[: max_label_chars - 1].rstrip() + "\u2026"
    return label


def explain_offline(
    examples: Sequence[Example],
    background: Sequence[Example],
    *,
    mark_threshold: float = 0.3,
    context_window: int = 4,
    max_tokens: int = 3,
    max_context: int = 2,
    min_examples: int = 2,
    max_label_chars: int = 80,
    max_token_set: int = 30,
    min_lift: float = 4.0,
) -> OfflineExplanation:
    """Label from token statistics (see the module docstring). `background` should be contexts
    where the latent does not fire; non-activating positions of `examples` are added to it."""
    c = _count_tokens(examples, background, mark_threshold, context_window)
    act, n_act, ctx, n_ctx, bg = c.act, c.n_act, c.ctx, c.n_ctx, c.bg
    n_bg = sum(bg.values())
    vocab = len(set(bg) | set(act) | set(ctx)) or 1
    need = min(min_examples, max(1, len(examples)))
    if n_act == 0:
        return OfflineExplanation("(no activating tokens)", (), (), {}, 0.0)
    # the explanation's full token set: over-represented at activations, best first (a latent for
    # "place words" fires on many words, each seen in few examples; the label shows the top ones)
    w_all = _weights(act, n_act, bg, n_bg, vocab)
    lift = {t: math.exp(w / (act[t] / n_act)) for t, w in w_all.items()}  # p_act / p_bg
    token_set = tuple(sorted((t for t in w_all if lift[t] >= min_lift), key=lambda t: (-w_all[t], t))[:max_token_set])

    w_act = {t: w for t, w in _weights(act, n_act, bg, n_bg, vocab).items() if c.act_docs[t] >= need}
    tokens = tuple(sorted(w_act, key=lambda t: (-w_act[t], t))[:max_tokens])
    # drop tail tokens that add little (less than a fifth of the best weight)
    if tokens:
        best = w_act[tokens[0]]
        tokens = tuple(t for t in tokens if w_act[t] >= 0.2 * best)
    coverage = sum(act[t] for t in tokens) / n_act
    context: tuple[str, ...] = ()
    if n_ctx and coverage < 0.5:
        w_ctx = {t: w for t, w in _weights(ctx, n_ctx, bg, n_bg, vocab).items()
                 if c.ctx_docs[t] >= need and t not in tokens}
        context = tuple(sorted(w_ctx, key=lambda t: (-w_ctx[t], t))[:max_context])
    if not tokens and not context:
        # nothing stands out from the background: name the commonest activating token
        tokens = (act.most_common(1)[0][0],)
        w_act = {tokens[0]: 0.0}
    return OfflineExplanation(_label_text(tokens, context, max_label_chars), tokens, context, {t: round(w_act.get(t, 0.0), 6) for t in tokens},
                              round(coverage, 6), token_set or tokens)


_LABEL_SPLIT = re.compile(r"\s*/\s*|\s*,\s*|\s+")


def label_tokens(label: str, detail: dict[str, Any] | None = None) -> set[str]:
    """The tokens a label stands for: the offline explanation's token set (else its tokens, else
    its context tokens) when `detail` has them, else the label's words."""
    if detail:
        toks = (list(detail.get("token_set") or ()) or list(detail.get("tokens") or ())
                or list(detail.get("context") or ()))
        if toks:
            return {norm_token(t) for t in toks}
    text = re.sub(r"\(near:.*?\)", " ", label)
    return {w for w in (norm_token(x) for x in _LABEL_SPLIT.split(text)) if w}


def predict_detection(words: set[str], contexts: Iterable[Example]) -> list[bool]:
    return [any(norm_token(t) in words for t in ex.tokens) for ex in contexts]


def predict_fuzz(words: set[str], items: Iterable[tuple[Example, Sequence[int]]]) -> list[bool]:
    out = []
    for ex, marked in items:
        hits = sum(1 for i in marked if norm_token(ex.tokens[i]) in words)
        out.append(bool(marked) and hits * 2 > len(marked))
    return out
