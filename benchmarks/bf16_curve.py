"""Does the bf16 encoder change what the SAE learns? Train twice from one init and compare.

    python benchmarks/bf16_curve.py                            # three archs, 300 steps each
    python benchmarks/bf16_curve.py --steps 600 --html benchmarks/bf16_curve.html

The same SAE (same initial weights) is trained on the same stream of synthetic activations with
real sparse structure (`common.SparseFeatureData`: sparse non-negative combinations of
ground-truth unit directions with power-law frequencies, plus noise; d_in 512) once with the
exact fp32 step ("fast") and once with the bf16 encoder ("fast_bf16"); the trainer's step
(decoder-gradient projection, fused Adam, unit decoder rows, BatchTopK thresholds) and its
dead-latent counters (AuxK) are the same. Reported per architecture: held-out FVU curves, the
largest gap between them, and what was learned: how well each recovers the ground-truth
directions, and how closely the two dictionaries match each other.

Tolerance (checked, exit status 1 when exceeded): after the first 10% of steps, the held-out
FVU of the bf16 run stays within --tolerance (default 0.01 absolute) of the fp32 run's.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_common import ARCHS, OurStep, SparseFeatureData, load_average, make_ours  # noqa: E402

import saes  # noqa: E402
from saes.losses import fvu  # noqa: E402


@torch.no_grad()
def held_out_fvu(sae: saes.SAE, x_eval: torch.Tensor) -> float:
    out = saes.training_loss(sae, x_eval)  # the training-time selection (batch-level for BatchTopK)
    return float(fvu(out.recon_BD, x_eval))


@torch.no_grad()
def mean_max_cosine(a_FD: torch.Tensor, b_GD: torch.Tensor) -> float:
    """For each row of a, the best cosine with any row of b; averaged."""
    a = a_FD / a_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b_GD / b_GD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = torch.cat([(chunk @ b.t()).amax(dim=1) for chunk in a.split(1024)])
    return float(best.mean())


def train_curve(sae: saes.SAE, method: str, data: SparseFeatureData, x_eval: torch.Tensor, args) -> dict:
    step = OurStep(sae, args.lr, method, saes.objective.DEFAULT_AUX_COEF)
    gen = torch.Generator().manual_seed(args.seed + 100)  # the same stream for both methods
    since_fired = torch.zeros(sae.d_sae, dtype=torch.int64)
    steps, curve = [], []
    for i in range(args.steps + 1):
        if i % args.eval_every == 0 or i == args.steps:
            steps.append(i)
            curve.append(held_out_fvu(sae, x_eval))
        if i == args.steps:
            break
        x = data.sample(args.batch, gen)
        dead = since_fired >= args.dead_tokens
        res = step(x, dead if bool(dead.any()) else None)
        fired = torch.bincount(res.acts.indices_N[res.acts.values_N != 0], minlength=sae.d_sae)
        since_fired.add_(args.batch).masked_fill_(fired > 0, 0)
    return {"steps": steps, "fvu": curve, "dead": int((since_fired >= args.dead_tokens).sum())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--widths", default="128,512,2048", help="Matryoshka prefix widths")
    p.add_argument("--features", type=int, default=4096, help="ground-truth directions in the data")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dead-tokens", type=int, default=100_000, help="tokens without firing before a latent counts as dead")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-rows", type=int, default=4096)
    p.add_argument("--tolerance", type=float, default=0.01, help="max |FVU gap| allowed after the first 10%% of steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--html", default="", help="also write the curves as a plotly HTML file")
    args = p.parse_args(argv)

    data = SparseFeatureData(args.d_in, args.features, mean_active=args.k, seed=args.seed)
    x_eval = data.sample(args.eval_rows, torch.Generator().manual_seed(args.seed + 1))
    widths = [int(w) for w in args.widths.split(",")]
    print(f"load average {load_average()}", flush=True)
    rows, curves, worst = [], {}, 0.0
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        init = make_ours(arch, args.d_in, args.d_sae, args.k, widths, seed=args.seed)
        runs, saes_by_method = {}, {}
        for method in ("fast", "fast_bf16"):
            sae = copy.deepcopy(init)
            runs[method] = train_curve(sae, method, data, x_eval, args)
            saes_by_method[method] = sae
            print(f"{arch:22s} {method:9s} FVU {runs[method]['fvu'][0]:.3f} -> {runs[method]['fvu'][-1]:.4f}", flush=True)
        a, b = runs["fast"], runs["fast_bf16"]
        gaps = [abs(u - v) for u, v in zip(a["fvu"], b["fvu"])]
        late = [g for s, g in zip(a["steps"], gaps) if s >= args.steps // 10]
        worst = max(worst, max(late))
        gt = data.dirs_TD
        rows.append({
            "arch": arch, "fp32": a["fvu"][-1], "bf16": b["fvu"][-1], "max_gap": max(gaps), "max_gap_late": max(late),
            "mean_gap": sum(gaps) / len(gaps),
            "gt_fp32": mean_max_cosine(gt, saes_by_method["fast"].W_dec.detach()),
            "gt_bf16": mean_max_cosine(gt, saes_by_method["fast_bf16"].W_dec.detach()),
            "match": mean_max_cosine(saes_by_method["fast"].W_dec.detach(), saes_by_method["fast_bf16"].W_dec.detach()),
            "dead": (a["dead"], b["dead"]),
        })
        curves[arch] = runs

    print()
    print(
        f"{args.steps} steps of {args.batch} tokens, d_in {args.d_in}, d_sae {args.d_sae}, k {args.k}, "
        f"{args.features} ground-truth directions, lr {args.lr}, held-out FVU on {args.eval_rows} rows every "
        f"{args.eval_every} steps; load average {load_average()}."
    )
    print()
    print("| arch | final FVU fp32 | final FVU bf16 | max abs gap (all / after 10%) | mean gap | "
          "GT recovery fp32 / bf16 | fp32-vs-bf16 dictionary match | dead at end fp32 / bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['fp32']:.4f} | {r['bf16']:.4f} | {r['max_gap']:.5f} / {r['max_gap_late']:.5f} | "
            f"{r['mean_gap']:.5f} | {r['gt_fp32']:.3f} / {r['gt_bf16']:.3f} | {r['match']:.4f} | "
            f"{r['dead'][0]} / {r['dead'][1]} |"
        )
    ok = worst <= args.tolerance
    print(f"\nlargest gap after the first 10% of steps: {worst:.4f} (tolerance {args.tolerance}): {'PASS' if ok else 'FAIL'}")
    if args.html:
        write_html(curves, Path(args.html))
        print(f"wrote {args.html}")
    return 0 if ok else 1


def write_html(curves: dict, path: Path) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for arch, runs in curves.items():
        for method, run in runs.items():
            dash = "solid" if method == "fast" else "dash"
            fig.add_trace(go.Scatter(x=run["steps"], y=run["fvu"], name=f"{arch} {method}", line={"dash": dash}))
    fig.update_layout(title="Held-out FVU: exact fp32 step vs bf16 encoder", xaxis_title="step",
                      yaxis_title="FVU", yaxis_type="log")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(fig.to_html(include_plotlyjs="cdn"))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
