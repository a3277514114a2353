"""Turning a row's generated tokens into text piece by piece, with stop strings.

    text = TextAssembler(tokenizer, stop=["\\n\\n"], context_ids=prompt_ids)
    piece, stopped = text.push(token_id)     # the text that is now certain, and whether a stop string ended it
    rest = text.finish()                      # at the end: what was held back

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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_INCOMPLETE = "\ufffd"


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
                 context_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.context = text_context(tokenizer, context_ids)[-self.CONTEXT_TOKENS:]
        self._context_text = self._decode_ids(self.context) if self.context else ""
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = ""  # the concatenation of every piece returned so far
        self.stopped = False

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
        if not emit and not self.stop:
            return "", False
        full = self._decode()
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
