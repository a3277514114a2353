"""Feature-store benchmarks; results go to benchmarks/RESULTS.md under "## Feature store".

    python benchmarks/bench_features.py throughput [--tokens 262144] [--runs 3]
        Build-pass throughput at d_in 512, d_sae 8192, k 32 (the perf-notes shape) on activations
        with real sparse structure, next to the SAE encoder alone over the same rows.
    python benchmarks/bench_features.py rate       (after toy: caching vs the pass, alternated)
    python benchmarks/bench_features.py toy [--train-tokens 3000000] [--eval-tokens 400000]
        The toy world end to end: cache the toy model (train and validation text), train a TopK and
        a Matryoshka SAE with the trainer, build both feature stores over the validation cache, and
        for every ground-truth concept the best single latent's F1; reports the fraction of concepts
        with F1 >= 0.8, and the pass throughput next to the caching throughput.

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
def toy(args) -> None:
    import toyworld
    from features import BuildConfig, CacheSource, FeatureStore, build_feature_store
    from features.concepts import concept_f1_over_source
    from saesteer.models import load_model, model_id
    from training.cache import build_cache
    from training.cache_config import CacheConfig
    from training.config import CheckpointConfig, EvalConfig, LogConfig, RunConfig, SAESpec, TrainConfig
    from training.run import train
    from training.reader import CacheReader
    from training.text import TextConfig

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    hook = "blocks.2.hook_resid_post"
    model = load_model("toy", device="cpu")
    load0 = load_average()
    caches = {}
    for split, tokens in (("train", args.train_tokens), ("validation", args.eval_tokens)):
        out = work / f"cache-{split}"
        t0 = time.perf_counter()
        build_cache(model, TextConfig(dataset="toy", split=split, context_length=128),
                    CacheConfig(out=str(out), hooks=[hook], max_tokens=tokens), progress=True)
        caches[split] = out
        print(f"cache {split}: up to {tokens:,} tokens in {time.perf_counter() - t0:.1f} s", flush=True)

    run_dir = work / "run"
    specs = [SAESpec("topk", d_sae=args.d_sae, k=args.k, name="topk"),
             SAESpec("matryoshka_batchtopk", d_sae=args.d_sae, k=args.k, name="matryoshka")]
    cfg = RunConfig(
        saes=specs,
        train=TrainConfig(total_tokens=args.train_tokens * args.epochs, batch_size=4096, dead_tokens=1_000_000),
        checkpoint=CheckpointConfig(every_tokens=0),
        eval=EvalConfig(every_tokens=0, ce_contexts=0),
        log=LogConfig(progress=True),
    )
    if not (run_dir / "saes" / "matryoshka" / "cfg.json").exists():
        reader = CacheReader(caches["train"], batch_size=4096, seed=0, epochs=None)
        t0 = time.perf_counter()
        train(cfg, reader, run_dir, provenance={"model_name": "toyworld-tiny", "hook_name": hook})
        print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)

    import saes as saes_pkg

    names = list(toyworld.CONCEPTS)
    source = CacheSource(caches["validation"], hook=hook)
    rows = []
    for spec in specs:
        sae = saes_pkg.load_sae(run_dir / "saes" / spec.name).eval()
        store_path = work / f"{spec.name}.db"
        res = build_feature_store(store_path, sae, source, BuildConfig(), model=model, sae_path=str(run_dir / "saes" / spec.name),
                                  overwrite=True, progress=True)
        t0 = time.perf_counter()
        scores = concept_f1_over_source(sae, source, lambda ids: toyworld.concept_masks(ids, names), names)
        t_f1 = time.perf_counter() - t0
        best = scores.best_per_concept(min_positives=args.min_positives)
        with FeatureStore.open(store_path, readonly=False) as st:
            st.write_concept_matches([m for c in best for m in scores.top(c.concept, 5)], source="toyworld.concept_masks")
            summary = st.meta["summary"]
        (work / f"{spec.name}-concepts.json").write_text(json.dumps([m.__dict__ for m in best], indent=1))
        frac = sum(m.f1 >= 0.8 for m in best) / len(best)
        rows.append((spec, res, frac, best, summary, t_f1))
        print(f"{spec.name}: {frac:.1%} of {len(best)} concepts with F1>=0.8; pass {res.tokens_per_s:,.0f} tok/s", flush=True)

    hdr = "| SAE | concepts | F1 >= 0.8 | median best F1 | mean best F1 | alive / dead / dense latents |"
    lines = [hdr, "|---|---|---|---|---|---|"]
    for spec, res, frac, best, summary, _ in rows:
        f1s = [m.f1 for m in best]
        lines.append(f"| {spec.name} (d_sae {spec.d_sae}, k {spec.k}) | {len(best)} | **{frac:.1%}** "
                     f"({sum(f >= 0.8 for f in f1s)}: {', '.join(m.concept for m in best if m.f1 >= 0.8)}) | "
                     f"{statistics.median(f1s):.3f} | {statistics.fmean(f1s):.3f} | "
                     f"{summary['alive']} / {summary['dead']} / {summary['dense']} |")
    fam: dict[str, list[str]] = {}
    for m in rows[0][3]:
        fam.setdefault(m.concept.split(":")[0] + (":*" if ":" in m.concept else ""), []).append(m.concept)
    a0, b0 = {m.concept: m.f1 for m in rows[0][3]}, {m.concept: m.f1 for m in rows[1][3]}
    fl = ["| concepts | n | TopK mean best F1 | Matryoshka mean best F1 |", "|---|---|---|---|"]
    singles = [c for cs in fam.values() if len(cs) < 3 for c in cs]
    for name, cs in sorted(((k, v) for k, v in fam.items() if len(v) >= 3), key=lambda t: -len(t[1])) + [("other", singles)]:
        fl.append(f"| {name} | {len(cs)} | {statistics.fmean(a0[c] for c in cs):.3f} | {statistics.fmean(b0[c] for c in cs):.3f} |")
    # concepts where the two differ most
    a, b = {m.concept: m for m in rows[0][3]}, {m.concept: m for m in rows[1][3]}
    diffs = sorted(a, key=lambda c: -abs(a[c].f1 - b[c].f1))[:8]
    dl = ["| concept | TopK best latent, F1 | Matryoshka best latent, F1 |", "|---|---|---|"]
    dl += [f"| {c} | {a[c].latent}, {a[c].f1:.3f} | {b[c].latent}, {b[c].f1:.3f} |" for c in diffs]
    text = f"""### Toy world: best single latent per ground-truth concept

