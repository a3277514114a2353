"""What a store search past the word index (`features.store.substring`: CJK, emoji) costs, against
a full-text search of a word, on the store's own search table filled with synthetic examples.

    python benchmarks/bench_substring_search.py [--latents 16384] [--rounds 7]

Each latent gets 20 top examples of 40 words of code, prose and Japanese (about 6.6 kB). Prints
the median process CPU time per query over interleaved rounds: a CJK query found nowhere (one pass
over every latent's text, folded), the same with a hit in every latent (stops at the 21 hits a web
page asks for), queries of 8 parts (the cap before 2026-12-07) and of `MAX_PARTS` parts found
nowhere (the worst case: every part looked for in every latent's text), two parts of which one is
found nowhere (no latent holds both: the "any part" answer) and a full-text search of a word in
every latent, for scale.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import time

from features.store.substring import MAX_PARTS, substring_search

def _nowhere(n: int) -> str:
    return " ".join(chr(0x4E00 + 3000 + i) for i in range(n))  # n distinct ideographs, in no text
WORDS = ("the", "ocean", "def", "parse(self):", "日本語のテキスト", "机器学习", "return", "x", "naïve", "café", "print(i)")


def _table(n: int) -> sqlite3.Connection:
    c = sqlite3.connect(":memory:")
    c.execute("CREATE VIRTUAL TABLE feature_fts USING fts5(label, examples, tokenize = 'unicode61')")
    c.execute("CREATE TABLE features (latent INTEGER PRIMARY KEY, freq REAL)")
    c.execute("CREATE TABLE labels (id INTEGER PRIMARY KEY, latent INTEGER, label TEXT)")
    rng = random.Random(0)
    rows = [(i, f"label {i}", "\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(20)))
            for i in range(n)]
    c.executemany("INSERT INTO feature_fts(rowid, label, examples) VALUES (?, ?, ?)", rows)
    c.executemany("INSERT INTO features VALUES (?, 0.01)", [(i,) for i in range(n)])
    print(f"{n} latents, {sum(len(r[2].encode()) for r in rows) / 1e6:.0f} MB of example text")
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    c = _table(args.latents)
    cases = {
        "substring, found nowhere": lambda: substring_search(c, "テキストは無い", 21),
        "substring, in every latent": lambda: substring_search(c, "テキスト", 21),
        "substring, 8 parts found nowhere": lambda: substring_search(c, _nowhere(8), 21),
        f"substring, {MAX_PARTS} parts found nowhere": lambda: substring_search(c, _nowhere(MAX_PARTS), 21),
        "substring, 2 parts: everywhere + nowhere": lambda: substring_search(c, "テキスト " + _nowhere(1), 21),
        "substring, 2 parts: ASCII + nowhere": lambda: substring_search(c, "the " + _nowhere(1), 21),
        "full text, a word in every latent": lambda: c.execute(
            "SELECT rowid FROM feature_fts WHERE feature_fts MATCH ? ORDER BY bm25(feature_fts, 5.0, 1.0) LIMIT 21",
            ('"ocean"',)).fetchall(),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, run in cases.items():
            t = time.process_time()
            run()
            times[name].append(time.process_time() - t)
    base = statistics.median(times["full text, a word in every latent"])
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:36s} {m * 1000:8.1f} ms CPU  ({m / base:.2f}x the word search)")


if __name__ == "__main__":
    main()
