"""Turning a row's generated tokens into text piece by piece, with stop strings.

    text = TextAssembler(tokenizer, stop=["\\n\\n"], context_ids=prompt_ids)
    piece, stopped = text.push(token_id)     # the text that is now certain, and whether a stop string ended it
    rest = text.finish()                      # at the end: what was held back
    text.offsets(final=True)                  # with offsets=True: where each token's text starts

The whole text is the tokenizer's decoding of all tokens so far (but see invalid byte runs below),
read on from the prompt's last tokens (`context_ids`; up to four, the most whose text has no U+FFFD,
so that none starts inside a character): decode(context + new) less decode(context), as
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

Byte runs. A byte-fallback decoder (Llama-2's and Mistral's SentencePiece <0xNN> tokens in HF's
fast tokenizers) decodes a run of byte tokens that is not valid UTF-8 as one U+FFFD per byte of the
WHOLE run: one stray byte in a sampled reply would lose the run's characters, its line breaks and
tabs (<0x0A>, <0x09>) included. For the SentencePiece decoders `saes.bytefallback` reads, a run
is decoded as its bytes instead (U+FFFD for the stray bytes only), so the text is the tokens'
characters, streamed or not.

Emitted text is never rewritten. With another decoder that rewrites a run (a decoding of all the
tokens that turns characters already emitted into U+FFFD: 你好 then an incomplete <0xE4><0xBD> as
eight U+FFFD), where the decoding no longer starts with
the emitted text, the text is decoded on from a cut at the boundary before the token that did it:
the text up to there as it was decoded, then the tokens after it as the tokenizer decodes them on
their own ("你好" + "\ufffd\ufffd the sea", one U+FFFD per byte of the run after the cut); that
is the text from then on. Where decoding never rewrites emitted text, the text is the decoding of
all the tokens (byte-level BPE replaces invalid bytes with U+FFFD without touching the characters
around them). Rows pushed without decoding (emit=False) whose text has a U+FFFD are decoded token
by token at the end, so that the text is the same streamed or not.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from saes.bytefallback import text_of

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


@dataclass(frozen=True)
class _Cut:
    """A token boundary the text is decoded on from: the text of the tokens before it is fixed."""

    tokens: int  # how many generated tokens lie before it
    text: str  # their text (a start of it may be emitted, the rest held back)
    context: list[int]  # the tokens before it that decoding reads on from (how the next word joins on)
    context_text: str


class TextAssembler:
    # a few prompt tokens decide how the first new token joins on (a space, no space); the whole
    # prompt would cost a decode of it per generated token
    CONTEXT_TOKENS = 4

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), skip_special_tokens: bool = True,
                 context_ids: Sequence[int] = (), offsets: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._prompt_context = text_context(tokenizer, context_ids)[-self.CONTEXT_TOKENS:]
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = ""  # the concatenation of every piece returned so far
        self.stopped = False
        self.track_offsets = offsets
        self._cut = self._cut_at(0, "")
        self._decoded = 0  # how many tokens the latest decoding (`_full`) covered
        self._full = ""  # the text of the first `_decoded` tokens (tracked offsets read each token's start from it)
        self._before: deque[str] = deque()  # tokens whose offset is not certain yet: the text decoded before each
        self._last_offset = 0

    def _decode_ids(self, ids: list[int]) -> str:
        return text_of(self.tokenizer, ids, self.skip_special_tokens)  # a byte run's whole characters kept

    def _cut_at(self, tokens: int, text: str) -> _Cut:
        """A cut after `tokens` generated tokens whose text is `text`. It reads on from the
        longest run of the last few tokens whose text has no U+FFFD: a run that starts inside a
        character (byte tokens) would garble the bytes that follow it."""
        ids = (self._prompt_context + self.ids[:tokens])[-self.CONTEXT_TOKENS:]
        for k in range(len(ids), 0, -1):
            context_text = self._decode_ids(ids[-k:])
            if _INCOMPLETE not in context_text:
                return _Cut(tokens, text, ids[-k:], context_text)
        return _Cut(tokens, text, [], "")

    def _decode(self, n: int | None = None) -> str:
        """The text of the first n tokens (all of them by default): the text up to the cut, then
        the tokens after it decoded on from its context."""
        cut = self._cut
        new = self.ids[cut.tokens : len(self.ids) if n is None else n]
        if cut.context:
            both = self._decode_ids(cut.context + new)
            if both.startswith(cut.context_text):
                return cut.text + both[len(cut.context_text) :]
        return cut.text + self._decode_ids(new)

    def _settled(self, n: int | None = None) -> str:
        """The text of the first n tokens (all by default). Where their decoding no longer starts
        with the emitted text (a byte-fallback decoder rewrote a run of byte tokens), the text is
        decoded on from a new cut at the latest decoded boundary: its decoding starts with the
        emitted text, and the characters of the run before it were whole there (the run turned
        invalid with the first token after them)."""
        n = len(self.ids) if n is None else n
        full = self._decode(n)
        if not full.startswith(self.emitted):
            self._cut = self._cut_at(self._decoded, self._full)
            full = self._decode(n)
        self._decoded = n
        self._full = full
        return full

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
        full = self._settled()
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
        start = len(self.emitted)
        if self._decoded < len(self.ids):  # pushed without decoding (else `_full` is the whole text already)
            if _INCOMPLETE in self._decode():
                # an invalid byte run may have rewritten emitted text had it streamed: the text is
                # decoded token by token, as streaming would have
                for n in range(self._decoded + 1, len(self.ids)):
                    full = self._settled(n)
                    self._advance(full[: self._safe_end(full)])
            self._settled()
        self._advance(self._full)
        return self.emitted[start:]

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
        """The part of `target` (a start of the latest decoding) not yet emitted."""
        if len(target) <= len(self.emitted) or not target.startswith(self.emitted):
            return ""
        piece = target[len(self.emitted) :]
        self.emitted = target
        return piece
