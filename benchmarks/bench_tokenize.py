"""`training.packing.make_tokenize`'s tokens per CPU-second with special tokens read as text and
matched, against the shared backend's `encode_batch_fast` (what make_tokenize called before it
held a backend copy of its own, f8f2ba9), and the one-off costs of that copy.

    python benchmarks/user_scale.py setup --work /tmp/scaleu
    flock /work/wt/bench.lock python benchmarks/bench_tokenize.py --work /tmp/scaleu [--docs 1200] [--rounds 5]

On user_scale.py's model (byte-level BPE of 2,048) and its first `--docs` parquet documents, 16 per
call, one tokenizer thread (RAYON_NUM_THREADS=1), interleaved rounds, medians. One-off: the
backend's deepcopy at that vocabulary and at a synthetic byte-level BPE of `--big-vocab` tokens
(Gemma's 262,144), and make_tokenize + its first batch (checked against `tokenizer(...)`) on a
freshly loaded tokenizer, per reading.
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers loads: one thread

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _big_backend(n: int):
    """A byte-level BPE tokenizer of `n` tokens (256 bytes, then merges of earlier tokens)."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(sorted(alphabet))}
    tokens, merges, rng = list(vocab), [], random.Random(0)
    while len(vocab) < n:
        a, b = rng.choice(tokens), rng.choice(tokens)
        if len(a) + len(b) > 12 or a + b in vocab:
            continue
        vocab[a + b] = len(vocab)
        tokens.append(a + b)
        merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tok


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="benchmarks/user_scale.py setup's folder")
    ap.add_argument("--docs", type=int, default=1200)
    ap.add_argument("--per-call", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--big-vocab", type=int, default=262_144)
    args = ap.parse_args()
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from training.packing import make_tokenize

    model = args.work / "gpt2-model"
    docs: list[str] = []
    for part in sorted((args.work / "dataset" / "data").glob("*.parquet")):  # in order, as the cache reads them
        docs += pq.read_table(part, columns=["content"]).column("content").to_pylist()[:args.docs - len(docs)]
    calls = [docs[i:i + args.per_call] for i in range(0, len(docs), args.per_call)]
    tok = AutoTokenizer.from_pretrained(model)
    shared = tok.backend_tokenizer
    ways = {
        "shared backend (before, f8f2ba9)": lambda b: [e.ids for e in shared.encode_batch_fast(b, add_special_tokens=False)],
        "make_tokenize, read as text": make_tokenize(tok, True),
        "make_tokenize, matched": make_tokenize(tok, False),
    }
    for fn in ways.values():  # each one's first call: its check against tokenizer(...)
        fn(calls[0])
    n_tokens = sum(len(x) for b in calls for x in ways["make_tokenize, read as text"](b))
    rates: dict[str, list[float]] = {k: [] for k in ways}
    once: dict[str, list[float]] = {"text": [], "match": []}
    for r in range(args.rounds):
        for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            rates[name].append(n_tokens / _cpu(lambda: [ways[name](b) for b in calls]))
        for reading, literal in (("text", True), ("match", False)):
            fresh = AutoTokenizer.from_pretrained(model)
            once[reading].append(_cpu(lambda: make_tokenize(fresh, literal)(calls[0])))
    base = statistics.median(rates["shared backend (before, f8f2ba9)"])
    print(f"{len(docs):,} documents ({n_tokens:,} tokens), {args.per_call} per call, RAYON_NUM_THREADS=1, "
          f"medians of {args.rounds} interleaved rounds")
    for name, rs in rates.items():
        m = statistics.median(rs)
        print(f"  {name:34s} {m:12,.0f} tokens per CPU-s  ({m / base:.2f}x)")
    for reading, ts in once.items():
        print(f"  make + first batch, {reading:5s}          {statistics.median(ts) * 1000:8.1f} ms CPU")
    big = _big_backend(args.big_vocab)
    for label, backend in ((f"{shared.get_vocab_size():,}", shared), (f"{big.get_vocab_size():,}", big)):
        secs = statistics.median(_cpu(lambda: copy.deepcopy(backend)) for _ in range(3))
        print(f"  backend deepcopy at a vocabulary of {label:>8s} {secs * 1000:8.1f} ms CPU")


if __name__ == "__main__":
    main()
