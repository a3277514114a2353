"""Steered / unsteered throughput of the batched engine alone (no server), in process CPU time.

    python benchmarks/bench_engine.py [--rows 32] [--tokens 6000] [--rounds 5] [--arch topk]
        [--sae-dtype float32] [--together]
    python benchmarks/bench_engine.py --mixed [--rows 32] [--tokens 6000] [--rounds 5]
    python benchmarks/bench_engine.py --decode-split [--rows 32] [--rounds 5]

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

--mixed: prompts of very different lengths (BOS + toy-world text, 2-96 tokens, a length drawn per
request; 32 new tokens each, inside the toy model's 128-token context), every row steered, all
rows starting together and each finished row replaced at once. Each round runs the engine as it is
(rows joining in one step prefilled in groups of close lengths, `steering.lengthgroups`) and with
those rows prefilled in one left-padded batch (the engine before that change), alternating which
runs first, and prints each one's padding share of the prefill positions and of the cached
keys/values read at decode, tokens per process CPU second, and grouped / one-batch ratio.

--decode-split: what cutting the padded KV reads of decoding would cost here. The model's decode
step alone (no SAE), process CPU time per step: --rows rows in one batch whose cache is 80 columns
(rows of 30 and 80 tokens: 31% of the keys read are padding) against the same rows as two batches
of half the rows, 80 and 30 columns (no padding), one forward pass each; medians of --rounds
interleaved rounds of 40 steps.
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
    return tokens_per_cpu_second(engine, row, tokens)


def tokens_per_cpu_second(engine, row, tokens: int) -> float:
    """Step `engine` until `tokens` completion tokens came out, each finished row replaced at once by
    `row(its tag)`; completion tokens per process CPU second."""
    got = 0
    c0 = time.process_time()
    while got < tokens:
        for ev in engine.step():
            got += ev.token is not None
            if ev.finish_reason:
                engine.add([row(ev.tag)])
    return got / (time.process_time() - c0)


MIXED_MAX_PROMPT, MIXED_NEW = 96, 32


def mixed_prompts(model, n: int = 64) -> list[list[int]]:
    """n windows of MIXED_MAX_PROMPT tokens of toy-world text (documents run together; cut per request)."""
    from toyworld.grammar import generate_document

    ids: list[int] = []
    i = 0
    while len(ids) < n * MIXED_MAX_PROMPT:
        ids += model.tokenizer(generate_document(f"bench-engine-mixed-{i}").text)["input_ids"]
        i += 1
    return [ids[j * MIXED_MAX_PROMPT:(j + 1) * MIXED_MAX_PROMPT] for j in range(n)]


def mixed_throughput(model, sae, prompts, *, grouped: bool, rows: int, tokens: int) -> dict[str, float]:
    """Steered rows with prompts of 1-MIXED_MAX_PROMPT tokens (request j: a seeded length and
    document), all starting together, each replaced when it ends; `grouped` False: the rows joining
    in one step are prefilled as one left-padded batch. Padding shares and tokens per CPU second."""
    import random

    from steering.engine import BatchEngine, Row
    from steering.rowedits import RowEdit, RowSteering
    from steering.sampling import SamplingParams

    engine = BatchEngine(model, {"s": sae}, max_rows=rows)
    if not grouped:  # the engine's own path for a model whose caches do not merge
        engine.runner.prefills_merge = lambda: False
    made = 0

    def row(i: int) -> Row:
        nonlocal made
        made += 1
        rng = random.Random(made)
        ids = [model.tokenizer.bos_token_id] + rng.choice(prompts)[:rng.randint(1, MIXED_MAX_PROMPT - 1)]
        edits = RowSteering([RowEdit("s", (37 * i) % sae.d_sae, "clamp", 8.0, "all")])
        return Row(ids, SamplingParams(max_new_tokens=MIXED_NEW, temperature=1.0, seed=made), edits, tag=i)

    engine.add([row(i) for i in range(rows)])
    tok_s = tokens_per_cpu_second(engine, row, tokens)
    return {"prefill_pad": engine.prefill_padding / engine.prefill_positions,
            "kv_pad": engine.kv_padding / engine.kv_positions, "tok_s": tok_s}


def mixed(model, sae, args) -> int:
    import torch

    prompts = mixed_prompts(model)
    cells = {True: [], False: []}
    ratios = []
    with torch.no_grad():
        for grouped in (True, False):  # warm-up
            mixed_throughput(model, sae, prompts, grouped=grouped, rows=args.rows, tokens=1000)
        for rnd in range(args.rounds):
            got = {}
            for grouped in ((False, True) if rnd % 2 == 0 else (True, False)):
                got[grouped] = mixed_throughput(model, sae, prompts, grouped=grouped, rows=args.rows, tokens=args.tokens)
                cells[grouped].append(got[grouped])
            ratios.append(got[True]["tok_s"] / got[False]["tok_s"])
            print(f"round {rnd} ({'one batch' if rnd % 2 == 0 else 'grouped'} first): " + "; ".join(
                f"{name}: prefill padding {c['prefill_pad']:.1%}, KV padding {c['kv_pad']:.1%}, {c['tok_s']:,.0f} tok/CPU-s"
                for name, c in (("one batch", got[False]), ("grouped", got[True]))) +
                f"; grouped / one batch {ratios[-1]:.3f}", flush=True)

    def med(grouped, key):
        return statistics.median(c[key] for c in cells[grouped])

    print(f"{args.rows} rows, prompts of 2-{MIXED_MAX_PROMPT} tokens, {MIXED_NEW} new tokens, steered ({args.arch}); "
          f"medians of {args.rounds} rounds: prefill padding {med(False, 'prefill_pad'):.1%} one batch -> "
          f"{med(True, 'prefill_pad'):.1%} grouped; KV padding {med(False, 'kv_pad'):.1%} -> {med(True, 'kv_pad'):.1%}; "
          f"{med(False, 'tok_s'):,.0f} -> {med(True, 'tok_s'):,.0f} tok/CPU-s; grouped / one batch median "
          f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")
    return 0


def decode_split(model, args) -> int:
    import torch

    from steering.runner import make_runner

    runner = make_runner(model)

    def step_ms(shapes, steps: int = 40) -> float:
        """CPU ms per decode step of batches [(rows, cached columns)], one forward pass each."""
        batches = []
        for B, T in shapes:
            tokens = torch.randint(5, model.cfg.d_vocab, (B, T))
            batches.append((runner.prefill(tokens, torch.ones(B, T, dtype=torch.long))[1], tokens[:, -1]))
        c0 = time.process_time()
        for _ in range(steps):
            for cache, last in batches:
                runner.decode(last, cache)
        return (time.process_time() - c0) / steps * 1e3

    half = args.rows // 2
    one, two = [(args.rows, 80)], [(half, 80), (args.rows - half, 30)]
    times = {"one": [], "two": []}
    with torch.no_grad():
        step_ms(one, 5), step_ms(two, 5)  # warm-up
        for rnd in range(args.rounds):
            for name in (("one", "two") if rnd % 2 == 0 else ("two", "one")):
                times[name].append(step_ms(one if name == "one" else two))
            print(f"round {rnd}: one padded batch {times['one'][-1]:.2f} ms/step, two unpadded batches "
                  f"{times['two'][-1]:.2f} ms/step", flush=True)
    a, b = statistics.median(times["one"]), statistics.median(times["two"])
    print(f"decode step, {args.rows} rows of 30 and 80 tokens: one batch (31% of KV reads padding) {a:.2f} ms, "
          f"two batches (none) {b:.2f} ms; two / one {b / a:.2f}x CPU (medians of {args.rounds} rounds)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=6000, help="completion tokens per cell")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--arch", default="topk", choices=["topk", "batchtopk", "jumprelu", "standard"])
    ap.add_argument("--sae-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--together", action="store_true", help="start every row at once (no stagger)")
    other = ap.add_mutually_exclusive_group()  # instead of steered vs unsteered
    other.add_argument("--mixed", action="store_true",
                       help="prompts of 2-96 tokens: grouped prefill vs one padded prefill (see the docstring)")
    other.add_argument("--decode-split", action="store_true",
                       help="the decode step: one padded batch vs two unpadded ones (see the docstring)")
    args = ap.parse_args(argv)

    import torch

    from bench_steering import load_model, random_sae

    torch.set_num_threads(args.threads)
    model = load_model("toy")
    if args.decode_split:
        return decode_split(model, args)
    sae = random_sae(args.arch, model.cfg.d_model, HOOK, seed=1).to(getattr(torch, args.sae_dtype))
    if args.mixed:
        return mixed(model, sae, args)
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
