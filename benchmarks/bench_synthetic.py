"""Ground-truth feature recovery: our trainer against SAELens's on SAELens's synthetic data.

The data is `sae_lens.synthetic` (SyntheticModel: Zipfian firing probabilities, hierarchy with
mutually exclusive children, low-rank correlations, per-feature magnitudes; evals.synthetic
holds the recipes). Per recipe, one fixed training stream is drawn once and every SAE trains
on the same first N rows of it (equal samples, same rows), and every SAE is scored by SAELens's
own `eval_sae_on_synthetic_data` on the same evaluation rows: F1 / precision / recall of each
latent as a detector of its best-matching true feature, MCC, explained variance, L0, dead.

- ours: `training.train` (the CLI's path: held-out scale and b_dec, the trainer's step, the
  folded saved SAE) with our defaults (LR width rule, warmup, linear decay, AuxK), evaluated in
  its saved SAELens form (BatchTopK / Matryoshka as JumpReLU with per-latent thresholds);
- JumpReLU (no k): each library's defaults unless --ours-jumprelu / --saelens-jumprelu say
  otherwise (its L0 follows from the penalty, so compare F1 with L0 in view);
- SAELens: `SAETrainer` with `SyntheticSAERunnerConfig`'s settings (SynthSAEBench's recipe: lr
  3e-4 constant, batch 1024) fed the same batches, evaluated as its runner evaluates it (the
  trained TrainingSAE).

Wall and process CPU seconds are for the training call alone (data drawn beforehand).

    python benchmarks/bench_synthetic.py                                  # both recipes, 1M samples
    python benchmarks/bench_synthetic.py --recipes deep-4k --samples 250000,1000000 --archs matryoshka_batchtopk,batchtopk
    python benchmarks/bench_synthetic.py --levels ...                     # Matryoshka per-level detail
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens's trainer and orthogonalisation bars

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evals.synthetic import RECIPES, SyntheticWorld, batches, evaluate, evaluate_ours, scaled, train_ours  # noqa: E402
from saes.config import default_matryoshka_widths  # noqa: E402
from training.config import SAESpec, takes_k  # noqa: E402

ARCHS = ("topk", "batchtopk", "matryoshka_batchtopk", "jumprelu")


def widths_for(d_sae: int, levels: list[int] | None) -> list[int]:
    return list(levels) if levels else default_matryoshka_widths(d_sae)


def run_ours(world: SyntheticWorld, arch: str, samples: int, args: argparse.Namespace) -> tuple[dict[str, float], Any]:
    r = world.recipe
    spec = SAESpec(arch, d_sae=r.d_sae, k=r.k if takes_k(arch) else None,
                   matryoshka_widths=widths_for(r.d_sae, args.widths) if arch == "matryoshka_batchtopk" else [],
                   options=json.loads(args.ours_jumprelu) if arch == "jumprelu" else {})
    with tempfile.TemporaryDirectory() as out:
        w0, c0 = time.perf_counter(), time.process_time()
        result = train_ours(world, [spec], samples, out, batch_size=args.batch_size, seed=args.seed,
                            optim={"lr": args.ours_lr} if args.ours_lr else None, train=json.loads(args.ours_train))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    sae = result.saes[spec.name]
    scores = evaluate_ours(sae, world)
    scores.update(wall=wall, cpu=cpu, trainer_dead=result.metrics["saes"][spec.name]["dead_fraction"])
    return scores, sae


def run_saelens(world: SyntheticWorld, arch: str, samples: int, args: argparse.Namespace) -> tuple[dict[str, float], Any]:
    from sae_lens import (
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAEConfig,
        LoggingConfig,
        MatryoshkaBatchTopKTrainingSAEConfig,
        TopKTrainingSAEConfig,
    )
    from sae_lens.registry import get_sae_training_class
    from sae_lens.synthetic import SyntheticSAERunnerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    r = world.recipe
    kw: dict[str, Any] = {"d_in": r.hidden_dim, "d_sae": r.d_sae, "k": r.k}
    cfg_class = {"topk": TopKTrainingSAEConfig, "batchtopk": BatchTopKTrainingSAEConfig,
                 "matryoshka_batchtopk": MatryoshkaBatchTopKTrainingSAEConfig, "jumprelu": JumpReLUTrainingSAEConfig}[arch]
    if arch == "jumprelu":  # no k: its L0 comes from its penalty
        del kw["k"]
        kw.update(json.loads(args.saelens_jumprelu))
    if arch == "matryoshka_batchtopk":
        kw["matryoshka_widths"] = widths_for(r.d_sae, args.widths)
    sae_cfg = cfg_class(**kw)
    runner = SyntheticSAERunnerConfig(synthetic_model=r.model_config(), sae=sae_cfg, training_samples=samples,
                                      batch_size=args.batch_size, lr=args.saelens_lr, device="cpu", output_path=None,
                                      checkpoint_path=None, eval_frequency=0, logger=LoggingConfig(log_to_wandb=False))
    torch.manual_seed(args.seed)
    sae = get_sae_training_class(arch)[0](sae_cfg)
    data = batches(world.train_rows(-(-samples // args.batch_size) * args.batch_size), args.batch_size)  # whole batches, as ours
    w0, c0 = time.perf_counter(), time.process_time()
    sae = SAETrainer(cfg=runner.to_sae_trainer_config(), sae=sae, data_provider=data).fit()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    scores = evaluate(sae, world)
    scores.update(wall=wall, cpu=cpu)
    return scores, sae


@torch.no_grad()
def matryoshka_levels(sae: Any, world: SyntheticWorld, widths: list[int]) -> list[dict[str, float]]:
    """Per Matryoshka level (latents [prev, width)): mean F1 of its latents as detectors of their
    best-matching true feature, the mean true-feature index they match (low = frequent, roots
    first), and how many of them match a true feature that has children (a parent)."""
    from sae_lens.synthetic import ClassificationMetricsCalculator

    from saes.interop import to_sae_lens

    sl = to_sae_lens(sae) if not hasattr(sae, "cfg") or not hasattr(sae.cfg, "to_dict") else sae
    gt = world.model.feature_dict.feature_vectors
    calc = ClassificationMetricsCalculator(sl.W_dec, gt)
    ev = world.eval_features
    ev.rewind()
    for _ in range(len(ev.chunks)):
        feats = ev.sample(ev.chunk)
        calc.add_batch(sl.encode(world.model.feature_dict(feats)), feats)
    tp, fp, fn = calc.tp, calc.fp, calc.fn
    prec = torch.where(tp + fp > 0, tp / (tp + fp), torch.zeros_like(tp))
    rec = torch.where(tp + fn > 0, tp / (tp + fn), torch.zeros_like(tp))
    f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec), torch.zeros_like(tp))
    parents = _parent_features(world)
    out, prev = [], 0
    for w in widths:
        m = calc.best_matches[prev:w]
        out.append({"latents": f"{prev}-{w}", "f1": float(f1[prev:w].mean()), "mean_match_index": float(m.float().mean()),
                    "match_parent": float(torch.isin(m, parents).float().mean()),
                    "unique": len(m.unique()) / max(1, w - prev)})
        prev = w
    return out


def _parent_features(world: SyntheticWorld) -> torch.Tensor:
    h = world.model.hierarchy
    found: list[int] = []
    stack = list(h.roots) if h is not None else []
    while stack:
        node = stack.pop()
        if node.children:
            found.append(node.feature_index)
            stack.extend(node.children)
    return torch.tensor(sorted(found), dtype=torch.long)


def machine_line(args: argparse.Namespace) -> str:
    import sae_lens

    load = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, no GPU, torch {torch.__version__}, "
            f"sae_lens {sae_lens.__version__}, {torch.get_num_threads()} torch thread(s); load average {load[0]:.1f} / "
            f"{load[2]:.1f} (1 / 15 min) at the end: other jobs shared the cores, so compare CPU seconds")


def fmt_row(samples: int, lib: str, arch: str, s: dict[str, float]) -> str:
    return (f"| {samples:,} | {lib} | {arch} | **{s['f1']:.3f}** | {s['precision']:.3f} | {s['recall']:.3f} | {s['mcc']:.3f} | "
            f"{s['ev']:.3f} | {s['l0']:.1f} | {s['dead']:.1%} | {s['wall']:.0f} | {s['cpu']:.0f} |")


HEADER = ("| samples | library | architecture | F1 | precision | recall | MCC | EV | L0 | dead | wall s | CPU s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default="synthsaebench-4k,deep-4k", help=f"comma-separated: {', '.join(RECIPES)}")
    p.add_argument("--samples", default="1000000", help="training samples per SAE, comma-separated (each a run)")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--libraries", default="ours,sae_lens")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--saelens-lr", type=float, default=3e-4, help="SynthSAEBench's lr")
    p.add_argument("--ours-lr", type=float, default=None, help="ours: peak lr (none: our width rule)")
    p.add_argument("--widths", default=None, help="Matryoshka prefix widths (default: ours, ~4x steps)")
    p.add_argument("--ours-jumprelu", default="{}", help="ours: JumpReLU settings as JSON, e.g. "
                                                         "'{\"l0_coefficient\": 2}' (default: our defaults)")
    p.add_argument("--ours-train", default="{}", help="ours: TrainConfig fields as JSON, e.g. "
                                                      "'{\"jumprelu_threshold_lr\": 0.03}' (default: our defaults)")
    p.add_argument("--saelens-jumprelu", default="{}", help="SAELens: JumpReLUTrainingSAEConfig fields as JSON "
                                                            "(default: its defaults)")
    p.add_argument("--orthogonalize-steps", type=int, default=None, help="override the recipe's (0: skip, saves ~80 CPU s)")
    p.add_argument("--eval-rows", type=int, default=32_768)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--levels", action="store_true", help="also print Matryoshka per-level detail")
    p.add_argument("--json", default=None, help="write every result here")
    p.add_argument("--data-cache", default=None, help="keep each recipe's model and training rows here (reruns skip "
                                                      "minutes of data generation)")
    args = p.parse_args(argv)
    args.widths = [int(w) for w in args.widths.split(",")] if args.widths else None
    torch.set_num_threads(args.threads)
    sample_counts = [int(s) for s in args.samples.split(",")]
    archs = [a.strip() for a in args.archs.split(",")]
    libs = [lib.strip() for lib in args.libraries.split(",")]
    command = "python benchmarks/bench_synthetic.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: list[dict[str, Any]] = []
    tables = []
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        if args.orthogonalize_steps is not None:
            recipe = scaled(recipe, orthogonalize_steps=args.orthogonalize_steps)
        c0 = time.process_time()
        world = SyntheticWorld(recipe, eval_rows=args.eval_rows, cache_dir=args.data_cache)
        world.train_rows(max(-(-n // args.batch_size) * args.batch_size for n in sample_counts))
        setup_cpu = time.process_time() - c0
        info = (f"**{name}** ({recipe.note}): {recipe.num_features:,} true features in {recipe.hidden_dim} dims, "
                f"{recipe.hierarchical_features():,} in {recipe.roots} trees (depth {recipe.depth}, branching "
                f"{recipe.branching}, children mutually exclusive), correlation rank {recipe.correlation_rank}, "
                f"orthogonalisation {recipe.orthogonalize_steps} steps; true L0 {world.true_l0():.1f} "
                f"({world.true_l0(recipe.d_sae):.1f} among the {recipe.d_sae} most frequent); SAEs d_sae {recipe.d_sae}, "
                f"k {recipe.k} (JumpReLU: none; ours {args.ours_jumprelu}, SAELens {args.saelens_jumprelu} over each "
                f"library's defaults; ours' training settings {args.ours_train} over our defaults), batch {args.batch_size}, Matryoshka widths {widths_for(recipe.d_sae, args.widths)}; "
                f"evaluation on {world.eval_features.rows:,} rows (world and data drawn in {setup_cpu:.0f} CPU s)")
        print(info, flush=True)
        rows = []
        for samples in sample_counts:
            for arch in archs:
                for lib in libs:
                    run = run_ours if lib == "ours" else run_saelens
                    scores, sae = run(world, arch, samples, args)
                    row = fmt_row(samples, lib, arch, scores)
                    rows.append(row)
                    print(row, flush=True)
                    rec = {"recipe": name, "samples": samples, "library": lib, "arch": arch, **scores}
                    if args.levels and arch == "matryoshka_batchtopk":
                        rec["levels"] = matryoshka_levels(sae, world, widths_for(recipe.d_sae, args.widths))
                        for lv in rec["levels"]:
                            print("   level", json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in lv.items()}))
                    results.append(rec)
        tables.append(info + "\n\n" + HEADER + "\n" + "\n".join(rows))
    print(f"\n`{command}` ({machine_line(args)})\n")
    print("\n\n".join(tables))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
