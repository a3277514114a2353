"""`saesteer --help` start-up: process CPU time (user + system, of the child) and wall time, medians
of interleaved rounds, against a bare `python -c pass` of the same interpreter.

    .venv/bin/python benchmarks/bench_cli_startup.py                           # this checkout
    .venv/bin/python benchmarks/bench_cli_startup.py --checkout /tmp/old --checkout .   # two versions
    .venv/bin/python benchmarks/bench_cli_startup.py --script /path/to/venv/bin/saesteer # an installed one

A checkout runs as `python -m saesteer --help` with PYTHONPATH set to it; a script (the entry point
pip writes) runs as it is. tests/test_cli_startup.py checks what --help imports (no torch, numpy, ...);
this measures what that costs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _time(argv: list[str], env: dict) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of `argv`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd="/")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkout", action="append", default=[], help="a saesteer checkout (repeatable)")
    ap.add_argument("--script", action="append", default=[], help="an installed `saesteer` script (repeatable)")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cases: list[tuple[str, list[str], dict]] = [("python -c pass", [sys.executable, "-c", "pass"], base_env)]
    for d in args.checkout or ([] if args.script else [str(REPO)]):
        cases.append((f"python -m saesteer --help  ({d})", [sys.executable, "-m", "saesteer", "--help"],
                      {**base_env, "PYTHONPATH": str(Path(d).resolve())}))
    for s in args.script:
        cases.append((f"{s} --help", [s, "--help"], base_env))
    for _, argv, env in cases:  # warm the file cache
        _time(argv, env)
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    wall: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(args.rounds):
        for name, argv, env in cases:
            c, w = _time(argv, env)
            cpu[name].append(c)
            wall[name].append(w)
    bare = statistics.median(cpu[cases[0][0]])
    print(f"{args.rounds} interleaved rounds, medians; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"{'command':<70} {'CPU ms':>7} {'wall ms':>8} {'CPU - bare':>11}")
    for name, _, _ in cases:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"{name:<70} {c * 1e3:7.0f} {w * 1e3:8.0f} {(c - bare) * 1e3:9.0f} ms")


if __name__ == "__main__":
    main()
