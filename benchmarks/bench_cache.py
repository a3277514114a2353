"""Activation-cache throughput, side by side in one run (medians over interleaved rounds):

  bare     TransformerLens's forward pass alone (same tokens, same batches, same stop layer), no hooks
  fast     our fused forward (`training.fast_forward.FastForward`) alone, same batches
  ours     `training.cache.build_cache` from text: tokenize + pack, forward (`--forward`, default
           auto: the fused forward when it covers the model and passes its check), copy, fp16
           shards written by the writer thread with SHA-256 and fsync (the caching loop's wall
           time, plus the whole call with its checks and estimate)
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


READING = """Reading: this machine is shared (2 cores, other work running while measuring), so wall times swing
between rounds; CPU times are steadier, and main-thread CPU is the critical path when a core is free. Both
caches are bounded by the model's forward at this width: SAELens runs TransformerLens's `HookedTransformer.forward`
(plus a few % of its own), and so did ours before. Ours now runs its own fused forward
(`training/fast_forward.py`): `F.layer_norm`, one `F.linear` on QKV weights stacked once,
`F.scaled_dot_product_attention(is_causal=True)` instead of TL's explicit [B, H, L, L] mask / `where` /
divide / softmax / NaN scrub, and `torch.addmm` MLPs, stopping after the last needed block. It gives the same
activations up to rounding (checked against TL on a probe batch before use, and in the tests at every supported
hook point for GPT-2-, Pythia-, GPT-J- and LLaMA-style configs), so "overhead over the bare forward" is now
negative against TL's forward and is measured against our own bare fused forward. The rest of our work
(reading JSON, tokenizing, SHA-256 at ~210 MB/s without SHA-NI, writing) runs in two background threads, so it
costs wall time only when no core is free. Fixed costs of our whole call (dataset open ~2 s, model
fingerprint, the probe check, the timed forward passes of the estimate) matter only for small runs."""


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


class Timing(dict):
    """wall: elapsed seconds; cpu: process CPU seconds (all threads); main: main-thread CPU seconds."""


class _Clock:
    def __enter__(self):
        self.w, self.c, self.m = time.perf_counter(), time.process_time(), time.thread_time()
        return self

    def __exit__(self, *exc):
        self.t = Timing(wall=time.perf_counter() - self.w, cpu=time.process_time() - self.c,
                        main=time.thread_time() - self.m)


def run_bare(model, tokens, stop, bs) -> Timing:
    import torch

    t = torch.from_numpy(tokens)
    with _Clock() as clk, torch.inference_mode():
        for i in range(0, len(t), bs):
            model(t[i:i + bs], return_type=None, stop_at_layer=stop)
    return clk.t


def run_fast(ff, tokens, bs) -> Timing:
    import torch

    t = torch.from_numpy(tokens)
    with _Clock() as clk:
        for i in range(0, len(t), bs):
            ff(t[i:i + bs])
    return clk.t


def run_ours(model, text, hook, n_tokens, bs, shard_contexts, out: Path, forward: str = "auto"):
    """(caching loop Timing, whole call Timing, bytes on disk)."""
    import training.cache as cache
    from training.cache import build_cache
    from training.cache_config import CacheConfig

    shutil.rmtree(out, ignore_errors=True)
    cfg = CacheConfig(out=str(out), hooks=[hook], dtype="fp16", batch_size=bs, max_tokens=n_tokens,
                      shard_contexts=shard_contexts, exclude_tokens="none", forward=forward)
    loop = {}
    real = cache._run_build

    def timed(*a, **k):  # benchmark-only instrumentation of the caching loop
        with _Clock() as clk:
            r = real(*a, **k)
        loop["t"] = clk.t
        return r

    cache._run_build = timed
    try:
        with _Clock() as whole:
            build_cache(model, text, cfg, progress=False, log=None)
    finally:
        cache._run_build = real
    return loop["t"], whole.t, dir_bytes(out)


def run_saelens(model, tokens, hook, d_in, bs, shard_contexts, out: Path, text_files: list[str] | None = None):
    """SAELens on the same contexts given pre-tokenized, or (text_files) on the same jsonl text,
    which it then tokenizes and packs itself (BOS first in every context, as ours)."""
    import datasets
    import sae_lens.cache_activations_runner as car
    from sae_lens.config import CacheActivationsRunnerConfig

    shutil.rmtree(out, ignore_errors=True)
    N, L = tokens.shape
    if text_files is None:
        ds = datasets.Dataset.from_dict({"input_ids": tokens.tolist()})
    else:
        ds = datasets.load_dataset("json", data_files=text_files, split="train", streaming=True).select_columns(["text"])
    cfg = CacheActivationsRunnerConfig(
        dataset_path="pretokenized-in-memory", model_name="bench-model", model_batch_size=bs, hook_name=hook,
        d_in=d_in, training_tokens=N * L, context_size=L, new_cached_activations_path=str(out), shuffle=False,
        dtype="float16", device="cpu", buffer_size_gb=shard_contexts * L * d_in * 2 / 1e9,
        prepend_bos=text_files is not None, streaming=text_files is not None,
    )
    real = car.load_model
    car.load_model = lambda *a, **k: model  # feed it our already loaded model
    try:
        runner = car.CacheActivationsRunner(cfg, override_dataset=ds)
    finally:
        car.load_model = real
    with _Clock() as clk:
        runner.run()
    return clk.t, dir_bytes(out)


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
    from results_md import replace_section

    replace_section("## Activation cache", section, path)


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
    ap.add_argument("--forward", choices=["auto", "transformer_lens", "fast"], default="auto",
                    help="our cache's forward pass (CacheConfig.forward)")
    ap.add_argument("--no-saelens", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from training.fast_forward import FastForward
    from training.manifest import read_manifest
    from training.packing import open_packer
    from training.text import TextConfig, resolve_data

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
        text_files = [str(p) for p in resolve_data(text).files]
        tokens, _ = open_packer(text, tok).take(args.contexts)
        tokens = np.ascontiguousarray(tokens)
        N = len(tokens)
        if N < args.contexts:
            print(f"corpus gave only {N} contexts", file=sys.stderr)
        n_tok = N * L
        print(f"{label}; {N} contexts x {L} tokens = {n_tok:,} tokens per run, batch {bs}, hook {hook} "
              f"(stop_at_layer {stop}), fp16, torch threads {torch.get_num_threads()}", flush=True)

        load0 = os.getloadavg()[0]
        ff = FastForward(model, [hook])
        # warm-up (imports, allocator, first-call costs) of every variant
        run_bare(model, tokens[:bs], stop, bs)
        run_fast(ff, tokens[:bs], bs)
        run_ours(model, text, hook, bs * L, bs, args.shard_contexts, work / "ours", args.forward)
        forward_used = read_manifest(work / "ours").forward
        if not args.no_saelens:
            run_saelens(model, tokens[: 2 * bs], hook, d_in, bs, bs, work / "sl")
            run_saelens(model, tokens[: 2 * bs], hook, d_in, bs, bs, work / "sl", text_files=text_files)

        res: dict[str, list[Timing]] = {"bare": [], "fast": [], "ours": [], "ours_total": [], "saelens": [], "saelens_text": []}
        bytes_ours = bytes_sl = 0
        for r in range(args.runs):
            variants = ["bare", "fast", "ours", "saelens", "saelens_text"]
            order = variants[r % 5:] + variants[:r % 5]
            for v in order:
                if v == "bare":
                    res["bare"].append(run_bare(model, tokens, stop, bs))
                elif v == "fast":
                    res["fast"].append(run_fast(ff, tokens, bs))
                elif v == "ours":
                    loop, total, bytes_ours = run_ours(model, text, hook, n_tok, bs, args.shard_contexts, work / "ours", args.forward)
                    res["ours"].append(loop)
                    res["ours_total"].append(total)
                elif v == "saelens" and not args.no_saelens:
                    t, bytes_sl = run_saelens(model, tokens, hook, d_in, bs, args.shard_contexts, work / "sl")
                    res["saelens"].append(t)
                elif v == "saelens_text" and not args.no_saelens:
                    t, _ = run_saelens(model, tokens, hook, d_in, bs, args.shard_contexts, work / "sl", text_files=text_files)
                    res["saelens_text"].append(t)
            print(f"round {r + 1}/{args.runs}: " + ", ".join(
                f"{k} {v[-1]['wall']:.2f}s (cpu {v[-1]['cpu']:.2f}, main {v[-1]['main']:.2f})" for k, v in res.items() if v), flush=True)

        names = [k for k in ("bare", "fast", "ours", "ours_total", "saelens", "saelens_text") if res[k]]
        med = {k: {m: statistics.median(t[m] for t in res[k]) for m in ("wall", "cpu", "main")} for k in names}

        def per_round(num: str, den: str, m: str) -> tuple[float, float, float, float]:
            # each round's variants ran back to back: compare within rounds, then take the median;
            # also the ratio of the best (least disturbed) runs
            r = [a[m] / b[m] for a, b in zip(res[num], res[den])]
            best = min(t[m] for t in res[num]) / min(t[m] for t in res[den])
            return statistics.median(r), min(r), max(r), best

        def pct(x) -> str:
            return f"{(x[0] - 1) * 100:+.1f}% ({(x[1] - 1) * 100:+.0f}%..{(x[2] - 1) * 100:+.0f}%; best runs {(x[3] - 1) * 100:+.1f}%)"

        def times(x) -> str:
            return f"{x[0]:.2f}x ({x[1]:.2f}..{x[2]:.2f}; best runs {x[3]:.2f}x)"

        read1, read2 = reader_rows_per_s(work / "ours", hook)
        label_of = {
            "bare": "bare TransformerLens forward (no hooks)",
            "fast": "bare fused forward (`training.fast_forward`)",
            "ours": f"ours: caching loop (tokenize, {forward_used} forward, copy, write + SHA-256 + fsync)",
            "ours_total": "ours: whole `build_cache` call (+ checks, dataset open, estimate)",
            "saelens": "SAELens `CacheActivationsRunner.run()` (same contexts, pre-tokenized)",
            "saelens_text": "SAELens `CacheActivationsRunner.run()` (same jsonl text, it tokenizes)",
        }
        lines = [
            "## Activation cache",
            "",
            f"`.venv/bin/python benchmarks/bench_cache.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"),
            f"({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end)",
            "",
            f"Model: {label}. {N} contexts x {L} tokens = {n_tok:,} tokens per run, batch {bs} contexts, "
            f"hook `{hook}` (forward stops after block {layer}), fp16 storage, shards of {args.shard_contexts} contexts; "
            f"our cache ran with `forward={args.forward}`, which used the {forward_used} forward. "
            f"{args.runs} interleaved rounds (variant order rotates). wall = elapsed; cpu = process CPU time, all threads "
            "(total work); main = CPU time of the main thread (the critical path when another core is free).",
            "",
            "| variant | wall s | tokens/s (wall) | cpu s | main-thread cpu s | tokens/s (main cpu) |",
            "|---|---|---|---|---|---|",
        ]
        for k in names:
            m = med[k]
            lines.append(f"| {label_of[k]} | {m['wall']:.2f} | {n_tok / m['wall']:,.0f} | {m['cpu']:.2f} | {m['main']:.2f} | {n_tok / m['main']:,.0f} |")
        lines += [
            "",
            "Ratios: median of per-round ratios (min..max over rounds; then the ratio of the best run of each variant).",
            "",
            f"- Our caching loop over the bare TransformerLens forward (goal < 10%, aim 5%): wall {pct(per_round('ours', 'bare', 'wall'))}, "
            f"main-thread cpu {pct(per_round('ours', 'bare', 'main'))}, total cpu {pct(per_round('ours', 'bare', 'cpu'))}; "
            f"whole call wall {pct(per_round('ours_total', 'bare', 'wall'))}.",
            f"- Our caching loop over our own bare fused forward: wall {pct(per_round('ours', 'fast', 'wall'))}, "
            f"main-thread cpu {pct(per_round('ours', 'fast', 'main'))}, total cpu {pct(per_round('ours', 'fast', 'cpu'))}.",
            f"- Fused forward vs TransformerLens's forward, tokens/s: wall {times(per_round('bare', 'fast', 'wall'))}, "
            f"cpu {times(per_round('bare', 'fast', 'cpu'))}.",
        ]
        if res["saelens"]:
            lines += [
                f"- SAELens overhead over the bare forward: wall {pct(per_round('saelens', 'bare', 'wall'))}, "
                f"main-thread cpu {pct(per_round('saelens', 'bare', 'main'))}, total cpu {pct(per_round('saelens', 'bare', 'cpu'))}.",
                f"- Ours (caching loop) vs SAELens tokens/s (goal >= 1.3x): wall {times(per_round('saelens', 'ours', 'wall'))}, "
                f"main-thread cpu {times(per_round('saelens', 'ours', 'main'))}, total cpu {times(per_round('saelens', 'ours', 'cpu'))}; "
                f"whole call wall {times(per_round('saelens', 'ours_total', 'wall'))}.",
                f"- Both from text (ours tokenizes in a background thread, SAELens in its loop): ours (caching loop) vs SAELens "
                f"wall {times(per_round('saelens_text', 'ours', 'wall'))}, main-thread cpu "
                f"{times(per_round('saelens_text', 'ours', 'main'))}, total cpu {times(per_round('saelens_text', 'ours', 'cpu'))}.",
                f"- Bytes on disk per token: ours {bytes_ours / n_tok:.1f} (fp16 activations {2 * d_in}, token id 4, position 4, "
                f"context index 8, context tokens 4, headers, manifest), SAELens {bytes_sl / n_tok:.1f}.",
            ]
        else:
            lines.append(f"- Bytes on disk per token: ours {bytes_ours / n_tok:.1f}.")
        lines.append("- Wall seconds per round: " + "; ".join(f"{k} " + ", ".join(f"{t['wall']:.1f}" for t in res[k]) for k in names) + ".")
        lines.append(f"- Our reader over this cache (batch 4096, fp16 -> fp32, no training in between): {read1:,.0f} rows/s in the "
                     f"first epoch (SHA-256 check of every shard), {read2:,.0f} rows/s after.")
        lines += ["", READING]
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
