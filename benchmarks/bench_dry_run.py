"""The cache dry run: its rate estimate against the rate the build then measures, and its duration.

For each model: `estimate_cache` (what `saesteer cache --dry-run` prints: "model forward
measured at N tokens/s"; timed around the call, so the dry run's own time after the model has
loaded), then `build_cache` with the same settings into an empty folder, whose rate is the
caching loop's tokens / seconds (tokenize + forward + copy + write, what a user waits for).

    .venv/bin/python benchmarks/bench_dry_run.py                       # toy + tiny HF GPT-2
    .venv/bin/python benchmarks/bench_dry_run.py --tokens 300000 --rounds 2

Models: the shipped toy model on the toy corpus (context 128), and a tiny HF GPT-2
(tests/helpers/tiny_hf.py, loaded through TransformerBridge like a hub model) on a local jsonl
of toy-corpus text (context 64, its n_positions).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def _toy(work: Path):
    from saesteer.models import load_model
    from training.text import TextConfig

    return load_model("toy", device="cpu"), TextConfig(dataset="toy", context_length=128), "blocks.2.hook_resid_post"


def _tiny_hf(work: Path):
    from helpers.tiny_hf import save_tiny_gpt2
    from saesteer.models import load_model
    from training.text import TextConfig, toy_corpus_files

    path = save_tiny_gpt2(work / "tiny-gpt2", n_layer=4, n_embd=128, n_head=4, n_positions=64)
    lines = []
    for f in toy_corpus_files():
        with open(f) as fh:
            for line in fh:
                lines.append(json.dumps({"text": json.loads(line)["text"]}) if line.startswith("{") else
                             json.dumps({"text": line.strip()}))
                if len(lines) >= 20000:
                    break
    data = work / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    text = TextConfig(dataset=str(data), context_length=64)
    return load_model(str(path), device="cpu"), text, "blocks.1.hook_resid_post"


def measure(model, text, hook: str, tokens: int, work: Path) -> dict:
    from saesteer.models import model_id
    from training.cache import build_cache
    from training.estimate import estimate_cache
    from training.cache_config import CacheConfig

    out = work / "cache"
    shutil.rmtree(out, ignore_errors=True)
    cfg = CacheConfig(out=str(out), hooks=[hook], max_tokens=tokens)
    t0 = time.perf_counter()
    est = estimate_cache(model, text, cfg, model_id=model_id(model))
    dry_s = time.perf_counter() - t0
    res = build_cache(model, text, cfg, model_id=model_id(model), progress=False, log=None)
    built = res.tokens_written / res.seconds_caching
    return {"estimate": est.forward_tokens_per_s, "measured": built, "ratio": est.forward_tokens_per_s / built,
            "dry_run_s": dry_s, "forward": est.forward}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", default="toy,tiny_hf")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.tokens:,} tokens per build; {args.rounds} round(s); "
          f"{torch.get_num_threads()} torch thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            model, text, hook = {"toy": _toy, "tiny_hf": _tiny_hf}[name](work)
            rows = [measure(model, text, hook, args.tokens, work) for _ in range(args.rounds)]
            for r in rows:
                print(f"{name:8} estimate {r['estimate']:9,.0f} tok/s  measured {r['measured']:9,.0f} tok/s  "
                      f"estimate/measured {r['ratio']:.2f}  dry run {r['dry_run_s']:.1f} s ({r['forward']} forward)")
            med = statistics.median(r["ratio"] for r in rows)
            print(f"{name:8} median estimate/measured {med:.2f}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
