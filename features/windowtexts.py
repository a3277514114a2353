"""The stored text of example windows, each distinct window decoded once per store write.

A store keeps, for every example window, its text and each token's offset in it
(`features.tokentext.token_text`). The same window comes back many times: the negatives of every
latent are drawn from one pool of ~1k contexts, and a token that tops several latents is their
example each time. `WindowTexts` remembers what it computed, keyed by the window's int32 token
bytes (as the store keeps them), so each distinct window is decoded once, in batches; what it
returns is exactly `token_texts` of each window.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from features.tokentext import token_texts

MAX_WINDOWS = 1 << 17  # ~100 MB of remembered windows at most


class WindowTexts:
    """(text, int32 offsets bytes) per window, remembered for up to `max_windows` windows (then
    forgotten all at once: the memory stays bounded, the results stay the same)."""

    def __init__(self, max_windows: int | None = None) -> None:
        self.max_windows = MAX_WINDOWS if max_windows is None else max_windows
        self._known: dict[bytes, tuple[str, bytes]] = {}

    def get(self, tokenizer, windows: Sequence[bytes]) -> list[tuple[str, bytes]]:
        """The (text, offsets) of each window, given as its token ids' '<i4' bytes."""
        known = self._known
        todo = list(dict.fromkeys(w for w in windows if w not in known))
        if len(known) + len(todo) > self.max_windows:
            known.clear()
            todo = list(dict.fromkeys(windows))
        made = token_texts(tokenizer, [np.frombuffer(w, dtype="<i4").tolist() for w in todo])
        known.update((w, (tt.text, np.asarray(tt.offsets, dtype="<i4").tobytes())) for w, tt in zip(todo, made))
        return [known[w] for w in windows]
