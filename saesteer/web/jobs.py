"""One model, one job at a time: the queue in front of generation, sweeps and encoding.

A model object is not safe to run from two threads at once (hooks added by one steering job
would leak into the other), and a CPU serves one forward pass faster than two interleaved ones.
So every job that runs the model goes through its `ModelQueue`: a single worker thread takes jobs
in arrival order while the event loop stays free for page and API reads. Each job holds the
queue's `lock` while it runs; the OpenAI-compatible API's batching thread (`saesteer.api`) takes
the same lock around each of its forward passes, so the two never run the model at once. At most `max_pending`
jobs wait; the next one is refused at once (the API answers 503 with Retry-After) rather than
piling up behind a slow generation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, TypeVar

__all__ = ["ModelQueue", "QueueFull"]

T = TypeVar("T")


class QueueFull(RuntimeError):
    """Too many model jobs are waiting; try again shortly."""


class ModelQueue:
    def __init__(self, name: str, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError(f"ModelQueue.max_pending must be >= 1, got {max_pending}")
        self.name = name
        self.max_pending = int(max_pending)
        self._executor = self._new_executor()
        self._closed = False
        self._count_lock = threading.Lock()
        self._pending = 0  # queued or running
        self.completed = 0
        self.lock = threading.RLock()  # held while a job runs the model (shared with the API's batcher)

    def _new_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{self.name}")

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the model's worker thread after the jobs before it."""
        with self._count_lock:
            if self._pending >= self.max_pending:
                raise QueueFull(f"{self._pending} model jobs are already waiting on {self.name!r}; try again in a few seconds")
            self._pending += 1
        try:
            fut = self._executor.submit(self._call, fn, args, kwargs)
        except BaseException:
            with self._count_lock:
                self._pending -= 1
            raise
        fut.add_done_callback(self._forget_if_cancelled)
        # The job keeps its place (and runs) even if the client goes away: jobs are bounded.
        return await asyncio.shield(asyncio.wrap_future(fut))

    def _call(self, fn, args, kwargs):
        try:
            with self.lock:
                return fn(*args, **kwargs)
        finally:
            with self._count_lock:
                self._pending -= 1
                self.completed += 1

    def _forget_if_cancelled(self, fut) -> None:
        """A job `close` cancelled before it ran leaves the count (else a re-opened queue starts fuller)."""
        if fut.cancelled():
            with self._count_lock:
                self._pending -= 1

    def open(self) -> None:
        """Take jobs again after `close` (an app served a second time opens its queues at startup)."""
        with self._count_lock:
            if self._closed:
                self._executor = self._new_executor()
                self._closed = False

    def close(self) -> None:
        with self._count_lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
