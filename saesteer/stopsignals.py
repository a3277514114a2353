"""Stop signals: Ctrl-C (SIGINT), a scheduler's preemption (SIGTERM, e.g. SLURM's
`#SBATCH --signal=B:TERM@120`) and a closed terminal (SIGHUP). Every command stops on them the same way.

    with installed():                 # the CLI, around a command: each signal raises `Stopped`
    with deferred() as requested:     # work that must reach a safe point first (a training step)
        while ...:
            step()
            if requested(): checkpoint(); raise ...

`Stopped` is a KeyboardInterrupt, so the `finally` blocks that remove temporary files and the
`except KeyboardInterrupt` that keep finished work (the judge cache) act for SIGTERM and SIGHUP as
they do for Ctrl-C. The CLI prints one line (`report`) and exits 128 + the signal's number, as a
shell reports a process its signal ended. Inside `deferred()` a first signal is only noted (the
work asks `requested()` at its safe points); a second one stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """A stop signal ended the command; `detail` says what was kept and how to go on."""

    def __init__(self, signum: int = signal.SIGINT, detail: str = "") -> None:
        super().__init__(signum, detail)
        self.signum = int(signum)
        self.detail = detail

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


_pending: list[int] = []  # signals noted inside `deferred()`, not yet acted on
_deferring = 0


def _on_signal(signum: int, frame) -> None:
    if _deferring and not _pending:
        _pending.append(signum)
        return
    raise Stopped(signum)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Within: every stop signal raises `Stopped` (in the main thread: Python runs handlers only
    there). A signal the parent set to be ignored (`nohup` ignores SIGHUP) stays ignored. The
    handlers before are put back at the end (a program that calls the CLI keeps its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, handler in before.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)


def requested() -> int | None:
    """The stop signal noted inside `deferred()` (None: none)."""
    return _pending[0] if _pending else None


@contextlib.contextmanager
def deferred() -> Iterator[Callable[[], int | None]]:
    """Within: a first stop signal is noted, not raised; yields `requested`. A signal still
    pending when the block ends raises `Stopped` there. The handlers are those of `installed()`
    within, also where the CLI did not put them (`train(stop_signals=deferred)` in a notebook)."""
    global _deferring
    with installed():
        _deferring += 1
        try:
            yield requested
        except BaseException:
            if _deferring == 1:  # the work stopped (for the signal or not): nothing is left to act on
                _pending.clear()
            raise
        finally:
            _deferring -= 1
    if not _deferring and _pending:
        raise Stopped(_pending.pop())


def judge_answers_kept(where: str, written: str = "") -> str:
    """The stop line (ON_STOP) of a command that asks a judge: its answers are cached at `where` as
    they arrive, so the same command asks none of them again; `written`: what it also wrote."""
    kept = f"the {written} written and every judge answer received are kept" if written else \
        "every judge answer received is kept"
    return f"{kept} ({where}); run the same command to go on: answers already received are not asked again"


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def report(e: KeyboardInterrupt) -> int:
    """Say in one line which signal stopped the command (and what `Stopped.detail` adds); the exit status."""
    stopped = e if isinstance(e, Stopped) else Stopped(signal.SIGINT)
    text = f"stopped by {name(stopped.signum)}" + (f": {stopped.detail}" if stopped.detail else "")
    with contextlib.suppress(OSError, ValueError):  # after SIGHUP the terminal may be gone
        print(text, file=sys.stderr, flush=True)
    return stopped.exit_status
