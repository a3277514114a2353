"""Data-parallel training throughput: 1 process against 2 torchrun processes (gloo, CPU).

    python benchmarks/bench_dist.py [--steps 16] [--rounds 3] [--archs topk,batchtopk] [--no-write]

Each configuration trains one SAE with `training.train` (the code path of `saesteer train`) on
the same in-memory global batches (synthetic activations with sparse structure, generated before
the clock starts; every rank keeps its slice of each global batch). Shape of perf-notes.md:
d_in 512, d_sae 8192, k 32, global batch 4096, step method "fast" (fp32, exact).

Configurations, interleaved in every round:
  1 proc x 1 thread    the per-core baseline
  1 proc x 2 threads   all cores in one process (what a single-process run here does)
  2 procs x 1 thread   torchrun --nproc-per-node 2, one core per rank (torch threads per rank =
                       cores / ranks, which `saesteer train` sets under torchrun)

Throughput = global batch rows / median step time (steps after the first 3; the step includes
the gradient all-reduce and, for BatchTopK, the global selection's two small collectives).
Communication = median time per step inside the collectives of rank 0 (all-reduce of the
gradients, BatchTopK cut, counters, flags; includes waiting for the slower rank).
CPU = median CPU seconds per step of the (rank 0) process, all its threads: on a machine shared
with other jobs the wall-clock figures depend on the load, while CPU time per step shows what
each process costs (with 1 thread per rank, it is the step time that rank would take on a core
of its own).

Results go into benchmarks/RESULTS.md under "## Distributed training" (that section is replaced;
the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Distributed training"
D_IN, D_SAE, K, BATCH, DISTINCT = 512, 8192, 32, 4096, 6


# ------------------------------------------------------------------------------- worker
def worker(args) -> int:
    sys.path.insert(0, str(ROOT))
    import torch

    from training.config import CheckpointConfig, EvalConfig, LogConfig, RunConfig, SAESpec, TrainConfig, takes_k
    from training.distributed import init_from_env, shutdown
    from training.synthetic import SyntheticActivations
    from training.run import train

    setup = init_from_env("cpu", args.threads)
    if setup is None:
        torch.set_num_threads(args.threads)
    coll = setup.collectives if setup else None
    rank, world = (coll.rank, coll.world_size) if coll else (0, 1)

    comm = [0.0]
    if coll is not None:  # time spent inside the collectives
        for name in ("average_gradients_", "sum_", "min_", "all_true", "global_rows", "_all_gather_padded"):
            real = getattr(coll, name)

            def timed(*a, _real=real, **kw):
                t0 = time.perf_counter()
                try:
                    return _real(*a, **kw)
                finally:
                    comm[0] += time.perf_counter() - t0

            setattr(coll, name, timed)

    src = SyntheticActivations(D_IN, BATCH, seed=1, n_features=4 * D_IN, active=16)
    b = BATCH // world
    parts = [src.batch(i)[rank * b:(rank + 1) * b].clone() for i in range(DISTINCT)]
    n_batches = 1 + args.steps  # one held-out batch, then the training steps

    def data():
        for i in range(n_batches):
            yield parts[i % DISTINCT]

    cfg = RunConfig(
        saes=[SAESpec(args.arch, d_sae=D_SAE, k=K if takes_k(args.arch) else None)],
        train=TrainConfig(total_tokens=args.steps * BATCH, batch_size=BATCH, holdout_tokens=BATCH,
                          step_method="fast", num_threads=args.threads, dead_tokens=10 * BATCH),
        checkpoint=CheckpointConfig(every_tokens=0), eval=EvalConfig(every_tokens=0, ce_contexts=0),
        log=LogConfig(log_every=10**6, progress=False),
    )
    times, cpus, comms = [], [], []

    def on_step(tr) -> None:
        times.append(time.perf_counter())
        cpus.append(time.process_time())
        comms.append(comm[0])

    train(cfg, data(), args.out, on_step=on_step, collectives=coll)
    if rank == 0:
        dt = [b - a for a, b in zip(times[3:], times[4:])]
        dc = [b - a for a, b in zip(comms[3:], comms[4:])]
        du = [b - a for a, b in zip(cpus[3:], cpus[4:])]
        Path(args.result).write_text(json.dumps({"step_s": statistics.median(dt), "comm_s": statistics.median(dc),
                                                 "cpu_s": statistics.median(du), "world": world,
                                                 "threads": torch.get_num_threads()}))
    if setup is not None:
        shutdown()
    return 0


# ------------------------------------------------------------------------------- driver
CONFIGS = (("1 proc x 1 thread", 1, 1), ("1 proc x 2 threads", 1, 2), ("2 procs x 1 thread", 2, 1))


def run_one(arch: str, procs: int, threads: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        wargs = [str(Path(__file__).resolve()), "--worker", "--arch", arch, "--threads", str(threads),
                 "--steps", str(steps), "--out", str(Path(tmp) / "run"), "--result", str(result)]
        if procs == 1:
            cmd = [sys.executable, *wargs]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), *wargs]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
        env.pop("WORLD_SIZE", None)
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return json.loads(result.read_text())


def replace_section(body: str) -> None:
    from results_md import replace_section as replace

    replace(HEADING, body, RESULTS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--archs", default="topk,batchtopk")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--arch", default="topk", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    archs = [a for a in args.archs.split(",") if a]
    res: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for arch in archs:
            for label, procs, threads in CONFIGS:
                out = run_one(arch, procs, threads, args.steps)
                res.setdefault((arch, label), []).append(out)
                print(f"round {r + 1} {arch:10s} {label:20s} step {out['step_s'] * 1e3:7.1f} ms "
                      f"({BATCH / out['step_s']:8,.0f} tokens/s), cpu {out['cpu_s'] * 1e3:7.1f} ms, "
                      f"comm {out['comm_s'] * 1e3:6.1f} ms, load {os.getloadavg()[0]:.1f}", flush=True)

    import torch

    load = os.getloadavg()
    lines = [HEADING, "",
             f"`python benchmarks/bench_dist.py --steps {args.steps} --rounds {args.rounds}` "
             f"({time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {platform.machine()}, "
             f"{os.cpu_count()} cores, no GPU; load average {load[0]:.1f} / {load[2]:.1f} (1 / 15 min) at the end: other jobs shared the cores). One SAE, d_in {D_IN}, d_sae {D_SAE}, k {K}, global batch {BATCH}, "
             f"step method fast (fp32), in-memory synthetic batches; medians over {args.rounds} rounds of the median "
             f"step time (steps 4..{args.steps}). torchrun --standalone, gloo over loopback.", "",
             "The cores were shared with other jobs (load average above), so the wall-clock columns say little: "
             "under load the scheduler gives 2 processes a larger share of the machine than 1, which flatters "
             "`2 procs`. The CPU columns are the usable figures: CPU per step of one process (all its threads), "
             "and the tokens/s that gives on idle cores = global batch / (CPU per step / threads per process) "
             "(each rank on its own core; for `1 proc x 2 threads` it assumes perfect threading, an upper bound).", "",
             "| SAE | configuration | step wall (ms) | tokens/s (wall) | wall vs 1 proc x 2 threads | CPU per step of one process (ms) | tokens/s on idle cores, from CPU time | in collectives, rank 0 (wall ms/step) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for arch in archs:
        base = statistics.median(o["step_s"] for o in res[(arch, "1 proc x 2 threads")])
        for label, _, threads in CONFIGS:
            step = statistics.median(o["step_s"] for o in res[(arch, label)])
            comm = statistics.median(o["comm_s"] for o in res[(arch, label)])
            cpu = statistics.median(o["cpu_s"] for o in res[(arch, label)])
            comm_txt = f"{comm * 1e3:.0f}" if label.startswith("2") else "-"
            lines.append(f"| {arch} | {label} | {step * 1e3:.0f} | {BATCH / step:,.0f} | {base / step:.2f}x | "
                         f"{cpu * 1e3:.0f} | {BATCH * threads / cpu:,.0f} | {comm_txt} |")
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        replace_section(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
