"""Feature-store benchmarks; results go to benchmarks/RESULTS.md under "## Feature store".

    python benchmarks/bench_features.py throughput [--tokens 262144] [--runs 3]
        Build-pass throughput at d_in 512, d_sae 8192, k 32 (the perf-notes shape) on activations
        with real sparse structure, next to the SAE encoder alone over the same rows.
    python benchmarks/bench_features.py rate       (after toy: caching vs the pass, alternated)
    python benchmarks/bench_features.py toy [--sae arch=batchtopk,layer=1,k=8,tokens=32M ...]
        The toy world's concept recovery: cache the toy model once (train and validation text, every
        layer asked for), train each --sae setting alone on that cache (reused when already trained),
        and for every ground-truth concept the best single latent's F1 on the validation text; reports
        per SAE and per concept family the share of concepts at F1 >= 0.8, the linear ceiling at each
        hook (the best single direction, `evals.ceiling`) and why the best SAE's concepts fail
        (benchmarks/toy_concepts.py, toy_tables.py).

Medians of several runs where it matters; the machine is shared, so the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


class SparseActivations:
    """x = sum over ~K active ground-truth directions of magnitude * direction, + noise, with
    power-law direction frequencies (like a trained SAE's latents), scaled so E||x||^2 = d_in."""

    def __init__(self, d_in: int, n_features: int, mean_active: int, noise: float = 0.05, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        dirs = torch.randn(n_features, d_in, generator=g)
        self.dirs_TD = dirs / dirs.norm(dim=1, keepdim=True)
        p = 1.0 / (torch.arange(n_features, dtype=torch.float64) + 20.0) ** 0.7
        self.prob_T = (p / p.sum()).float()
        self.K, self.noise, self.d_in, self.scale = mean_active, noise, d_in, 1.0
        probe = self.sample(4096, torch.Generator().manual_seed(seed + 1))
        self.scale = math.sqrt(d_in / float(probe.pow(2).sum(1).mean()))

    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        idx = torch.multinomial(self.prob_T, n * self.K, replacement=True, generator=g)
        mag = torch.rand(n * self.K, generator=g) * 1.5 + 0.25
        x = torch.nn.functional.embedding_bag(idx, self.dirs_TD, torch.arange(0, n * self.K, self.K), mode="sum",
                                              per_sample_weights=mag)
        return (x + self.noise * torch.randn(n, self.d_in, generator=g)) * self.scale

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
HEADING = "## Feature store"


def write_section(key: str, text: str) -> None:
    """Replace (or add) the block `<!-- key -->...<!-- /key -->` inside our section of RESULTS.md."""
    from results_md import replace_block

    replace_block(HEADING, key, text, RESULTS)


# ---------------------------------------------------------------------------------------------
def throughput(args) -> None:
    import saes
    from features import BuildConfig, TensorSource, build_feature_store

    D, F, k, L = 512, 8192, 32, 128
    n_ctx = args.tokens // L
    data = SparseActivations(D, F, mean_active=24, seed=0)
    g = torch.Generator().manual_seed(1)
    acts = torch.cat([data.sample(4096, g) for _ in range(-(-n_ctx * L // 4096))])[: n_ctx * L].half()
    ctx = torch.randint(0, 50000, (n_ctx, L), generator=g)
    src = TensorSource(acts, ctx, contexts_per_chunk=1024, name="sparse-features")
    # an SAE whose latents are the ground-truth directions: power-law firing like a trained SAE
    sae = saes.create_sae("topk", D, F, k=k)
    with torch.no_grad():
        sae.W_dec.copy_(data.dirs_TD * 1.0)
        sae.W_enc.copy_(data.dirs_TD.T * (1 / data.scale))
        sae.b_dec.zero_()
        sae.b_enc.zero_()
    sae.eval()
    cfg = BuildConfig(checkpoint_rows=0)
    enc, pas, total = [], [], []
    load0 = load_average()
    for run in range(args.runs):
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in src.batches(0, cfg.batch_rows // L):
                sae.encode_sparse(b.acts_BD.float())
        enc.append(time.perf_counter() - t0)
        path = Path(args.work) / f"tp{run}.db"
        for p in path.parent.glob(path.name + "*"):
            p.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        res = build_feature_store(path, sae, src, cfg, progress=False)
        pas.append(res.pass_seconds)
        total.append(res.total_seconds)
        print(f"run {run}: encode alone {src.n_rows / enc[-1]:,.0f} tok/s, pass {res.tokens_per_s:,.0f} tok/s, "
              f"build total {res.total_seconds:.1f} s, state {res.state_bytes / 2**20:.0f} MiB", flush=True)
    e, p, t = statistics.median(enc), statistics.median(pas), statistics.median(total)
    text = f"""### Build pass throughput (synthetic)

Machine: 2 CPU cores (shared; load average {load0} before, {load_average()} after), torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}.
TopK SAE d_in {D}, d_sae {F}, k {k}, fp32; {src.n_rows:,} tokens (contexts of {L}) of sparse power-law activations
(sparse sums of power-law-frequent directions plus noise; the SAE's latents are those directions, so firing is
power-law like a trained SAE's); default BuildConfig (top 20, 32 sampled firings with co-activation sets, 1024-row negative pool, 64-bin
histograms, window 24+1+8). Median of {args.runs} runs. `python benchmarks/bench_features.py throughput`

| | tokens/s | seconds |
|---|---|---|
| SAE encoder alone (`encode_sparse` over the same batches) | {src.n_rows / e:,.0f} | {e:.1f} |
| build pass (encoder + all statistics and samples) | {src.n_rows / p:,.0f} | {p:.1f} |
| whole build (pass + neighbours + writing {F} latents to SQLite) | {src.n_rows / t:,.0f} | {t:.1f} |

The pass costs {p / e:.2f}x the encoder alone: the per-latent bookkeeping adds {100 * (p - e) / e:.0f}% on top of the encoder
(its first batches are the dearest: every latent's top-k and sample are filling; later only entrants cost anything).
Pass state: {res.state_bytes / 2**20:.0f} MiB, independent of the number of tokens."""
    write_section("throughput", text)
    print(text)


# ---------------------------------------------------------------------------------------------
DEFAULT_TOY_SAES = (
    # the first version of this table: TopK and Matryoshka at blocks.2, width-rule LR, 8M tokens
    "arch=topk", "arch=matryoshka",
    # TopK, one change at a time (defaults: d_sae 1024, k 16, 8M tokens): LR, layer, length, k, width
    "lr=2e-3", "layer=1,lr=2e-3", "layer=0,lr=2e-3", "layer=1", "layer=1,lr=5e-4",
    "layer=1,lr=2e-3,tokens=2M", "layer=1,lr=2e-3,tokens=32M",
    "layer=1,lr=2e-3,k=8,tokens=2M", "layer=1,lr=2e-3,k=32,tokens=2M", "layer=1,lr=2e-3,k=64,tokens=2M",
    "layer=1,lr=2e-3,k=8", "layer=1,lr=2e-3,d_sae=4096,tokens=2M",
    # BatchTopK and Matryoshka at the better LR
    "layer=1,lr=2e-3,arch=batchtopk", "layer=1,lr=2e-3,arch=batchtopk,k=8", "layer=1,lr=2e-3,arch=batchtopk,d_sae=2048",
    "layer=1,lr=2e-3,arch=batchtopk,tokens=32M",
    "layer=0,lr=2e-3,arch=batchtopk", "layer=0,lr=2e-3,arch=batchtopk,tokens=32M", "layer=0,lr=2e-3,arch=batchtopk,tokens=64M",
    "layer=1,lr=2e-3,arch=matryoshka", "layer=1,lr=2e-3,arch=matryoshka,widths=32/128/1024",
    # JumpReLU (no k: its L0 comes from the penalty), blocks.0
    "layer=0,arch=jumprelu", "layer=0,lr=2e-3,arch=jumprelu", "layer=0,lr=2e-3,arch=jumprelu,l0_coefficient=0.1",
)


CACHE_LAYERS = (0, 1, 2)  # the toy cache holds these layers' residual stream (one forward for all)


def toy(args) -> None:
    """Concept recovery in the toy world for every --sae setting (benchmarks/toy_concepts.py)."""
    import toyworld
    from toy_concepts import ToySAE, cache_tokens, ceiling_for_layer, parse_sae, score_one, train_one
    from toy_tables import toy_section

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    defaults = ToySAE(d_sae=args.d_sae, k=args.k, layer=args.layer, tokens=args.sae_tokens)
    specs = [parse_sae(s, defaults) for s in (args.sae or DEFAULT_TOY_SAES)]
    layers = sorted({s.layer for s in specs} | set(args.ceiling_layers or []))
    if not set(layers) <= set(CACHE_LAYERS):
        raise SystemExit(f"toy: layers {layers} asked for; the cache holds layers {CACHE_LAYERS} (--sae layer=, --ceiling-layers)")
    names = list(toyworld.CONCEPTS)
    load0 = load_average()
    caches = cache_tokens(work, CACHE_LAYERS, args.train_tokens, args.eval_tokens)
    scored = []
    for spec in specs:
        record = train_one(spec, caches["train"], work)
        scored.append(score_one(spec, record, caches["validation"], work, names, args.min_positives))
        f1 = [m.f1 for m in scored[-1].best.values()]
        print(f"{spec.label}: {sum(f >= 0.8 for f in f1)}/{len(f1)} concepts at F1 >= 0.8, "
              f"mean {statistics.fmean(f1):.3f}; trained in {record['cpu_s']:.0f} CPU s", flush=True)
    ceilings = {} if args.no_ceiling else {
        layer: ceiling_for_layer(layer, caches, work, names, args.ceiling_rows, args.min_positives) for layer in layers}
    command = "python benchmarks/bench_features.py toy" + "".join(f" --sae {s}" for s in (args.sae or []))
    text = toy_section(scored, ceilings, command=command.strip(), load=(load0, load_average()),
                       threads=torch.get_num_threads(), cache_rows=args.train_tokens, eval_rows=_rows(caches["validation"]))
    if args.write:
        write_section("toy", text)
    print(text)


def _rows(cache: Path) -> int:
    return int(json.loads((cache / "manifest.json").read_text())["totals"]["rows"])


def rate(args) -> None:
    """Caching vs the feature pass on the toy world, alternated in one time window."""
    import shutil

    import saes as saes_pkg
    from features import BuildConfig, CacheSource, build_feature_store
    from saesteer.models import load_model
    from training.cache import build_cache
    from training.cache_config import CacheConfig
    from training.text import TextConfig

    work = Path(args.work)
    hook = "blocks.2.hook_resid_post"
    model = load_model("toy", device="cpu")
    from toy_concepts import ToySAE

    topk = ToySAE(d_sae=args.d_sae, k=args.k, layer=2, tokens=args.sae_tokens)  # the toy table's first row
    sae = saes_pkg.load_sae(work / "runs" / topk.slug / "saes" / "sae").eval()
    load0 = load_average()
    cache_t, pass_t, enc_t, rows = [], [], [], 0
    for rep in range(args.runs):
        d = work / f"rate-cache-{rep}"
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        build_cache(model, TextConfig(dataset="toy", split="validation", context_length=128),
                    CacheConfig(out=str(d), hooks=[hook], max_tokens=args.eval_tokens), progress=False, log=lambda *a: None)
        cache_t.append(time.perf_counter() - t0)
        src = CacheSource(d, hook=hook)
        rows = src.n_rows
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in src.batches(0, 32):
                sae.encode_sparse(b.acts_BD.float())
        enc_t.append(time.perf_counter() - t0)
        res = build_feature_store(work / f"rate-{rep}.db", sae, src, BuildConfig(checkpoint_rows=0), overwrite=True, progress=False)
        pass_t.append(res.pass_seconds)
        print(f"rep {rep}: caching {rows / cache_t[-1]:,.0f} tok/s, encoder alone {rows / enc_t[-1]:,.0f}, pass {res.tokens_per_s:,.0f}", flush=True)
    big = CacheSource(work / "cache-train", hook=hook)
    res_big = build_feature_store(work / "rate-train.db", sae, big, BuildConfig(checkpoint_rows=0), overwrite=True, progress=False)
    c, e, p = (statistics.median(x) for x in (cache_t, enc_t, pass_t))
    text = f"""### Toy world: caching vs the feature pass

Machine: 2 CPU cores (shared; load average {load0} before, {load_average()} after), torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}.
The shipped toy model (4 layers, d_model 128), hook `{hook}`, the TopK SAE above (d_sae {sae.cfg.d_sae}, k {sae.cfg.k});
the validation split ({rows:,} cached tokens) cached and then passed over, alternately, {args.runs} times (medians).
`python benchmarks/bench_features.py rate` (after `toy`)

| step | tokens/s |
|---|---|
| caching the toy model (`build_cache`: tokenize, forward to layer 2, fp16 shards with SHA-256) | {rows / c:,.0f} |
| SAE encoder alone over that cache | {rows / e:,.0f} |
| feature-store pass over it (reads + checks shards, encodes, all statistics) | {rows / p:,.0f} |
| feature-store pass over the {big.n_rows:,}-token train cache (steady state) | {res_big.tokens_per_s:,.0f} |

On {rows:,} tokens the pass takes {p / c:.2f}x the caching time; most of it is the fixed cost of the first
batches (every latent's top-k and sample filling). Over the 2M-token cache it runs at {res_big.tokens_per_s:,.0f} tokens/s.
The toy model is tiny (~1.6 MFLOP per token to layer 2, d_sae/d_model = 8): for a real LM, whose forward to the hook
costs 100-1000x more per token, the pass is a small fraction of caching."""
    write_section("rate", text)
    print(text)


def main() -> None:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["throughput", "toy", "rate", "all"])
    ap.add_argument("--tokens", type=int, default=262144)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--train-tokens", type=int, default=2_000_000, help="toy: tokens of the train cache")
    ap.add_argument("--eval-tokens", type=int, default=400_000, help="toy: tokens of the validation cache (the split holds ~82k)")
    ap.add_argument("--sae-tokens", type=int, default=8_000_000, help="toy: training tokens per SAE (default of --sae tokens=)")
    ap.add_argument("--d-sae", type=int, default=1024, help="toy: default of --sae d_sae=")
    ap.add_argument("--k", type=int, default=16, help="toy: default of --sae k=")
    ap.add_argument("--layer", type=int, default=2, help="toy: default of --sae layer= (hook blocks.<layer>.hook_resid_post)")
    ap.add_argument("--sae", action="append", metavar="KEY=VALUE,...",
                    help="toy: one SAE setting, e.g. arch=batchtopk,d_sae=2048,k=8,lr=2e-3,layer=1,tokens=32M,widths=64/256/2048 "
                         "(repeatable; keys not given take the defaults above; default: the sweep in DEFAULT_TOY_SAES)")
    ap.add_argument("--ceiling-layers", type=int, nargs="*", help="toy: more layers to give the linear ceiling of")
    ap.add_argument("--ceiling-rows", type=int, default=40_000, help="toy: train rows the ceiling's probes are fitted on")
    ap.add_argument("--no-ceiling", action="store_true", help="toy: skip the linear ceiling")
    ap.add_argument("--no-write", dest="write", action="store_false", help="toy: print the section, leave RESULTS.md alone")
    ap.add_argument("--min-positives", type=int, default=20)
    ap.add_argument("--work", default="/tmp/saesteer-bench-features")
    ap.add_argument("--results", default=str(RESULTS), help="markdown file to update (default: benchmarks/RESULTS.md)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a busy shared 2-core machine one thread ran the toy model 3x faster than two)")
    args = ap.parse_args()
    RESULTS = Path(args.results)
    torch.set_num_threads(args.threads)
    if args.what in ("throughput", "all"):
        throughput(args)
    if args.what in ("toy", "all"):
        toy(args)
    if args.what in ("rate", "all"):
        rate(args)


if __name__ == "__main__":
    main()
