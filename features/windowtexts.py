"""The stored text of example windows, each distinct window decoded once per store write.

A store keeps, for every example window, its text and each token's offset in it
(`features.tokentext.token_text`). The same window comes back many times: the negatives of every
latent are drawn from one pool of ~1k contexts, and a token that tops several latents is their
example each time. `WindowTexts` remembers what it computed, keyed by the window's int32 token
bytes (as the store keeps them), so each distinct window is decoded once, in batches; what it
returns is exactly `token_texts` of each window.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

from features.tokentext import token_texts

MAX_BYTES = 100 << 20  # what the remembered windows may hold (~160k windows of the default 33 tokens)
_SLOT_BYTES = 120  # per remembered window besides its ids, text and offsets: the pair and the dict's slot


def _size(window: bytes, text: str, offsets: bytes) -> int:
    return sys.getsizeof(window) + sys.getsizeof(text) + sys.getsizeof(offsets) + _SLOT_BYTES


class WindowTexts:
    """(text, int32 offsets bytes) per window of one tokenizer, remembered up to `max_bytes` (then
    forgotten all at once: the memory stays bounded, whatever the window length or script, and the
    results stay the same). A call with another tokenizer forgets the last one's texts."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        self._known: dict[bytes, tuple[str, bytes]] = {}
        self._bytes = 0
        self._tokenizer = None

    def get(self, tokenizer, windows: Sequence[bytes]) -> list[tuple[str, bytes]]:
        """The (text, offsets) of each window, given as its token ids' '<i4' bytes."""
        if tokenizer is not self._tokenizer:  # the same ids are another text under another tokenizer
            self._known, self._bytes, self._tokenizer = {}, 0, tokenizer
        known = self._known
        todo = list(dict.fromkeys(w for w in windows if w not in known))
        made = token_texts(tokenizer, [np.frombuffer(w, dtype="<i4").tolist() for w in todo])
        new = {w: (tt.text, np.asarray(tt.offsets, dtype="<i4").tobytes()) for w, tt in zip(todo, made)}
        out = [new[w] if w in new else known[w] for w in windows]
        size = sum(_size(w, *v) for w, v in new.items())
        if self._bytes + size > self.max_bytes:
            known.clear()
            self._bytes = 0
        if size <= self.max_bytes:  # one call's windows beyond the bound are not kept at all
            known.update(new)
            self._bytes += size
        return out
