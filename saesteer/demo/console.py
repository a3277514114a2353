"""The demo's terminal output: a rich console and stage headers with their timings."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator


class StageTimer:
    """Stage headers with their index and the time each stage took."""

    def __init__(self, console: Any, total: int) -> None:
        self.console = console
        self.total = total
        self.index = 0
        self.seconds: dict[str, float] = {}
        self.status: dict[str, str] = {}

    @contextmanager
    def stage(self, name: str, title: str) -> Iterator[dict[str, str]]:
        self.index += 1
        self.console.rule(f"[bold][{self.index}/{self.total}] {title}", align="left")
        info = {"status": "ran", "note": ""}
        t0 = time.perf_counter()
        yield info
        secs = time.perf_counter() - t0
        self.seconds[name] = round(secs, 2)
        self.status[name] = info["status"]
        note = f" ({info['note']})" if info["note"] else ""
        verb = "reused" if info["status"] == "reused" else "done"
        from rich.text import Text

        self.console.print(Text.assemble((f"{name}: {verb} in {fmt_secs(secs)}", "green"), note))  # note: data


def fmt_secs(s: float) -> str:
    return f"{s:.1f} s" if s < 90 else f"{int(s // 60)} min {s % 60:.0f} s"


def make_console(quiet: bool = False):
    from rich.console import Console

    return Console(quiet=quiet, highlight=False)

