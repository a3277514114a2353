"""No disk: activation batches computed straight from a model over text (`model_batches`), for
small runs that need no cache. Same `ActivationBatch` interface as `CacheReader`, no resume state.

Shape key: N contexts of a window, L context length, R rows of a window, B batch rows.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from saes.hookpoints import model_dtype
from training.plan import excluded_ids
from training.reader import ActivationBatch, make_batch, seeded_rng
from training.runner import ActivationRunner
from training.writer import ShardBuffer, fill_batch


def model_batches(
    model,
    text,
    hook: str,
    batch_size: int,
    *,
    tokenizer=None,
    max_tokens: int | None = None,
    model_batch_size: int = 32,
    exclude_tokens: str = "bos",
    buffer_rows: int = 1 << 16,
    seed: int = 0,
    with_tokens: bool = False,
    drop_last: bool = False,
    dtype: torch.dtype | None = torch.float32,
    target_hook: str | None = None,
) -> Iterator[ActivationBatch]:
    """Activation batches computed on the fly from `model` over `text` (a `TextConfig`). Rows are
    shuffled within windows of `buffer_rows` rows (seeded); one pass over the text (up to
    `max_tokens` model-input tokens). `target_hook`: a transcoder's target, captured in the same
    forward pass and yielded as `.targets`, row for row with `.acts`."""
    hooks = [hook] if target_hook is None else [hook, target_hook]
    windows = _shuffled_windows(model, text, hooks, tokenizer if tokenizer is not None else model.tokenizer,
                                max_tokens, model_batch_size, exclude_tokens, buffer_rows, seed,
                                model_dtype(model) if dtype is None else dtype)
    acts, meta_3R = None, None  # rows not yet batched (fewer than batch_size), one [R, width] per hook

    def batch(rows: slice) -> ActivationBatch:
        targets = acts[1][rows] if target_hook is not None else None
        return make_batch(acts[0][rows], meta_3R[:, rows] if with_tokens else None, targets=targets)

    for win_acts, win_meta in windows:
        acts = win_acts if acts is None else [torch.cat([a, w]) for a, w in zip(acts, win_acts)]
        meta_3R = win_meta if meta_3R is None else np.concatenate([meta_3R, win_meta], axis=1)
        full = (len(acts[0]) // batch_size) * batch_size
        for i in range(0, full, batch_size):
            yield batch(slice(i, i + batch_size))
        acts, meta_3R = [a[full:] for a in acts], meta_3R[:, full:]
    if acts is not None and len(acts[0]) and not drop_last:
        yield batch(slice(0, len(acts[0])))


def _shuffled_windows(model, text, hooks: list[str], tokenizer, max_tokens: int | None, model_batch_size: int,
                      exclude_tokens: str, buffer_rows: int, seed: int,
                      dtype: torch.dtype) -> Iterator[tuple[list[torch.Tensor], np.ndarray]]:
    """([acts [R, width] per hook], meta [3, R]) of consecutive windows of contexts, each window's
    rows in one seeded random order (the same for every hook)."""
    from training.packing import open_packer

    runner = ActivationRunner(model, hooks)
    L = text.context_length
    runner.check_context_length(L)
    d_in = runner.d_in(L)
    excl = np.asarray(excluded_ids(tokenizer, exclude_tokens), dtype=np.int64)
    packer = open_packer(text, tokenizer)
    per_window = max(1, buffer_rows // L)
    left = None if max_tokens is None else max_tokens // L
    first_context = 0
    w = 0
    while left is None or left > 0:
        want = per_window if left is None else min(per_window, left)
        toks_NL, _ = packer.take(want)
        if len(toks_NL) == 0:
            return
        buf = ShardBuffer(d_in, dtype, len(toks_NL), L, pin=False)
        for b in range(0, len(toks_NL), model_batch_size):
            tb = toks_NL[b:b + model_batch_size]
            fill_batch(buf, runner.run(torch.from_numpy(tb)), tb, excl, first_context, non_blocking=False)
        n = buf.rows
        perm = torch.from_numpy(seeded_rng(seed, 0, w).permutation(n))
        meta = np.stack([buf.token_ids[:n].numpy(), buf.positions[:n].numpy(), buf.seq_index[:n].numpy()])
        yield [buf.acts[h][:n].index_select(0, perm) for h in hooks], meta[:, perm.numpy()]
        first_context += len(toks_NL)
        left = None if left is None else left - len(toks_NL)
        w += 1
        if len(toks_NL) < want:
            return
