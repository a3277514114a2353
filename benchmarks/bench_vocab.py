"""A real vocabulary through every stage a user runs: a tiny-width Gemma-3-shaped model (d_model 64,
2 layers) with Gemma 3's 262,144-entry vocabulary (a byte-level BPE of tests/helpers/real_models.py
widened by `widen_vocab`), an SAE of 16,384 latents, then cache / train / eval (CE/KL spliced:
logits contexts x positions x vocab) / features build (logit effects: latents x vocab) / steer,
each under /usr/bin/time -v (peak RSS, CPU).

    python benchmarks/bench_vocab.py setup --work /tmp/bigvocab [--vocab 262144]
    flock /work/wt/bench.lock python benchmarks/bench_vocab.py run --work /tmp/bigvocab
    # a baseline: the stages run from another checkout (git archive <commit> | tar -x -C /tmp/base)
    flock /work/wt/bench.lock python benchmarks/bench_vocab.py run --work /tmp/bigvocab --code /tmp/base --tag .base \
        --only eval build
    # the CE/KL splice alone, its contexts 2 a pass (the logits budget) or 16, process CPU, interleaved
    flock /work/wt/bench.lock python benchmarks/bench_vocab.py passes --work /tmp/bigvocab --rounds 3

Figures: benchmarks/RESULTS.md, "A real vocabulary through every stage".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
HOOK = "blocks.1.hook_resid_post"
EVAL_FIGURES = ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero", "ce_loss_recovered", "kl_div", "explained_variance")


def setup(work: Path, vocab: int, arch: str) -> None:
    from helpers.real_models import build_family_tokenizer, save_arch_model, widen_vocab, write_corpus

    corpus = write_corpus(work / "corpus")
    tok = widen_vocab(build_family_tokenizer("gemma", corpus.train_docs, vocab_size=1024), vocab)
    save_arch_model(work / "model", arch, tok)
    print(f"{work / 'model'}: {arch}, vocabulary {len(tok):,}")


def stages(work: Path, tokens: int, d_sae: int) -> dict[str, list]:
    data = ["--dataset", work / "corpus/jsonl"]
    return {
        "cache": ["cache", "--model", work / "model", *data, "--split", "train", "--context-length", 128,
                  "--hooks", HOOK, "--max-tokens", tokens, "--out", work / "cache"],
        "train": ["train", "--cache", work / "cache", "--out", work / "run", "--architecture", "topk", "--d-sae", d_sae,
                  "--k", 16, "--total-tokens", tokens, "--sae-name", "sae", "--eval-ce-contexts", 16,
                  "--checkpoint-every-tokens", 0],
        "eval": ["eval", "--sae", work / "run/saes/sae", "--cache", work / "cache", "--ce-contexts", 32,
                 "--absorption", "false", "--probing", "false", "--out", work / "eval"],
        "build": ["features", "build", "--sae", work / "run/saes/sae", "--cache", work / "cache",
                  "--out", work / "store.db"],
        "steer": ["steer", "--sae", work / "run/saes/sae", "--store", work / "store.db", "--latent", "0:add=4",
                  "--prompt", "def parse(self, line):\n    caf\u00e9 \u6771\u4eac " * 3, "--max-new-tokens", 16,
                  "--json"],
    }


def served(work: Path) -> None:
    """`saesteer serve` over the store (web pages and the OpenAI API in one app): a feature page, the
    fire page, a completion with top-20 log-probs; peak RSS and wall time of each request."""
    import resource
    import time

    from helpers.api_server import api_served
    from helpers.real_cli import saesteer
    from helpers.web_app import record_server

    class _Patch:  # record_server's monkeypatch, outside pytest
        def setattr(self, target, name, value):
            setattr(target, name, value)

    calls = record_server(_Patch())
    saesteer("serve", "--store", work / "store.db", "--port", 0).ok()
    (app, kw), = calls
    prompt = "def parse(self, line):\n    caf\u00e9 \u6771\u4eac"
    with api_served(app, kw["port"]) as (srv, client):
        import httpx

        token = getattr(app.state, "token", None)
        h = {"Authorization": f"Bearer {token}"} if token else {}
        sid = client.models.list().data[0].id
        for name, call in [
            ("feature page", lambda: httpx.get(f"{srv.url}/s/{sid}/f/5", headers=h, timeout=600)),
            ("fire page", lambda: httpx.get(f"{srv.url}/s/{sid}/fire", params={"text": prompt}, headers=h, timeout=600)),
            ("completion, top 20 logprobs", lambda: client.completions.create(
                model=sid, prompt=prompt, max_tokens=16, logprobs=20, temperature=1.0, seed=0)),
        ]:
            t = time.perf_counter()
            r = call()
            status = getattr(r, "status_code", 200)
            print(f"{name} | {status} | {time.perf_counter() - t:.2f} s | peak RSS "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss:,} kB", flush=True)
            if name == "completion, top 20 logprobs":
                print("   ", r.choices[0].logprobs.top_logprobs[0])
            elif name == "feature page":
                (work / "feature.html").write_text(r.text)


def passes(work: Path, rounds: int) -> None:
    """Process CPU (one thread) of the CE/KL splice alone over 16 x 128 contexts of the model, the
    contexts going 2 a pass (the logits budget at this vocabulary) or all 16 at once, interleaved."""
    import time

    import torch

    import training.evaluate as ev
    from saes import create_sae
    from saesteer.models import load_model

    torch.set_num_threads(1)
    model = load_model(str(work / "model"))
    sae = create_sae("topk", d_in=model.cfg.d_model, d_sae=1024, k=16, generator=torch.Generator().manual_seed(0))
    splice = [ev.Splice(ev.sae_reconstructor(sae), HOOK)]
    tokens = torch.randint(0, model.cfg.d_vocab, (16, 128), generator=torch.Generator().manual_seed(0))
    budget = ev._LOGITS_PASS_ELEMS
    for _ in range(rounds):
        for name, elems in (("budget", budget), ("whole batch", 1 << 62)):
            ev._LOGITS_PASS_ELEMS = elems
            t = time.process_time()
            got = ev.splice_metrics_many(model, splice, tokens, batch_size=16)[0]
            print(f"{name} | {ev._contexts_per_pass(model, 128, 16)} contexts a pass | "
                  f"{time.process_time() - t:.2f} CPU s | KL {got.kl_div:.9g}", flush=True)


def run(work: Path, tokens: int, d_sae: int, only: list[str], code: Path, tag: str) -> None:
    cli = [sys.executable, "-m", "saesteer"]
    for name, argv in stages(work, tokens, d_sae).items():
        if only and name not in only:
            continue
        log_path = work / f"{name}{tag}.log"
        with open(log_path, "w") as log:
            subprocess.run(["/usr/bin/time", "-v", *cli, *map(str, argv), "--no-progress"], stdout=log,
                           stderr=subprocess.STDOUT, check=True, cwd=code, env={**os.environ, "PYTHONPATH": str(code)})
        text = log_path.read_text()
        keep = [ln.strip() for ln in text.splitlines()
                if any(k in ln for k in ("Maximum resident", "Elapsed", "User time", "System time"))]
        print(name, "|", " | ".join(keep), flush=True)
        if name == "eval":  # the figures, to set beside another checkout's
            import json

            metrics = json.loads((work / "eval/eval.json").read_text())["saes"]["sae"]["metrics"]
            print("    ", "  ".join(f"{k} {metrics[k]:.9g}" for k in EVAL_FIGURES), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("setup", "run", "served", "passes"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--vocab", type=int, default=262_144)
    ap.add_argument("--arch", default="gemma3")
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--d-sae", type=int, default=16_384)
    ap.add_argument("--only", nargs="*", default=[])
    ap.add_argument("--rounds", type=int, default=2, help="passes: interleaved rounds")
    ap.add_argument("--code", type=Path, default=ROOT, help="the saesteer checkout the stages run (a baseline's copy)")
    ap.add_argument("--tag", default="", help="suffix of the stages' logs")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.what == "setup":
        setup(a.work, a.vocab, a.arch)
    elif a.what == "served":
        served(a.work)
    elif a.what == "passes":
        passes(a.work, a.rounds)
    else:
        run(a.work, a.tokens, a.d_sae, a.only, a.code, a.tag)


if __name__ == "__main__":
    main()
