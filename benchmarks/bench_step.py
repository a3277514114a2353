"""One full training step of our TopK / BatchTopK / Matryoshka SAEs against SAELens's, same run.

    python benchmarks/bench_step.py                          # fp32 + bf16, three archs
    python benchmarks/bench_step.py --dead 1024              # with 1024 dead latents (AuxK term)
    python benchmarks/bench_step.py --precisions fp32 --steps 9

A step is forward, loss, backward and an Adam step on one batch.
- Ours (as `training/trainer.py` takes it): `saes.compute_grads` with method "fast" (fp32) or
  "fast_bf16" (bf16 encoder matmul, fp32 master weights and everything else), the decoder
  gradient projected off the decoder rows, fused Adam, decoder rows back to unit norm, and for
  BatchTopK / Matryoshka the frequency-matching threshold update.
- SAELens 6.54: `training_forward_pass(TrainStepInput(...))` of TopKTrainingSAE /
  BatchTopKTrainingSAE / MatryoshkaBatchTopKTrainingSAE, `loss.backward()`, torch.optim.Adam
  (as SAELens's trainer builds it); bf16 = the forward under `torch.autocast("cpu", bfloat16)`,
  SAELens's supported mixed-precision path. Its trainer's extra work per step (firing counters,
  grad clipping) is not timed.

Both start from the same weights (ours copied into SAELens, `rescale_acts_by_decoder_norm=False`,
`decoder_init_norm=1.0`, the same AuxK coefficient and k_aux = d_in // 2) and see the same
batches. Before timing, the first-step losses (and gradients) on one batch are compared, with
--check-dead dead latents so that the AuxK term is compared too. (SAELens's AuxK does not ReLU
the selected dead pre-activations, ours does, as in the OpenAI paper's TopK; the two agree when
the k_aux selected ones are positive, which holds with many more dead latents than k_aux.)
Our methods: "fast" and "fast_native" (fp32), "fast_bf16" and "fast_native_bf16" (bf16);
--no-native times the pure-torch ones only.
Runs of ours and theirs alternate; medians of the timed steps and their ratio are reported,
plus the median of the per-step ratios (more robust when other jobs share the machine).
--clock cpu times each step by this process's CPU time instead of elapsed time: with
--threads 1 that is the work a step takes on one core, unaffected by other jobs taking turns
on the machine (use it when the load average is above the core count); tok/s are then per core.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_common import ARCHS, OurStep, SparseFeatureData, load_average, make_ours, timed  # noqa: E402

import saes  # noqa: E402
from saes.step import compute_grads  # noqa: E402

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
OUR_METHODS = {"fp32": ["fast", "fast_native"], "bf16": ["fast_bf16", "fast_native_bf16"]}


def make_sae_lens(arch: str, ours: saes.SAE, aux_coef: float, device: str = "cpu"):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    common = dict(
        d_in=ours.d_in, d_sae=ours.d_sae, k=ours.cfg.k, dtype="float32", device=device,
        apply_b_dec_to_input=ours.cfg.apply_b_dec_to_input, rescale_acts_by_decoder_norm=False,
        decoder_init_norm=1.0, aux_loss_coefficient=aux_coef,
    )
    if arch == "topk":
        sl = TopKTrainingSAE(TopKTrainingSAEConfig(**common))
    elif arch == "batchtopk":
        sl = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    else:
        cfg = MatryoshkaBatchTopKTrainingSAEConfig(matryoshka_widths=list(ours.cfg.matryoshka_widths), **common)
        sl = MatryoshkaBatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        for name in PARAMS:
            getattr(sl, name).copy_(getattr(ours, name))
    return sl


def sae_lens_forward(sl, x, dead, step: int):
    from sae_lens.saes.sae import TrainStepInput

    return sl.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=step, is_logging_step=False)
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_equal_loss(arch: str, ours: saes.SAE, sl, x, dead, aux_coef: float, method: str, autocast: bool) -> dict:
    """First-step losses (and gradients) of ours and SAELens on one batch, same weights."""
    ours, sl = copy.deepcopy(ours), copy.deepcopy(sl)
    out: dict = {"arch": arch, "method": method}
    ref = compute_grads(ours, x, dead, aux_coef=aux_coef, method="autograd")
    out["autograd"] = (float(ref.total), float(ref.mse), float(ref.aux))
    res = compute_grads(ours, x, dead, aux_coef=aux_coef, method=method)
    ours_g = {n: getattr(ours, n).grad.clone() for n in PARAMS}
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if autocast else nullcontext()
    with ctx:
        sl_out = sae_lens_forward(sl, x, dead, 0)
    sl_out.loss.backward()
    aux_sl = sl_out.losses.get("auxiliary_reconstruction_loss", torch.zeros(()))
    out["ours"] = (float(res.total), float(res.mse), float(res.aux))
    out["sae_lens"] = (float(sl_out.loss.detach()), float(sl_out.losses["mse_loss"].detach()), float(aux_sl.detach()))
    if res.level_mse is not None:
        inner = [float(sl_out.losses[f"inner_mse_loss_{w}"]) for w in ours.cfg.matryoshka_widths[:-1]]
        out["levels_ours"] = [float(v) for v in res.level_mse]
        out["levels_sae_lens"] = inner + [float(sl_out.losses["mse_loss"])]
    out["loss_rel_diff"] = max(
        abs(a - b) / max(abs(b), 1e-12) for a, b in zip(out["ours"], out["sae_lens"]) if b != 0 or a != 0
    )
    out["grad_rel_diff"] = max(rel(ours_g[n], getattr(sl, n).grad) for n in PARAMS)
    out["aux_nonpos"] = float("nan")
    if dead is not None and bool(dead.any()):  # where the two AuxK conventions differ
        n_dead = int(dead.sum())
        k_aux = min(ours.d_in // 2, n_dead)
        pre = ref.pre_BF.float()[:, dead.nonzero().squeeze(1)]
        out["aux_nonpos"] = float((pre.topk(k_aux, dim=1).values <= 0).float().mean())
    return out


def synced(fn, device: torch.device):
    """`fn` followed by a wait for the device (CUDA runs asynchronously: time the work, not the launch)."""
    if device.type != "cuda":
        return fn

    def run(*a):
        fn(*a)
        torch.cuda.synchronize(device)

    return run


def bench_one(arch: str, precision: str, args, batches: list[torch.Tensor], dead, check_dead) -> list[dict]:
    widths = [int(w) for w in args.widths.split(",")]
    device = torch.device(args.device)
    ours = make_ours(arch, args.d_in, args.d_sae, args.k, widths, seed=args.seed).to(device)
    sl = make_sae_lens(arch, ours, args.aux_coef, device=str(device))
    autocast = precision == "bf16"
    native_ok = not args.no_native and device.type == "cpu"  # the compiled kernels are CPU kernels
    methods = OUR_METHODS[precision][: None if native_ok else 1]
    checks = {}
    if not args.skip_check:
        for m in methods:
            checks[m] = check_equal_loss(arch, ours, sl, batches[0], check_dead, args.aux_coef, m, autocast)

    steppers = {m: OurStep(copy.deepcopy(ours), args.lr, m, args.aux_coef) for m in methods}
    sl_opt = torch.optim.Adam(sl.parameters(), lr=args.lr)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if autocast else nullcontext

    def sl_step(x, i):
        sl_opt.zero_grad(set_to_none=True)
        with ctx():
            out = sae_lens_forward(sl, x, dead, i)
        out.loss.backward()
        sl_opt.step()

    names = ["SAELens", *methods]
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.warmup + args.steps):
        x = batches[i % len(batches)]
        order = names[i % len(names):] + names[: i % len(names)]  # rotate who goes first
        step_t = {}
        for n in order:
            if n == "SAELens":
                step_t[n] = timed(synced(sl_step, device), x, i, clock=args.clock)
            else:
                step_t[n] = timed(synced(steppers[n], device), x, dead, clock=args.clock)
        if i >= args.warmup:
            for n in names:
                times[n].append(step_t[n])
        shown = "   ".join(f"{n} {step_t[n] * 1e3:7.1f} ms" for n in names)
        print(f"  {arch:22s} {precision} step {i:2d}: {shown}", flush=True)
    B = batches[0].shape[0]
    ms = statistics.median(times["SAELens"])
    out = []
    for m in methods:
        mo = statistics.median(times[m])
        paired = statistics.median(s / o for o, s in zip(times[m], times["SAELens"]))
        out.append({
            "arch": arch, "precision": precision, "method": m, "ours_ms": mo * 1e3, "sl_ms": ms * 1e3,
            "ours_tok_s": B / mo, "sl_tok_s": B / ms, "ratio": ms / mo, "paired_ratio": paired, "check": checks.get(m),
        })
    return out


def markdown(results: list[dict], args, loads: tuple[str, str]) -> str:
    lines = [
        f"Device: {args.device}. Shape: d_in {args.d_in}, d_sae {args.d_sae}, k {args.k}, batch {args.batch} tokens, Matryoshka widths "
        f"[{args.widths}], dead latents {args.dead}; {args.steps} timed steps after {args.warmup} warm-up, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, clock: "
        f"{'process CPU time (tok/s per CPU-second)' if args.clock == 'cpu' else 'elapsed time'}; "
        f"load average before/after {loads[0]} / {loads[1]}.",
        "",
        "| arch | precision | ours (method) | ours tok/s | SAELens tok/s | ratio (medians) | median per-step ratio |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['arch']} | {r['precision']} | {r['method']} | {r['ours_tok_s']:,.0f} | {r['sl_tok_s']:,.0f} | "
            f"{r['ratio']:.1f}x | {r['paired_ratio']:.1f}x |"
        )
    checks = [r["check"] for r in results if r["check"]]
    if checks:
        lines += [
            "",
            f"First-step losses on the same batch and weights, {args.check_dead} dead latents (total / mse / aux):",
            "",
            "| arch | ours method | autograd (ours) | ours | SAELens | max rel diff | grads max rel diff vs SAELens | AuxK picks <= 0 |",
            "|---|---|---|---|---|---:|---:|---:|",
        ]
        fmt = lambda t: " / ".join(f"{v:.6g}" for v in t)  # noqa: E731
        for c in checks:
            lines.append(
                f"| {c['arch']} | {c['method']} | {fmt(c['autograd'])} | {fmt(c['ours'])} | {fmt(c['sae_lens'])} | "
                f"{c['loss_rel_diff']:.1e} | {c['grad_rel_diff']:.1e} | {c['aux_nonpos']:.1%} |"
            )
            if "levels_ours" in c:
                lines.append(
                    f"| ↳ levels | | | {fmt(c['levels_ours'])} | {fmt(c['levels_sae_lens'])} | "
                    f"{max(abs(a - b) / abs(b) for a, b in zip(c['levels_ours'], c['levels_sae_lens'])):.1e} | | |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset of " + ",".join(ARCHS))
    p.add_argument("--precisions", default="fp32,bf16", help="fp32 and/or bf16")
    p.add_argument("--steps", type=int, default=5, help="timed steps per side (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--batch", type=int, default=4096, help="tokens per step")
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--widths", default="512,2048,8192", help="Matryoshka prefix widths")
    p.add_argument("--dead", type=int, default=0, help="latents marked dead (AuxK term) in every step")
    p.add_argument("--aux-coef", type=float, default=saes.objective.DEFAULT_AUX_COEF)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--pool", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time steps by elapsed time or by this process's CPU time (see above)")
    p.add_argument("--check-dead", type=int, default=1024, help="dead latents in the first-step loss comparison")
    p.add_argument("--skip-check", action="store_true", help="skip the first-step loss comparison")
    p.add_argument("--no-native", action="store_true", help="time only the pure-torch methods (fast, fast_bf16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA: fast / fast_bf16 against SAELens)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = set(archs) - set(ARCHS)
    if unknown:
        p.error(f"unknown --archs {sorted(unknown)}; choose from {', '.join(ARCHS)}")
    precisions = [q.strip() for q in args.precisions.split(",") if q.strip()]
    if set(precisions) - set(OUR_METHODS):
        p.error("--precisions takes fp32 and/or bf16")

    data = SparseFeatureData(args.d_in, 4 * args.d_sae, mean_active=args.k, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed + 7)
    batches = [data.sample(args.batch, gen) for _ in range(args.pool)]
    def dead_mask(n: int):
        if not n:
            return None
        mask = torch.zeros(args.d_sae, dtype=torch.bool)
        mask[torch.randperm(args.d_sae, generator=torch.Generator().manual_seed(args.seed + n))[:n]] = True
        return mask

    dev = torch.device(args.device)
    batches = [b.to(dev) for b in batches]
    dead, check_dead = dead_mask(args.dead), dead_mask(args.check_dead)
    dead = dead.to(dev) if dead is not None else None
    check_dead = check_dead.to(dev) if check_dead is not None else None
    before = load_average()
    results = []
    for precision in precisions:
        for arch in archs:
            results.extend(bench_one(arch, precision, args, batches, dead, check_dead))
    print()
    print(markdown(results, args, (before, load_average())))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
