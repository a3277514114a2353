"""Steered / unsteered throughput of the batched engine alone (no server), in process CPU time.

    python benchmarks/bench_engine.py [--rows 32] [--tokens 6000] [--rounds 5] [--arch topk]
        [--sae-dtype float32] [--together]

What `bench_api.py` measures at N clients, without HTTP, the event loop or the other processes:
`--rows` rows decode together, each asking for 64 tokens (BOS prompt, temperature 1, a seed per
row); a finished row is replaced at once by a new one (continuous batching, as back-to-back
clients). The rows' first requests are staggered (row i asks for (i + 1) / rows of 64 tokens), so
at 32 rows one row leaves and another joins about every other step, as with the server's clients
(--together: all rows start at once, and leave and join in waves). Steered: row i clamps latent
(37 i mod d_sae) to 8 at all positions (bench_api's edit); unsteered: no steering. Toy model, a random
SAE (`--arch`) of the toy SAE's shape at blocks.2.hook_resid_post, in --sae-dtype (the model stays
float32; the SAE reads its input in its own dtype). Each round runs both (--tokens completion
tokens each; unsteered first in even rounds, steered first in odd ones, so neither always runs on a
warmer or cooler machine) and prints tokens per process CPU second and their ratio; the medians
over rounds come last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

HOOK = "blocks.2.hook_resid_post"


def throughput(model, sae, *, steered: bool, rows: int, tokens: int, together: bool = False) -> float:
    """Completion tokens per process CPU second with `rows` rows kept in the batch (staggered:
    row i's first request asks for (i + 1) / rows of 64 tokens, so rows finish and are replaced
    at different steps, as back-to-back clients do; `together`: every row starts at once)."""
    from steering.engine import BatchEngine, Row
    from steering.rowedits import RowEdit, RowSteering
    from steering.sampling import SamplingParams

    engine = BatchEngine(model, {"s": sae}, max_rows=rows)
    made = 0

    def row(i: int, n_tokens: int = 64) -> Row:
        nonlocal made
        made += 1
        edits = RowSteering([RowEdit("s", (37 * i) % sae.d_sae, "clamp", 8.0, "all")]) if steered else None
        return Row([model.tokenizer.bos_token_id], SamplingParams(max_new_tokens=n_tokens, temperature=1.0, seed=made),
                   edits, tag=i)

    engine.add([row(i, 64 if together else max(1, 64 * (i + 1) // rows)) for i in range(rows)])
    got = 0
    c0 = time.process_time()
    while got < tokens:
        for ev in engine.step():
            got += ev.token is not None
            if ev.finish_reason:
                engine.add([row(ev.tag)])
    return got / (time.process_time() - c0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=6000, help="completion tokens per cell")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--arch", default="topk", choices=["topk", "batchtopk", "jumprelu", "standard"])
    ap.add_argument("--sae-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--together", action="store_true", help="start every row at once (no stagger)")
    args = ap.parse_args(argv)

    import torch

    from bench_steering import load_model, random_sae

    torch.set_num_threads(args.threads)
    model = load_model("toy")
    sae = random_sae(args.arch, model.cfg.d_model, HOOK, seed=1).to(getattr(torch, args.sae_dtype))
    with torch.no_grad():
        for steered in (True, False):  # warm-up (and the TopK candidate set learns)
            throughput(model, sae, steered=steered, rows=args.rows, tokens=2000, together=args.together)
        ratios, unsteered, steered = [], [], []
        for rnd in range(args.rounds):
            got = {}
            for st in ((False, True) if rnd % 2 == 0 else (True, False)):  # alternate the order: no bias
                got[st] = throughput(model, sae, steered=st, rows=args.rows, tokens=args.tokens, together=args.together)
            u, s = got[False], got[True]
            unsteered.append(u)
            steered.append(s)
            ratios.append(s / u)
            first = "unsteered" if rnd % 2 == 0 else "steered"
            print(f"round {rnd} ({first} first): unsteered {u:,.0f} tok/CPU-s, steered {s:,.0f} tok/CPU-s, "
                  f"ratio {s / u:.3f}", flush=True)
    print(f"{args.rows} rows{' (together)' if args.together else ''}, {args.arch} ({args.sae_dtype}): unsteered median {statistics.median(unsteered):,.0f} "
          f"tok/CPU-s, steered median {statistics.median(steered):,.0f} tok/CPU-s; steered / unsteered median "
          f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
