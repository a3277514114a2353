"""Bytes read and CPU time of one run per hook over a many-hook cache: `train --hook H` and
`features build` (and, apart, only the shard checks such a run makes: `check-shards`), each over a
4-hook cache and over a 1-hook cache of the same text.

The runs' SHA-256 check used to hash every shard whole, i.e. every cached hook's activations, so a
run over one hook of a 4-hook cache read the 3 other hooks too. With per-part checksums
(`training.shards.part_sha256`) a run hashes only what it reads. This script measures the two
codes side by side: `--before DIR` is a checkout of the old code (e.g. `git archive 064e811`), the
new code is this worktree; each code reads the caches it built itself (`--old-format` also lets the
new code read the old code's caches, which it checks whole, as before).

Each measured command runs in its own process; the figures are that process's `/proc/self/io`
(rchar: bytes read through read(2), page cache or not; read_bytes: from the device) and its CPU
time (user + system, all threads), printed when the CLI returns. Rounds interleave the codes;
medians are reported.

    flock /work/wt/bench.lock .venv/bin/python benchmarks/bench_hook_reads.py \\
        --before /tmp/hookhash-main --work /tmp/hookhash-bench --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(4)]
HOOK = HOOKS[1]  # the hook each measured run reads

# Runs the CLI in this process (or, for `check-shards CACHE HOOK`, only the checks a run over HOOK
# makes of every shard: `ShardSet.entries`), then prints the process's I/O counters and CPU time.
_MEASURE = r"""
import json, os, resource, sys
from pathlib import Path
if sys.argv[1] == "check-shards":
    from training.shardset import ShardSet
    cache = ShardSet(sys.argv[2], sys.argv[3])
    for i in range(len(cache.shards)):
        cache.entries(i)
    rc = 0
elif sys.argv[1] == "write-shards":  # what the cache's writer does per shard: write + SHA-256(s) + fsync
    import tempfile, torch
    from training.shards import write_safetensors_atomic
    g = torch.Generator().manual_seed(0)
    rows, n = 64 * 128, int(sys.argv[2])
    t = {f"acts/blocks.{i}.hook_resid_post": torch.randn(rows, 128, generator=g).half() for i in range(4)}
    t.update(token_ids=torch.zeros(rows, dtype=torch.int32), positions=torch.zeros(rows, dtype=torch.int32),
             seq_index=torch.zeros(rows, dtype=torch.int64), context_tokens=torch.zeros(64, 128, dtype=torch.int32))
    with tempfile.TemporaryDirectory() as d:
        for i in range(n):
            write_safetensors_atomic(Path(d) / f"shard_{i:06d}.safetensors", t)
    rc = 0
else:
    from saesteer.cli import main
    rc = main(sys.argv[1:])
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
ru = resource.getrusage(resource.RUSAGE_SELF)
print("MEASURE " + json.dumps({"rc": rc, "rchar": int(io["rchar"]), "read_bytes": int(io["read_bytes"]),
                               "cpu_s": ru.ru_utime + ru.ru_stime}))
