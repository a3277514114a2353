"""The worker thread in front of one model: requests in, batched steps, events out to the event loop.

    sched = Scheduler(engine, max_queued=64)
    sched.start()
    job = sched.submit(rows, loop, deliver_tokens=True)     # QueueFull when too many requests are in
    async for event in job: ...                             # steering.engine.RowEvent (tag: row index), until every row ends
    sched.cancel(job)                                       # e.g. the client went away
    sched.close()

One thread owns the `BatchEngine`: it takes newly submitted rows between steps (they join the
running batch), runs one step, and hands each event to the job's asyncio queue on the event
loop's thread. At most `max_queued` requests are in the server at once (running or waiting); one
more is refused at once (the API answers 503 with Retry-After) instead of waiting unboundedly.
An exception inside a step fails the rows of that batch (finish_reason 'error', the message in the
event) and the thread carries on with the next requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from steering.engine import BatchEngine, Row, RowEvent
from steering.spec import SteeringError

__all__ = ["Scheduler", "Job", "QueueFull"]

log = logging.getLogger("saesteer.api")


class QueueFull(RuntimeError):
    """Too many requests are in the server; try again shortly."""


class Job:
    """One request's rows; iterate (async) over its events until every row has finished."""

    def __init__(self, n_rows: int, loop: asyncio.AbstractEventLoop, deliver_tokens: bool) -> None:
        self.n_rows = n_rows
        self.loop = loop
        self.deliver_tokens = deliver_tokens  # every token's event (streaming, logprobs), else only the last
        self.queue: asyncio.Queue[RowEvent | None] = asyncio.Queue()  # None: `stop_reading`
        self.open_rows = n_rows  # rows not finished, as the reader has seen them
        self.unfinished = n_rows  # rows not finished, as the worker thread has delivered them
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None
        self.cancelled = False  # set by Scheduler.cancel (under its lock)

    def __aiter__(self):
        return self._events()

    def stop_reading(self) -> None:
        """End the iteration over the events at once (its client went away); on the loop's thread."""
        self.queue.put_nowait(None)

    async def _events(self):
        while self.open_rows > 0:
            ev = await self.queue.get()
            if ev is None:
                return
            if ev.finish_reason is not None:
                self.open_rows -= 1
            yield ev


class Scheduler:
    join_timeout_s = 10.0  # how long `close` and a restart wait for a generation step in progress to end

    def __init__(self, engine: BatchEngine, *, max_queued: int = 64, name: str = "model") -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.engine = engine
        self.max_queued = int(max_queued)
        self.name = name
        self._cond = threading.Condition()
        self._inbox: list[tuple[Job, list[Row]]] = []
        self._jobs: set[Job] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._run)  # never started: `_spawn` makes the worker
        self.completed = 0
        self.cancelled_count = 0  # requests cancelled while in (a Job says `cancelled` of itself)

    # -- client side (event loop thread) ------------------------------------------------------
    def start(self) -> "Scheduler":
        """Start the worker thread; after `close`, open again with a fresh one (an app served a second
        time: each server's startup starts it, its shutdown closes it)."""
        if self._closed and self._thread.is_alive():
            self._thread.join(timeout=self.join_timeout_s)  # closed while a long step ran: it ends after that step
            if self._thread.is_alive():
                raise RuntimeError(
                    f"cannot start the API's scheduler for {self.name!r} again: its worker, closed in the middle of "
                    f"a generation step, was still in that step after {self.join_timeout_s:g} s more of waiting (a "
                    "long prefill, or the model's lock held by other work on it, such as the web app's steering); "
                    "start it again once that step has ended")
        with self._cond:
            if self._thread.is_alive():
                return self
            self._closed = False
            self._spawn()
        return self

    def _start_once(self) -> None:
        """`submit`'s start for an app whose startup did not run; never re-opens a closed scheduler."""
        with self._cond:
            if not self._thread.is_alive() and not self._closed:
                self._spawn()

    def _spawn(self) -> None:
        """A fresh worker thread, started (a thread runs once; under `_cond`)."""
        self._thread = threading.Thread(target=self._run, name=f"api-{self.name}", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def submit(self, rows: Sequence[Row], loop: asyncio.AbstractEventLoop, *, deliver_tokens: bool) -> Job:
        """Queue a request's rows; raises QueueFull when `max_queued` requests are already in."""
        job = Job(len(rows), loop, deliver_tokens)
        self._start_once()
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._jobs) >= self.max_queued:
                raise QueueFull(f"{len(self._jobs)} requests are already in the server for {self.name!r}; "
                                f"try again in a few seconds")
            self._jobs.add(job)
            for i, r in enumerate(rows):
                r.tag, r.group = i, job
            self._inbox.append((job, list(rows)))
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Stop generating for `job` (its rows end 'cancelled'; nobody reads them any more)."""
        with self._cond:
            if job in self._jobs:
                self.cancelled_count += 1
            job.cancelled = True
            self._inbox = [(j, rs) for j, rs in self._inbox if j is not job]
            self._jobs.discard(job)
        self.engine.cancel(job)  # rows the worker took in but had not added yet: see `_take_in`

    def close(self) -> None:
        """Stop the worker thread; requests still in (running or waiting) end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=self.join_timeout_s)
        with self._cond:  # requests the worker never took (none when it was not running)
            waiting, self._inbox = self._inbox, []
        self._deliver([RowEvent(r.tag, job, finish_reason="error", detail={"error": "the server is shutting down"})
                       for job, rows in waiting for r in rows])

    # -- worker thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._inbox and not self.engine.busy:
                    self._cond.wait()
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, []
            self._take_in(inbox)
            if not self.engine.busy:
                continue
            try:
                events = self.engine.step()
            except Exception as e:  # noqa: BLE001 - fail the batch, keep serving
                log.exception("generation step failed on %s", self.name)
                events = self.engine.fail_all(f"generation failed: {type(e).__name__}: {e}")
            self._deliver([ev for ev in events if ev.finish_reason is not None or ev.group.deliver_tokens])
        self._deliver(self.engine.fail_all("the server is shutting down"))

    def _take_in(self, inbox: list[tuple[Job, list[Row]]]) -> None:
        """Add the jobs taken from the inbox to the engine. A job cancelled after it left the inbox and
        before its rows were added was missed by `engine.cancel`: cancel it again once they are in."""
        refused = []
        for job, rows in inbox:
            try:
                self.engine.add(rows)
            except (SteeringError, ValueError) as e:  # checked before submit; a late refusal ends the job
                refused += [RowEvent(r.tag, job, finish_reason="error", detail={"error": str(e)}) for r in rows]
                continue
            with self._cond:
                if job.cancelled:
                    self.engine.cancel(job)
        self._deliver(refused)

    def _deliver(self, events: list[RowEvent]) -> None:
        """Hand a step's events to their jobs: one wake-up of each event loop per step, not per token."""
        by_loop: dict[Any, list[RowEvent]] = {}
        now = time.monotonic()
        for ev in events:
            job = ev.group
            if job.first_token_at is None and ev.token is not None:
                job.first_token_at = now
            if ev.finish_reason is not None:
                job.unfinished -= 1
                if job.unfinished <= 0:
                    with self._cond:
                        self._jobs.discard(job)
                        if not job.cancelled:  # a cancelled job is counted in `cancelled_count`, not here
                            self.completed += 1
            by_loop.setdefault(job.loop, []).append(ev)
        for loop, evs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, evs)
            except RuntimeError:  # the event loop is closed (server shutting down)
                pass


def _put_all(events: list[RowEvent]) -> None:
    for ev in events:
        ev.group.queue.put_nowait(ev)
