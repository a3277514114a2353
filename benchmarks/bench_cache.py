"""Activation-cache throughput, side by side in one run (medians over interleaved rounds):

  bare     the model's forward pass alone (same tokens, same batches, same stop layer), no hooks
  ours     `training.cache.build_cache` from text: tokenize + pack, forward, copy, fp16 shards
           written by the writer thread with SHA-256 and fsync (the caching loop's wall time,
           plus the whole call with its checks and estimate)
  saelens  SAELens's `CacheActivationsRunner.run()` on the same model object, the same contexts
           (given to it pre-tokenized) and dtype, writing its HF-datasets shards (shuffle off)

plus bytes on disk per token for both, and our reader's rows/s over the finished cache.
Results go to benchmarks/RESULTS.md under "## Activation cache".

    .venv/bin/python benchmarks/bench_cache.py                # toy model if available, else tiny
    .venv/bin/python benchmarks/bench_cache.py --model tiny --contexts 128 --runs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # helpers.tiny_model
sys.path.insert(0, str(REPO))


def load_model(kind: str, workdir: Path):
    """(model, tokenizer, corpus path, label)."""
    if kind in ("auto", "toy"):
        try:
            from saesteer.models import load_model as resolve
            from training.text import toy_corpus_files

            model = resolve("toy")
            files = toy_corpus_files()
            return model, model.tokenizer, str(files[0].parent if len(files) > 1 else files[0]), "toy model (saesteer.models.load_model('toy')), toy corpus"
        except Exception as e:  # toyworld not there yet
            if kind == "toy":
                raise
            print(f"toy model unavailable ({type(e).__name__}: {e}); using the tiny test model", file=sys.stderr)
    from helpers.tiny_model import make_model, make_tokenizer, write_corpus

    tok = make_tokenizer()
    model = make_model(tok, d_model=256, n_layers=4, n_ctx=128, n_heads=4, seed=0)
    corpus = workdir / "corpus"
    write_corpus(corpus, n_docs=4000, seed=0, n_files=4)
    return model, tok, str(corpus), "tiny test model (random HookedTransformer, d_model 256, 4 layers, d_mlp 1024), generated corpus"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_bare(model, tokens, stop, bs) -> float:
    import torch

    t = torch.from_numpy(tokens)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(t), bs):
            model(t[i:i + bs], return_type=None, stop_at_layer=stop)
    return time.perf_counter() - t0


def run_ours(model, text, hook, n_tokens, bs, shard_contexts, out: Path):
    from training.cache import CacheConfig, build_cache

    shutil.rmtree(out, ignore_errors=True)
    cfg = CacheConfig(out=str(out), hooks=[hook], dtype="fp16", batch_size=bs, max_tokens=n_tokens,
                      shard_contexts=shard_contexts, exclude_tokens="none")
    res = build_cache(model, text, cfg, progress=False, log=None)
    return res.seconds_caching, res.seconds, dir_bytes(out)


def run_saelens(model, tokens, hook, d_in, bs, shard_contexts, out: Path):
    import datasets
    import sae_lens.cache_activations_runner as car
    from sae_lens.config import CacheActivationsRunnerConfig

    shutil.rmtree(out, ignore_errors=True)
    N, L = tokens.shape
    ds = datasets.Dataset.from_dict({"input_ids": tokens.tolist()})
    cfg = CacheActivationsRunnerConfig(
        dataset_path="pretokenized-in-memory", model_name="bench-model", model_batch_size=bs, hook_name=hook,
        d_in=d_in, training_tokens=N * L, context_size=L, new_cached_activations_path=str(out), shuffle=False,
        dtype="float16", device="cpu", buffer_size_gb=shard_contexts * L * d_in * 2 / 1e9, prepend_bos=False,
        streaming=False,
    )
    real = car.load_model
    car.load_model = lambda *a, **k: model  # feed it our already loaded model
    try:
        runner = car.CacheActivationsRunner(cfg, override_dataset=ds)
    finally:
        car.load_model = real
    t0 = time.perf_counter()
    runner.run()
    return time.perf_counter() - t0, dir_bytes(out)


def reader_rows_per_s(path: Path, hook: str) -> tuple[float, float]:
    from training.reader import CacheReader

    r = CacheReader(path, 4096, hook=hook, seed=0, epochs=2, buffer_rows=1 << 16)
    per_epoch = r.rows_per_epoch
    t0 = time.perf_counter()
    n = 0
    times = []
    for b in r:
        n += len(b.acts)
        if n >= per_epoch and not times:
            times.append(time.perf_counter() - t0)
            t1 = time.perf_counter()
            n2_start = n
    times.append(time.perf_counter() - t1)
    return per_epoch / times[0], (n - n2_start) / max(times[1], 1e-9)


def update_results(section: str, path: Path = REPO / "benchmarks" / "RESULTS.md") -> None:
    head = "## Activation cache"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + section.rstrip() + "\n" + (text[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["auto", "toy", "tiny"], default="auto")
    ap.add_argument("--contexts", type=int, default=256, help="contexts per run")
    ap.add_argument("--context-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shard-contexts", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--layer", type=int, default=None, help="cache blocks.<layer>.hook_resid_post (default: n_layers // 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--no-saelens", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from training.text import TextConfig, open_packer

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    try:
        model, tok, corpus, label = load_model(args.model, work)
        L, bs = args.context_length, args.batch_size
        layer = model.cfg.n_layers // 2 if args.layer is None else args.layer
        hook = f"blocks.{layer}.hook_resid_post"
        stop = layer + 1
        d_in = model.cfg.d_model
        text = TextConfig(dataset=corpus, context_length=L)
        tokens, _ = open_packer(text, tok).take(args.contexts)
        tokens = np.ascontiguousarray(tokens)
        N = len(tokens)
        if N < args.contexts:
            print(f"corpus gave only {N} contexts", file=sys.stderr)
        n_tok = N * L
        print(f"{label}; {N} contexts x {L} tokens = {n_tok:,} tokens per run, batch {bs}, hook {hook} "
              f"(stop_at_layer {stop}), fp16, torch threads {torch.get_num_threads()}", flush=True)

        # warm-up (imports, allocator, first-call costs) of every variant
        run_bare(model, tokens[:bs], stop, bs)
        run_ours(model, text, hook, bs * L, bs, args.shard_contexts, work / "ours")
        if not args.no_saelens:
            run_saelens(model, tokens[: 2 * bs], hook, d_in, bs, bs, work / "sl")

        res: dict[str, list[float]] = {"bare": [], "ours": [], "ours_total": [], "saelens": []}
        bytes_ours = bytes_sl = 0
        for r in range(args.runs):
            order = ["bare", "ours", "saelens"][r % 3:] + ["bare", "ours", "saelens"][:r % 3]
            for v in order:
                if v == "bare":
                    res["bare"].append(run_bare(model, tokens, stop, bs))
                elif v == "ours":
                    loop, total, bytes_ours = run_ours(model, text, hook, n_tok, bs, args.shard_contexts, work / "ours")
                    res["ours"].append(loop)
                    res["ours_total"].append(total)
                elif not args.no_saelens:
                    t, bytes_sl = run_saelens(model, tokens, hook, d_in, bs, args.shard_contexts, work / "sl")
                    res["saelens"].append(t)
            print(f"round {r + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.items() if v), flush=True)

        med = {k: statistics.median(v) for k, v in res.items() if v}
        tps = {k: n_tok / v for k, v in med.items()}
        # per-round ratios (each round's variants ran back to back), then their median
        overhead = statistics.median(o / b - 1 for o, b in zip(res["ours"], res["bare"]))
        overhead_total = statistics.median(o / b - 1 for o, b in zip(res["ours_total"], res["bare"]))
        read1, read2 = reader_rows_per_s(work / "ours", hook)
        lines = [
            "## Activation cache",
            "",
            f"`.venv/bin/python benchmarks/bench_cache.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"),
            f"({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average at end {os.getloadavg()[0]:.1f})",
            "",
            f"Model: {label}. {N} contexts x {L} tokens = {n_tok:,} tokens per run, batch {bs} contexts, "
            f"hook `{hook}` (forward stops after block {layer}), fp16 storage, shards of {args.shard_contexts} contexts. "
            f"Medians of {args.runs} interleaved rounds.",
            "",
            "| variant | median s | tokens/s | vs bare forward |",
            "|---|---|---|---|",
            f"| bare forward (no hooks) | {med['bare']:.2f} | {tps['bare']:,.0f} | 1.00 |",
            f"| ours: caching loop (tokenize, forward, copy, write+SHA-256+fsync) | {med['ours']:.2f} | {tps['ours']:,.0f} | {med['ours'] / med['bare']:.3f} |",
            f"| ours: whole `build_cache` call (+ checks, estimate) | {med['ours_total']:.2f} | {tps['ours_total']:,.0f} | {med['ours_total'] / med['bare']:.3f} |",
        ]
        if res["saelens"]:
            lines.append(f"| SAELens `CacheActivationsRunner.run()` (pre-tokenized input) | {med['saelens']:.2f} | {tps['saelens']:,.0f} | {med['saelens'] / med['bare']:.3f} |")
        lines += [
            "",
            f"- Cache overhead over the bare forward (median of per-round ratios): caching loop {overhead * 100:+.1f}%, whole call {overhead_total * 100:+.1f}% (goal < 10%, aim 5%).",
        ]
        if res["saelens"]:
            lines.append(f"- Ours vs SAELens tokens/s: {med['saelens'] / med['ours']:.2f}x (caching loop), {med['saelens'] / med['ours_total']:.2f}x (whole call) (goal >= 1.3x).")
            lines.append(f"- Bytes on disk per token: ours {bytes_ours / n_tok:.1f} (fp16 activations {2 * d_in} + token id, position, context index, context tokens, header, manifest), SAELens {bytes_sl / n_tok:.1f}.")
        else:
            lines.append(f"- Bytes on disk per token: ours {bytes_ours / n_tok:.1f}.")
        lines.append(f"- Our reader over this cache (batch 4096, fp16 -> fp32): {read1:,.0f} rows/s in the first epoch (SHA-256 check of every shard), {read2:,.0f} rows/s after.")
        section = "\n".join(lines) + "\n"
        print("\n" + section)
        if not args.no_write:
            update_results(section)
            print(f"written to {REPO / 'benchmarks' / 'RESULTS.md'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
