"""Token windows as the pages draw them: one span per piece of visible text.

A token whose piece is empty (the first bytes of a character that byte-level BPE or byte fallback
split over several tokens: CJK, emoji, an NFD accent's combining mark) is drawn inside the span of
the token that completes the character (`features.tokentext.character_spans`, the rule the CLI's
marks follow): that span takes the strongest shade of its tokens, the underline when one of them is
the example's centre, and all their activations in its title. A span of its own per empty token
(a sliver) put gaps between CJK characters, cut an accent off its letter and broke the joining of
Arabic letters: the text no longer read as the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from features.tokentext import character_spans

__all__ = ["TokenSpan", "token_spans", "fire_spans"]


@dataclass(frozen=True)
class TokenSpan:
    text: str  # the group's text as drawn (`visible`): "" only in a window with no text at all
    shade: int  # 0..10
    centre: bool
    title: str


def token_spans(tokens: Sequence[str], acts: Sequence[float], shade: Sequence[int], centre: int | None,
                num: Callable[[float], str]) -> list[TokenSpan]:
    """An example's spans: a title of one activation per token of the span ("0 · 1.73" for a
    character in two tokens)."""
    shade = list(shade) or [0] * len(tokens)
    return [TokenSpan(text, max(shade[i] for i in g), centre in g, " · ".join(num(acts[i]) for i in g))
            for g, text in character_spans(tokens)]


def fire_spans(tokens: Sequence[str], token_shade: Sequence[int], per_token: Sequence[Sequence],
               num: Callable[[float], str]) -> list[TokenSpan]:
    """The fire page's token row: a span's title lists the features firing on any of its tokens,
    each at its strongest, strongest first ("#12 1.73 label" lines, or "no feature fires")."""
    spans = []
    for g, text in character_spans(tokens):
        best = {}
        for i in g:
            for a in per_token[i]:
                if a.latent not in best or a.act > best[a.latent].act:
                    best[a.latent] = a
        feats = sorted(best.values(), key=lambda a: -a.act)
        shade = max(token_shade[i] for i in g) if token_shade else (4 if feats else 0)
        title = "\n".join(f"#{a.latent} {num(a.act)}" + (f" {a.label}" if a.label else "") for a in feats)
        spans.append(TokenSpan(text, shade, False, title or "no feature fires"))
    return spans
