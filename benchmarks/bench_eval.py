"""`saesteer eval`'s evaluation against SAELens's `run_evals` on the same SAE, model and tokens.

A GPT-2-shaped model (d_model 256, 4 layers, an 8,192-token byte-level BPE trained on the real-text
corpus, a few training steps; `helpers.real_models`), a SAELens StandardSAE of 8,192 latents at
blocks.2.hook_resid_post saved by SAELens (`helpers.foreign_saes.saelens_pca`: 32 latents reading the top
16 principal directions, the other 8,160 never firing, so that EV means something), and N held-out
contexts of 128 tokens of the corpus's validation split. Both sides compute the same figures over the
same tokens, BOS left out of the activation metrics: EV, MSE, L0, L1, cosine, shrinkage, latent
densities (dead / dense), and CE clean / spliced / zero-ablated and KL over every context:
  ours      evals.activations.collect + evals.run.evaluate_saes (what `saesteer eval` runs; absorption
            and probing off)
  SAELens   sae_lens.evals.run_evals with every metric on, one batch per `--batch` contexts
Process CPU seconds of each, in interleaved rounds (the order alternates), one torch thread; medians.

    flock /work/wt/bench.lock python benchmarks/bench_eval.py --contexts 64 --batch 16 --rounds 5 --write  # RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
HOOK = "blocks.2.hook_resid_post"


class TokenStore:
    """What run_evals reads of an ActivationsStore: the held-out contexts, `batch` at a time, in order."""

    def __init__(self, tokens, batch: int) -> None:
        self.tokens, self.store_batch_size_prompts, self.context_size = tokens, batch, tokens.shape[1]
        self.at = 0

    def get_batch_tokens(self, n: int):
        out = self.tokens[self.at:self.at + n]
        self.at += n
        return out

    def reset_input_dataset(self) -> None:
        self.at = 0


def setup(work: Path, contexts: int):
    import torch

    from helpers.foreign_saes import saelens_pca
    from helpers.real_models import save_real_model, write_corpus
    from evals.activations import collect
    from saesteer.models import load_model
    from training.sources import contexts_from_text
    from training.text import TextConfig

    work.mkdir(parents=True, exist_ok=True)
    model_dir, sae_dir = work / "gpt2-256", work / "sae-8k"
    if not (model_dir / "model.safetensors").exists():
        corpus = write_corpus(work / "corpus")
        save_real_model(model_dir, "gpt2", corpus, train_steps=40, vocab_size=8192, d_model=256, n_layers=4)
    model = load_model(str(model_dir), device="cpu")
    text = TextConfig(dataset=str(work / "corpus" / "jsonl"), split="validation", context_length=128)
    tokens = contexts_from_text(text, model.tokenizer, contexts)
    if not (sae_dir / "cfg.json").exists():
        train_text = TextConfig(dataset=str(work / "corpus" / "jsonl"), split="train", context_length=128)
        train = contexts_from_text(train_text, model.tokenizer, 32)
        acts = collect(model, [HOOK], train, (model.tokenizer.bos_token_id,)).acts[HOOK]
        saelens_pca(acts, 16, hook_name=HOOK, model_name=str(model_dir), dead=8192 - 32).save_model(sae_dir)
    torch.set_num_threads(1)
    return model, tokens, sae_dir


def ours(model, tokens, sae_dir, batch: int) -> dict:
    from evals.activations import collect
    from evals.config import EvalConfig
    from evals.run import EvalInputs, evaluate_saes
    from saes.formats import resolve_sae

    excl = (model.tokenizer.bos_token_id,)
    heldout = collect(model, [HOOK], tokens, excl, batch_size=batch)
    got = evaluate_saes({"s": resolve_sae(sae_dir)}, EvalInputs(model, heldout, tokens, excl),
                        EvalConfig(absorption=False, probing=False, ce_batch_size=batch, contexts=len(tokens),
                                   ce_contexts=len(tokens)))
    return got["s"]["metrics"]


def saelens(model, tokens, sae_dir, batch: int) -> dict:
    from sae_lens import SAE
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    n = len(tokens) // batch
    cfg = EvalConfig(batch_size_prompts=batch, n_eval_reconstruction_batches=n, n_eval_sparsity_variance_batches=n,
                     compute_kl=True, compute_ce_loss=True, compute_l2_norms=True, compute_sparsity_metrics=True,
                     compute_variance_metrics=True, compute_featurewise_density_statistics=True)
    metrics, _ = run_evals(SAE.load_from_disk(sae_dir), TokenStore(tokens, batch), model, ActivationScaler(), cfg,
                           exclude_special_tokens=[model.tokenizer.bos_token_id])
    return {"explained_variance": metrics["reconstruction_quality"]["explained_variance"],
            "l0": metrics["sparsity"]["l0"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/saesteer-bench-eval"))
    ap.add_argument("--contexts", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="replace the block in benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.contexts % args.batch:  # run_evals reads whole batches: the rest would be ours alone
        ap.error(f"--contexts {args.contexts} is not a multiple of --batch {args.batch}: SAELens would read fewer")
    import torch

    model, tokens, sae_dir = setup(args.work, args.contexts)
    import evals.run  # noqa: F401  (both sides' imports before the timed rounds, not in the first one)
    import sae_lens.evals  # noqa: F401
    runs = {"ours": ours, "SAELens": saelens}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    figures = {}
    with torch.no_grad():
        for r in range(args.rounds):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                c0 = time.process_time()
                figures[name] = runs[name](model, tokens, sae_dir, args.batch)
                cpu[name].append(time.process_time() - c0)
                print(f"round {r}: {name} {cpu[name][-1]:.2f} s CPU", flush=True)
    med = {k: statistics.median(v) for k, v in cpu.items()}
    ev = {k: f"{f['explained_variance']:.6f}" for k, f in figures.items()}
    cmd = (f"flock /work/wt/bench.lock python benchmarks/bench_eval.py --contexts {args.contexts} --batch {args.batch} "
           f"--rounds {args.rounds}")
    row = (f"| {len(tokens)} x {tokens.shape[1]} tokens, batch {args.batch} | {med['ours']:.2f} | "
           f"{med['SAELens']:.2f} | "
           f"{med['SAELens'] / med['ours']:.2f}x | EV {ev['ours']} / {ev['SAELens']} |")
    block = ("`saesteer eval`'s evaluation (evals.run.evaluate_saes after evals.activations.collect) against SAELens's "
             "`run_evals` with every metric on: the same GPT-2-shaped model (d_model 256, 4 layers, vocab 8,192), the "
             "same SAELens StandardSAE (8,192 latents at blocks.2.hook_resid_post), the same held-out tokens, BOS left "
             "out on both sides; process CPU seconds, one torch thread, both libraries imported before the first "
             "round (benchmarks/bench_eval.py).\n\n"
             "| held-out tokens | ours CPU s | SAELens run_evals CPU s | SAELens / ours | same figures |\n"
             "|---|---|---|---|---|\n" + row + f"\n\nCommand: `{cmd}` (medians of {args.rounds} interleaved rounds; "
             f"rounds: ours {', '.join(f'{v:.2f}' for v in cpu['ours'])}; SAELens "
             f"{', '.join(f'{v:.2f}' for v in cpu['SAELens'])}).")
    print(block)
    if args.write:
        from results_md import replace_block

        replace_block("## Evaluation", "eval:vs-saelens", block)


if __name__ == "__main__":
    main()
