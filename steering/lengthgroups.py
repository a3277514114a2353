"""Which waiting rows are prefilled together: rows of close prompt lengths, so that little of a
prefill is spent on left padding.

Rows taken into the batch in one step (oldest first: see `BatchEngine._admit`) are sorted by prompt
length and cut into groups, each prefilled in its own forward pass and then merged into the
running batch. A group grows while its padding stays within a quarter of its positions, or within
`PAD_SLACK` positions (a forward pass of its own is not worth fewer). Serving engines with paged
attention (vLLM, TGI) pad nothing; those that pad (vLLM's TPU and Neuron backends, TGI on Gaudi)
pad each prompt to a length bucket rather than to the batch's longest. This is that bucketing,
done on the rows at hand: 32 prompts of 2-96 tokens in one padded prefill spend
about half its positions on padding, grouped about a fifth (`benchmarks/bench_engine.py --mixed`).
Only the rows taken in one step are grouped, never rows picked by length from the whole queue, so
a long prompt is not passed over while short ones keep coming.

The decode batch stays one: its cache is padded to its longest row (cutting it by length would
cost a forward pass, a full read of the weights, per extra batch; `bench_engine.py --decode-split`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["prefill_groups", "PAD_SHARE", "PAD_SLACK"]

T = TypeVar("T")

PAD_SHARE = 0.25  # most of a group's positions that may be padding ...
PAD_SLACK = 32  # ... unless its padding is at most this many positions


def prefill_groups(rows: Sequence[T], length: Callable[[T], int]) -> list[list[T]]:
    """`rows` cut into groups of close lengths (each group in the order of `rows`, the group of the
    first row first)."""
    order = sorted(range(len(rows)), key=lambda i: length(rows[i]))
    groups: list[list[int]] = []
    real = 0
    for i in order:
        n = length(rows[i])  # the longest so far: the group's padded length
        if groups:
            g = groups[-1]
            padding = (len(g) + 1) * n - (real + n)
            if padding <= max(PAD_SHARE * (len(g) + 1) * n, PAD_SLACK):
                g.append(i)
                real += n
                continue
        groups.append([i])
        real = n
    groups = [sorted(g) for g in groups]
    groups.sort(key=lambda g: g[0])
    return [[rows[i] for i in g] for g in groups]