Machine: 2 CPU cores (shared; load average {load0} before, {load_average()} after), torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}.
Toy model `{model_id(model)}`, hook `{hook}`. SAEs trained together by `training.train` on {args.train_tokens:,} cached
tokens of the toy corpus's train split ({args.epochs} epoch(s), batch 4096); evaluated on {source.n_rows:,} tokens of the
validation split (BOS not cached). A latent detects a concept on a token when it fires there; F1 against the
token's ground-truth tag (`toyworld.concept_masks`, exact on contexts that start with BOS); for each concept
(seen >= {args.min_positives} times) the best latent's F1 (`features.concepts.concept_f1_over_source`).
`python benchmarks/bench_features.py toy`

{chr(10).join(lines)}

By concept family (a family: the concepts sharing a prefix, e.g. `name:anna`, `name:ben`, ...):

{chr(10).join(fl)}

Concepts where the two differ most:

{chr(10).join(dl)}

Both SAEs give categories their own latents (parts of speech, `place`, `speech`, `colour`, `name`) but not
the members of a category: the best latent for `name:anna` (or `colour:red`, `number:two`) is the one for
names (colours, numbers) in general, with recall ~0.6 and precision ~0.1. Per-concept results:
`<work>/<sae>-concepts.json`; the stores keep the top 5 latents per concept in `concept_matches`
(`FeatureStore.concept_matches(concept)`)."""
    write_section("toy", text)
    print(text)


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
    sae = saes_pkg.load_sae(work / "run" / "saes" / "topk").eval()
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
    ap.add_argument("--train-tokens", type=int, default=3_000_000)
    ap.add_argument("--eval-tokens", type=int, default=400_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
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
