"""Torch's intra-op thread count for one block of code.

Tiny problems (toy-model generation steps, the many small probes of an eval) run fastest on one
thread: on a busy 2-core machine a second thread only adds synchronisation and spinning.

    with torch_threads(1):
        ...
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
