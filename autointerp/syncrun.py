"""Running the judge's coroutines from plain code, so that a stop signal never lands inside a task.

A Python signal handler that raises (Ctrl-C's default, `saesteer`'s for SIGINT, SIGTERM and SIGHUP)
raises wherever the main thread is. Inside an event loop that is as often in a task's synchronous
step as in the loop's wait: between an answer received and its write to the response cache (the
answer, paid for, is lost), or in a task that asyncio then reports with its traceback beside the
command's one-line stop message. `run_coroutine_sync` replaces those handlers while the loop runs
by one that cancels the coroutine (each task stops at its next `await`; a synchronous step, such
as caching the answer just received, finishes) and then calls the handler it replaced, outside
the loop, so the caller stops as it would have. A second signal calls that handler at once.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any, Callable, Coroutine

__all__ = ["run_coroutine_sync"]

# the signals saesteer.stopsignals stops on (autointerp is a library below saesteer and does not import it)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_CANCELLED = object()


def run_coroutine_sync(make_coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """`asyncio.run(make_coro())`, a stop signal cancelling it (see the module docstring); also from
    inside a running event loop (where asyncio.run refuses): then in a worker thread, where no
    signal lands. `make_coro` is called in the thread that runs the loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return _run_in_worker(make_coro)
    if threading.current_thread() is not threading.main_thread():  # signals are handled in the main thread only
        return asyncio.run(make_coro())
    return _run_cancelled_by_signals(make_coro)


def _run_in_worker(make_coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """The coroutine on a loop of its own in a worker thread, the caller waiting. An exception in the
    caller's thread while it waits (Jupyter's interrupt: KeyboardInterrupt, raised there by the
    kernel's handler) cancels the coroutine, which stops at its next `await`, and is raised once the
    worker has stopped (before, the work ran on to its end: a paid labelling run nobody could stop)."""
    from concurrent.futures import ThreadPoolExecutor

    started = threading.Event()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task]] = []

    async def main() -> Any:
        running.append((asyncio.get_running_loop(), asyncio.current_task()))
        started.set()
        return await make_coro()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="label_latents") as pool:
        future = pool.submit(asyncio.run, main())
        future.add_done_callback(lambda _: started.set())  # also when main never ran
        try:
            return future.result()
        except BaseException:
            if not future.done():
                started.wait()
                if running:
                    loop, task = running[0]
                    loop.call_soon_threadsafe(task.cancel)
            raise  # leaving the block waits for the worker to stop


def _run_cancelled_by_signals(make_coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    caught: list[tuple[int, Any]] = []
    replaced: dict[int, Callable] = {}

    async def main() -> Any:
        task, loop = asyncio.current_task(), asyncio.get_running_loop()

        def cancel(signum: int, frame) -> None:
            if caught:  # a second signal: the caller's handler at once
                replaced[signum](signum, frame)
                return
            caught.append((signum, frame))
            task.cancel()
            loop.call_soon_threadsafe(lambda: None)  # wake the loop if it waits

        for sig in STOP_SIGNALS:
            handler = signal.getsignal(sig)
            if callable(handler):  # a Python handler (not SIG_DFL / SIG_IGN: those the OS acts on)
                replaced[sig] = handler
                signal.signal(sig, cancel)
        try:
            return await make_coro()
        finally:  # inside asyncio.run: 3.11+ puts back a SIGINT handler of its own only where it finds it
            for sig, handler in replaced.items():
                signal.signal(sig, handler)

    try:
        result = asyncio.run(main())
    except asyncio.CancelledError:
        if not caught:
            raise
        result = _CANCELLED
    if caught:  # cancelled, or finished before the cancel reached it: the caller's handler says what follows
        signum, frame = caught[0]
        replaced[signum](signum, frame)
    if result is _CANCELLED:  # that handler only noted the signal: the work was cancelled all the same
        raise KeyboardInterrupt
    return result
