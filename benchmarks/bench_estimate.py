"""The cache's time estimate against the build it predicts, as a researcher sees both: for each model
and size, `saesteer cache --dry-run` (its "time:" line), then the real `saesteer cache` into an empty
folder, whose caching time is taken from the moment it prints its own estimate to its exit, and whose
command time is the whole process's wall clock (start-up, model load, checks and the probe included).

    python benchmarks/user_scale.py setup --work W                  # the GPT-2-style model + the parquet dataset
    python benchmarks/bench_estimate.py setup --work W              # + a Llama-style model of the same size
    flock /work/wt/bench.lock python benchmarks/bench_estimate.py run --work W [--tokens 300000 1000000] [--rounds 3]
        [--base-code DIR]    # also the dry run of another tree (git archive REV | tar -x -C DIR), same round
    flock /work/wt/bench.lock python benchmarks/bench_estimate.py stages --work W --model gpt2 --tokens 1000000

`run` prints one row per case and round, then medians over the rounds (rounds interleave the cases),
with each run's process CPU time and the load average around it: on a shared machine, the wall clock
follows whatever else runs. `stages` runs one build in-process with each stage timed (forward per batch,
the shard copy, the prefetcher's tokenizing, the writer's hashing + write + fsync) beside the estimate.
Figures: benchmarks/RESULTS.md, "The cache's time estimate against the build".
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

HOOK = "blocks.2.hook_resid_post"
MODELS = ("gpt2", "llama")


def setup(work: Path) -> None:
    """A Llama-style model (RMSNorm, rotary, gated MLP, grouped-query attention) of user_scale.py's
    GPT-2's size, d_model 256 and 4 layers, next to it; its weights random (speed is what is measured)."""
    from helpers.real_models import save_real_model, write_corpus

    if not (work / "dataset").is_dir():
        raise SystemExit(f"no dataset in {work}: run `python benchmarks/user_scale.py setup --work {work}` first")
    corpus = write_corpus(work / "corpus")
    save_real_model(work / "llama-model", "llama", corpus, train_steps=0, d_model=256, n_layers=4, vocab_size=2048)
    print(f"{work / 'llama-model'}: written")


def _cache_argv(work: Path, model: str, tokens: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "saesteer", "cache", "--model", str(work / f"{model}-model"),
            "--dataset", str(work / "dataset"), "--text-column", "content", "--hooks", HOOK,
            "--max-tokens", str(tokens), "--out", str(out), "--no-progress"]


