"""Turning a row's generated tokens into text piece by piece, with stop strings.

    text = TextAssembler(tokenizer, stop=["\\n\\n"], context_ids=prompt_ids)
    piece, stopped = text.push(token_id)     # the text that is now certain, and whether a stop string ended it
    rest = text.finish()                      # at the end: what was held back
    text.offsets(final=True)                  # with offsets=True: where each token's text starts

The whole text is always the tokenizer's decoding of all tokens so far, read on from the prompt's
last tokens (`context_ids`): decode(context + new) less decode(context), as
`steering.generation.continuation_text` cuts a continuation, so the text brings the space or line
break before its first word and prompt + text is the decoding of both (after a special token, such
as a chat template's assistant marker, the text starts afresh) (multi-token characters and
tokenizers that join words with spaces come out right); a piece is emitted only once it
cannot change: trailing whitespace and an incomplete character (U+FFFD at the end) are held back
(a later token may merge with them, e.g. a space before punctuation that decoding removes), and
so is an ending that could be the start of a stop string. Whatever a caller does with the pieces,
their concatenation is the final text, streamed or not. A stop string ends the text before it
(the stop string itself is not returned).

Token offsets (offsets=True; completions' logprob `text_offset`): token i starts where the text
decoded before it (context + ids[:i]) stops agreeing with the final text (the common prefix of the
two, never before the previous token's start). So a token's span text[offset_i:offset_(i+1)] is the
text it adds where it is whole, a special token that decoding drops has an empty span, and a
token that only starts or continues a character (a byte token) starts where that character
starts: the character belongs to the span of the token that completes it. An offset is certain
only once the emitted text disagrees with the earlier decoding or covers all of it; `offsets()`
returns those that have become certain, in token order (all of them with final=True).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

_INCOMPLETE = "\ufffd"


def common_prefix_len(a: str, b: str) -> int:
    """How many leading characters `a` and `b` share (string slices compare in C: log n of them)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def text_context(tokenizer: Any, prompt_ids: Sequence[int]) -> list[int]:
    """The prompt tokens new text reads on from: those after its last control token (BOS, a chat
    template's turn markers; not the unknown-token stand-in for text). A reply after
    "<|assistant|>" starts afresh; a continuation of "the sailor" brings its space."""
    ids = [int(i) for i in prompt_ids]
    control = set(getattr(tokenizer, "all_special_ids", None) or ()) - {getattr(tokenizer, "unk_token_id", None)}
    cut = max((n + 1 for n, i in enumerate(ids) if i in control), default=0)
    return ids[cut:]


class TextAssembler:
    # a few prompt tokens decide how the first new token joins on (a space, no space); the whole
    # prompt would cost a decode of it per generated token
    CONTEXT_TOKENS = 4

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), skip_special_tokens: bool = True,
                 context_ids: Sequence[int] = (), offsets: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.context = text_context(tokenizer, context_ids)[-self.CONTEXT_TOKENS:]
        self._context_text = self._decode_ids(self.context) if self.context else ""
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = ""  # the concatenation of every piece returned so far
        self.stopped = False
        self.track_offsets = offsets
        self._full = ""  # the latest decoding of all tokens (tracked offsets read each token's start from it)
        self._before: deque[str] = deque()  # tokens whose offset is not certain yet: the text decoded before each
        self._last_offset = 0

    def _decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)  # as continuation_text decodes

    def _decode(self) -> str:
        if self.context:
            both = self._decode_ids(self.context + self.ids)
            if both.startswith(self._context_text):
                return both[len(self._context_text):]
        return self._decode_ids(self.ids)

    def push(self, token_id: int, *, emit: bool = True) -> tuple[str, bool]:
        """Add a token; returns (new certain text, whether a stop string was reached). With
        emit=False (nobody reads pieces and there are no stop strings) nothing is decoded yet."""
        if self.stopped:
            return "", True
        self.ids.append(int(token_id))
        if self.track_offsets:
            self._before.append(self._full)
        if not emit and not self.stop and not self.track_offsets:
            return "", False
        full = self._full = self._decode()
        if self.stop:
            hit = self._find_stop(full)
            if hit is not None:
                self.stopped = True
                return self._advance(full[:hit]), True
        return self._advance(full[: self._safe_end(full)]), False

    def finish(self) -> str:
        """The rest of the text (held-back whitespace, an incomplete character) at the end."""
        if self.stopped:
            return ""
        return self._advance(self._decode())

    def offsets(self, final: bool = False) -> list[int]:
        """The offsets in the text of the tokens whose offset became certain since the last call, in
        token order; final=True: the text is final (finished, stopped or abandoned), all of them."""
        out: list[int] = []
        final = final or self.stopped
        while self._before:
            before = self._before[0]
            n = common_prefix_len(before, self.emitted)
            if not final and n == len(self.emitted) and n < len(before):
                break  # the text may yet agree with more of it
            self._last_offset = max(self._last_offset, n)
            out.append(self._last_offset)
            self._before.popleft()
        return out

    @property
    def text(self) -> str:
        return self.emitted

    def _find_stop(self, full: str) -> int | None:
        start = max(0, len(self.emitted) - max(len(s) for s in self.stop))
        best = None
        for s in self.stop:
            i = full.find(s, start)
            if i >= 0 and (best is None or i < best):
                best = i
        return best

    def _safe_end(self, full: str) -> int:
        end = len(full)
        while end > 0 and (full[end - 1].isspace() or full[end - 1] == _INCOMPLETE):
            end -= 1
        for s in self.stop:  # an ending that could grow into a stop string
            for n in range(min(len(s) - 1, end), 0, -1):
                if full[end - n : end] == s[:n]:
                    end -= n
                    break
        return end

    def _advance(self, target: str) -> str:
        """The part of `target` not yet emitted (nothing if decoding rewrote emitted text)."""
        if len(target) <= len(self.emitted) or not target.startswith(self.emitted):
            return ""
        piece = target[len(self.emitted) :]
        self.emitted = target
        return piece