"""


def cli(code: Path, *argv, measure: bool = False) -> dict | None:
    env = {**os.environ, "PYTHONPATH": str(code), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "SAESTEER_CI": "1"}
    args = [sys.executable, "-c", _MEASURE] if measure else [sys.executable, "-m", "saesteer"]
    p = subprocess.run(args + [str(a) for a in argv], env=env, cwd=code, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed ({code}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    if measure:
        line = next(x for x in p.stdout.splitlines() if x.startswith("MEASURE "))
        m = json.loads(line.removeprefix("MEASURE "))
        if m["rc"] != 0:
            raise SystemExit(f"{' '.join(map(str, argv))} failed ({code}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
        return m
    return None


def prepare(code: Path, work: Path, tokens: int) -> dict[str, Path]:
    """The 4-hook and the 1-hook cache and an SAE at HOOK, built with `code` (once)."""
    work.mkdir(parents=True, exist_ok=True)
    out = {"cache4": work / "cache4", "cache1": work / "cache1", "sae": work / "sae" / "saes" / "topk_k8_f256"}
    common = ("--model", "toy", "--dataset", "toy", "--max-tokens", tokens, "--context-length", 128,
              "--dtype", "fp16", "--no-progress")
    if not (out["cache4"] / "manifest.json").exists():
        cli(code, "cache", *common, "--hooks", ",".join(HOOKS), "--out", out["cache4"])
    if not (out["cache1"] / "manifest.json").exists():
        cli(code, "cache", *common, "--hooks", HOOK, "--out", out["cache1"])
    if not (out["sae"] / "cfg.json").exists():
        cli(code, "train", *train_args(out["cache1"], work / "sae", tokens))
    return out


def train_args(cache: Path, out: Path, tokens: int) -> list:
    return ["--cache", cache, "--hook", HOOK, "--d-sae", 256, "--k", 8, "--total-tokens", tokens,
            "--out", out, "--wandb", "false", "--no-progress"]


def commands(paths: dict[str, Path], scratch: Path, tokens: int) -> dict[str, list]:
    out = {}
    for c in ("cache4", "cache1"):
        out[f"check-shards, {c[-1]}-hook cache"] = ["check-shards", paths[c], HOOK]
        out[f"train, {c[-1]}-hook cache"] = ["train", *train_args(paths[c], scratch / f"sae-{c}", tokens)]
        out[f"features build, {c[-1]}-hook cache"] = [
            "features", "build", "--sae", paths["sae"], "--cache", paths[c], "--hook", HOOK,
            "--out", scratch / f"store-{c}.db", "--overwrite", "--no-progress"]
    out["write-shards, 12 x 8.9 MB"] = ["write-shards", 12]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="checkout of the code before the change")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_hook_reads"))
    ap.add_argument("--tokens", type=int, default=100_000, help="tokens cached (4 hooks x 128 x fp16: 1 KiB each)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--old-format", action="store_true", help="also: the new code over the old code's caches")
    ap.add_argument("--only", default=None, help="only the commands whose name starts with one of these (comma-separated, e.g. check-shards,write-shards)")
    args = ap.parse_args()
    codes = {"before": args.before.resolve(), "after": ROOT}
    paths = {name: prepare(code, args.work / name, args.tokens) for name, code in codes.items()}
    variants = [(name, name, name) for name in codes]  # (label, code, whose caches)
    if args.old_format:
        variants.append(("after, old-format cache", "after", "before"))
    sizes = {c: sum(f.stat().st_size for f in paths["after"][c].glob("shard_*")) for c in ("cache4", "cache1")}
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for label, code, owner in order:
            for what, argv in commands(paths[owner], args.work / "runs", args.tokens).items():
                if args.only and not what.startswith(tuple(args.only.split(","))):
                    continue
                shutil.rmtree(args.work / "runs", ignore_errors=True)  # a fresh run: nothing to resume
                (args.work / "runs").mkdir(parents=True)
                m = cli(codes[code], *argv, measure=True)
                results.setdefault((what, label), []).append(m)
                print(f"round {r} {label:24s} {what:32s} rchar {m['rchar'] / 1e6:8.1f} MB  cpu {m['cpu_s']:6.2f} s",
                      flush=True)
    print(f"\nshards: 4-hook cache {sizes['cache4'] / 1e6:.1f} MB, 1-hook cache {sizes['cache1'] / 1e6:.1f} MB; "
          f"{args.tokens} tokens; medians of {args.rounds} interleaved rounds\n")
    print("| command | code | bytes read (rchar) MB | process CPU s |")
    print("|---|---|---|---|")
    for (what, label), ms in results.items():
        print(f"| {what} | {label} | {statistics.median(m['rchar'] for m in ms) / 1e6:.1f} | "
              f"{statistics.median(m['cpu_s'] for m in ms):.2f} |")


if __name__ == "__main__":
    main()