def parse_secs(text: str) -> float:
    """'42 s', '3 min 05 s', '2 h 07 min' -> seconds (fmt_secs's forms)."""
    m = re.fullmatch(r"(?:(\d+) h (\d+) min)|(?:(\d+) min (\d+) s)|(?:(\d+) s)", text.strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    h, hm, m_, ms, s = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + hm * 60 + m_ * 60 + ms + s


def _estimate_line(line: str) -> dict[str, float] | None:
    """The estimate's figures from its "time:" line: caching, and its range and the command's total
    where the line gives them."""
    m_old = re.match(r"\s*time:\s+~(.+?) \(caching measured", line)  # before the range and the start-up
    if m_old:
        return {"caching": parse_secs(m_old.group(1))}
    m = re.match(r"\s*time:\s+~(.+?) caching(?: \((.+?) - (.+?)\))?(?:, ~(.+?) in all)?", line)
    if not m:
        return None
    out = {"caching": parse_secs(m.group(1))}
    if m.group(2):
        out.update(low=parse_secs(m.group(2)), high=parse_secs(m.group(3)))
    if m.group(4):
        out["command"] = parse_secs(m.group(4))
    return out


def _timed(argv: list[str], env: dict, code: Path = ROOT) -> tuple[list[tuple[float, str]], float, float]:
    """(stamped output lines, wall seconds, process CPU seconds of the child) of one command run from `code`."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=code,
                         env={**env, "PYTHONPATH": str(code)})
    lines = [(time.perf_counter() - t0, ln.rstrip("\n")) for ln in p.stdout]
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit("\n".join(ln for _, ln in lines[-20:]) + f"\n{' '.join(argv)}: exit {p.returncode}")
    return lines, wall, usage.ru_utime + usage.ru_stime


def one_case(work: Path, model: str, tokens: int, env: dict, base: Path | None) -> dict[str, float]:
    out = work / f"cache-{model}-{tokens}"
    shutil.rmtree(out, ignore_errors=True)
    load0 = os.getloadavg()[0]
    base_est = float("nan")
    if base is not None:
        old, _, _ = _timed(_cache_argv(work, model, tokens, out) + ["--dry-run"], env, base)
        base_est = next(e for _, ln in old if (e := _estimate_line(ln)))["caching"]
    dry, dry_wall, _ = _timed(_cache_argv(work, model, tokens, out) + ["--dry-run"], env)
    est = next(e for _, ln in dry if (e := _estimate_line(ln)))
    lines, wall, cpu = _timed(_cache_argv(work, model, tokens, out), env)
    t_est = next(t for t, ln in lines if _estimate_line(ln))  # the build logs its estimate as caching starts
    shutil.rmtree(out, ignore_errors=True)
    return {"estimate": est["caching"], "low": est.get("low", est["caching"]), "high": est.get("high", est["caching"]),
            "est_command": est.get("command", float("nan")), "caching": wall - t_est, "command": wall, "cpu": cpu, "dry_run": dry_wall, "base": base_est,
            "load": (load0 + os.getloadavg()[0]) / 2}


def run(work: Path, tokens: list[int], rounds: int, base: Path | None) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    cases = [(m, n) for n in tokens for m in MODELS]
    got: dict[tuple[str, int], list[dict]] = {c: [] for c in cases}
    cols = ("base", "estimate", "low", "high", "caching", "est_command", "command", "cpu", "load")
    print("model  tokens     round " + " ".join(f"{c:>11s}" for c in cols) + "  caching/estimate")
    for r in range(rounds):
        for c in cases:
            row = one_case(work, *c, env, base)
            got[c].append(row)
            print(f"{c[0]:6s} {c[1]:>9,} {r:5d} " + " ".join(f"{row[k]:11.1f}" for k in cols)
                  + f"  {row['caching'] / row['estimate']:.2f}", flush=True)
    print(f"\nmedians over {rounds} round(s): seconds; ratio = real / estimate (1.00 = exact, within +-25%: 0.80-1.25)")
    print("| model | tokens | base estimate | ratio | estimate (range) | real caching | ratio | command estimate | "
          "real command | ratio | CPU s | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cases:
        med = {k: statistics.median(r[k] for r in got[c]) for k in got[c][0]}
        ratio = statistics.median(r["caching"] / r["estimate"] for r in got[c])
        cratio = statistics.median(r["command"] / r["est_command"] for r in got[c])
        inside = sum(r["low"] <= r["caching"] <= r["high"] for r in got[c])
        bratio = statistics.median(r["caching"] / r["base"] for r in got[c])
        print(f"| {c[0]} | {c[1]:,} | {med['base']:.0f} s | {bratio:.2f} | "
              f"{med['estimate']:.0f} s ({med['low']:.0f}-{med['high']:.0f}) | "
              f"{med['caching']:.1f} s | {ratio:.2f} | {med['est_command']:.0f} s | {med['command']:.1f} s | "
              f"{cratio:.2f} | {med['cpu']:.0f} | {med['load']:.1f} |  ({inside}/{len(got[c])} inside the range)")


def stages(work: Path, model_name: str, tokens: int) -> None:
    """One in-process build, each stage timed by wall clock and by its own thread's CPU time."""
    import resource

    import torch

    import training.cache as tc
    import training.runner as tr
    import training.writer as tw
    from saesteer.models import load_model, model_id, model_info
    from training.cache_config import CacheConfig
    from training.text import TextConfig, source_as_read

    out = work / f"stages-{model_name}"
    shutil.rmtree(out, ignore_errors=True)
    model = load_model(str(work / f"{model_name}-model"), device="cpu")
    text = TextConfig(dataset=str(work / "dataset"), text_column="content")
    source = source_as_read(text, model.tokenizer, separator_given=False)
    cfg = CacheConfig(out=str(out), hooks=[HOOK], max_tokens=tokens)
    timed: dict[str, list[tuple[float, float]]] = {}

    def wrap(owner, name, key):
        f = getattr(owner, name)

        def g(*a, **k):
            w0, c0 = time.perf_counter(), time.thread_time()
            try:
                return f(*a, **k)
            finally:
                timed.setdefault(key, []).append((time.perf_counter() - w0, time.thread_time() - c0))
        setattr(owner, name, g)

    for owner, name, key in ((tr.ActivationRunner, "run", "forward"), (tc, "fill_batch", "shard copy"),
                             (tc.Prefetcher, "_next", "tokenize (thread)"), (tw.ShardWriter, "_write", "write")):
        wrap(owner, name, key)
    check = tc._check_estimate

    def check_then_forget(*a, **k):  # the probe's own forward calls are not the build's
        est = check(*a, **k)
        timed.pop("forward", None)
        return est
    tc._check_estimate = check_then_forget
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    res = tc.build_cache(model, source.cfg, cfg, model_id=model_id(model), model_revision=model_info(model).revision,
                         progress=False, source=source)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    shutil.rmtree(out, ignore_errors=True)
    print(f"caching loop {res.seconds_caching:.1f} s of {res.seconds:.1f} s; process CPU "
          f"{r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime:.1f} s; {torch.get_num_threads()} torch threads; "
          f"load {os.getloadavg()[0]:.1f}")
    for key, rows in timed.items():
        walls = sorted(w for w, _ in rows)
        q = lambda p: walls[int(p * (len(walls) - 1))]  # noqa: E731
        print(f"{key:18s} calls {len(rows):4d}  wall {sum(walls):7.2f} s  thread CPU {sum(c for _, c in rows):7.2f} s  "
              f"first {rows[0][0]:.3f}  p10/p50/p90/max {q(.1):.3f}/{q(.5):.3f}/{q(.9):.3f}/{walls[-1]:.3f}  "
              f"mean/median {statistics.mean(walls) / max(q(.5), 1e-9):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("setup", "run", "stages"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tokens", type=int, nargs="+", default=[300_000, 1_000_000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", choices=MODELS, default="gpt2")
    ap.add_argument("--base-code", type=Path, help="another tree whose dry run's estimate is printed beside")
    a = ap.parse_args()
    if a.what == "setup":
        setup(a.work)
    elif a.what == "run":
        run(a.work, a.tokens, a.rounds, a.base_code)
    else:
        stages(a.work, a.model, a.tokens[0])


if __name__ == "__main__":
    main()
