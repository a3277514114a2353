"""A `saesteer` command in its own process that waits for a stop signal at a known point, for the
stop-signal tests (tests/test_stop_signals.py).

    python tests/helpers/stop_child.py MODULE:ATTR.PATH N MARKER saesteer-arg ...

runs `saesteer saesteer-arg ...` with the function MODULE:ATTR.PATH wrapped: its N-th call writes
the file MARKER and waits there until a stop signal arrives (`wait_for_stop`), then goes on. The
parent sends the signal once MARKER exists (`signal_when_waiting`). Where the command takes the
signal at once (outside `saesteer.stopsignals.deferred`), it ends the wait as it would end any
work there; inside, the wait ends when the signal is noted and the work reaches its safe point.
"""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def wait_for_stop(marker: Path, text: str = "waiting", go_on: Path | None = None) -> None:
    """Write `text` to `marker` and wait (at most 10 minutes) until a stop signal is noted or raised,
    or the file `go_on` exists."""
    from saesteer import stopsignals

    marker.write_text(text)
    deadline = time.monotonic() + 600
    while stopsignals.requested() is None and time.monotonic() < deadline and not (go_on and go_on.exists()):
        time.sleep(0.01)


def signal_when_waiting(cmd: list[str], marker: Path, env: dict[str, str], signum: int,
                        stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """Run `cmd`, send it `signum` once `marker` exists; the finished process (stdout, stderr as text).
    The test fails if it exits before."""
    import pytest

    proc = subprocess.Popen(cmd, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the command exited before it got there: {proc.stderr.read()[-3000:]}")
            assert time.monotonic() < deadline, "the command never got there"
            time.sleep(0.05)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _wrap(target: str, n: int, marker: Path) -> None:
    module_name, path = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    calls = [0]

    @functools.wraps(real)
    def waiting(*a, **kw):
        calls[0] += 1
        if calls[0] == n:
            wait_for_stop(marker)
        return real(*a, **kw)

    setattr(owner, name, waiting)


def main() -> int:
    target, n, marker, *argv = sys.argv[1:]
    _wrap(target, int(n), Path(marker))
    from saesteer.cli import main as saesteer

    return saesteer(argv)


if __name__ == "__main__":
    raise SystemExit(main())
