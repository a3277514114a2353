"""`saesteer train` in a torchrun worker, optionally stopping (sleeping) at a step so a test
can kill -9 the whole 2-process run at a known point.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/helpers/dist_child.py \
        [--hang-at STEP | --wait-at STEP] -- train --cache ... --out OUT ...

With --hang-at, every rank writes OUT/hanging.<rank> holding its pid after that step (rank 0's
checkpoint, if one is due, is already written) and sleeps. torchrun starts its workers in their
own sessions, so the test kills them by these pids, and the launcher by its process group.
With --wait-at, every rank writes OUT/waiting.<rank> holding its pid after that step and waits
until a stop signal is noted or OUT/go exists (the stop-signal test sends SIGTERM to a pid).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # stop_child


def main(argv: list[str]) -> int:
    hang_at = wait = None
    if argv and argv[0] in ("--hang-at", "--wait-at"):
        hang_at, wait, argv = int(argv[1]), argv[0] == "--wait-at", argv[2:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    out = Path(argv[argv.index("--out") + 1])

    import training.run as run_mod
    from saesteer.cli import main as cli_main

    if hang_at is not None:
        real_train = run_mod.train

        def train(*a, **kw):
            def on_step(tr) -> None:
                if tr.step == hang_at and wait:
                    from stop_child import wait_for_stop

                    wait_for_stop(out / f"waiting.{tr.coll.rank}", str(os.getpid()), go_on=out / "go")
                elif tr.step == hang_at:
                    (out / f"hanging.{tr.coll.rank}").write_text(str(os.getpid()))
                    time.sleep(600)

            return real_train(*a, on_step=on_step, **kw)

        run_mod.train = train
    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
